"""Verdict time with the inspection history recording vs without, in one process, interleaved.

One embedded store holds the Hazelnut Toy training images (calibrated quantile:0.1);
each round inspects one image (held-out good and defect images in turn, so FAIL
verdicts keep their image file) with the history hook on, then the same image with it
off, so machine noise hits both alike (the hook records the row and keeps the embedding
for the mean-embedding shift). Also prints the cost of each part alone, and the drift
computation cost per call.

    python benchmarks/history.py               # 300 verdicts each
    python benchmarks/history.py --n 60        # a quick run

Target: p50(on) / p50(off) <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexing.history import History  # noqa: E402
from indexing.images import ImageInput  # noqa: E402
from indexing.service import NominalService  # noqa: E402
from indexing.store import EdgeStore  # noqa: E402

HAZELNUT = ROOT / "tests" / "fixtures" / "hazelnut_toy"
TARGET = 1.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="verdicts with history on, and as many off")
    args = parser.parse_args()
    train = [ImageInput.from_path(p) for p in sorted((HAZELNUT / "train" / "good").glob("*.jpg"))]
    probes = [ImageInput.from_path(p) for p in sorted((HAZELNUT / "test").rglob("*.jpg"))]
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(Path(tmp) / "store")
        service = NominalService(store)
        service.index("hz", train)
        service.calibrate("hz", policy="quantile:0.1")
        history = History(Path(tmp) / "history")
        for image in probes[:3]:
            service.inspect("hz", [image])  # warm up: model, reference scores
        on, off = [], []
        for i in range(args.n):
            image = probes[i % len(probes)]
            for hooked, times in ((True, on), (False, off)) if i % 2 == 0 else ((False, off), (True, on)):
                service.on_verdicts[:] = [history.hook] if hooked else []
                started = time.perf_counter()
                service.inspect("hz", [image])
                times.append((time.perf_counter() - started) * 1000.0)
        recorded = len(history.recent("hz"))
        alone = []
        for probe in (probes[0], probes[-1]):  # a defect (FAIL: its image is kept) and a good part
            verdict = service.inspect("hz", [probe])
            started = time.perf_counter()
            for _ in range(200):
                history.record("bench", 1, [probe], verdict)
            alone.append((verdict[0].verdict, history._keeps_image(verdict[0]),
                          (time.perf_counter() - started) * 1000.0 / 200))
        started = time.perf_counter()
        for _ in range(2000):
            history.embeddings.add("bench", 1, verdict, time.time())
        embedding_us = (time.perf_counter() - started) * 1e6 / 2000
        drift_ms = None
        try:
            from indexing.drift import compute_drift  # noqa: PLC0415 - present once drift is built

            started = time.perf_counter()
            for _ in range(20):
                compute_drift(service, history, "hz")
            drift_ms = (time.perf_counter() - started) * 1000.0 / 20
        except ImportError:
            pass
        store.close()
    p50_on, p50_off = statistics.median(on), statistics.median(off)
    print(f"verdicts: {args.n} with history, {args.n} without; {recorded} recorded")
    print(f"p50 with history    {p50_on:7.2f} ms   p90 {sorted(on)[int(0.9 * len(on))]:7.2f} ms")
    print(f"p50 without history {p50_off:7.2f} ms   p90 {sorted(off)[int(0.9 * len(off))]:7.2f} ms")
    ratio = p50_on / p50_off
    print(f"ratio {ratio:.3f} (target <= {TARGET}): {'met' if ratio <= TARGET else 'NOT met'}")
    for outcome, kept, ms in alone:
        print(f"recording alone, {outcome} (image kept: {kept}): {ms:.3f} ms per verdict")
    print(f"keeping the verdict's embedding for drift (mean-embedding shift): {embedding_us:.1f} us per verdict")
    if drift_ms is not None:
        print(f"drift computation over the last {recorded} verdicts: {drift_ms:.2f} ms per call")


if __name__ == "__main__":
    main()
