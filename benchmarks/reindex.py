"""Re-index throughput against the bare forward pass of the same backbone, in the same run.

N real ELPV solar-cell photos (300x300 grey, from the `elpv-dataset` package) are
written as PNG files into a temporary folder, then:

    bare      `load_backbone(...).embed(decoded, batch_size=32)` on images decoded
              beforehand, on a thread like the job's: the model alone, the ceiling
    embedded  `nominal reindex` in-process (InProcessRunner, embedded store): read,
              decode, embed, upsert, check, switch
    celery    the same job with REDIS_URL: one `nominal worker` subprocess (one child
              per core, one torch thread each) embeds; this process upserts and switches

Each re-index is timed from submit to the job's end (source listing, version
creation, checks and the alias switch included); worker start-up (model loading)
is not. The modes run in interleaved rounds and each keeps its best run: the
machine is shared, and load from elsewhere only ever slows a run down. The
target is re-index images/s >= 0.85 x bare for a global setting (`--scoring
global`). A patch or fused setting (fused is the default) also builds its patch
bank's coreset and, fused, merges positional statistics: it is measured against
the same bare forward, and is well below it (README, "Re-index throughput").

    python benchmarks/reindex.py                 # 1,024 cells, efficientnet_lite0
    python benchmarks/reindex.py --n 256 --skip-celery
    python benchmarks/reindex.py --scoring global --skip-celery
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Config  # noqa: E402
from app.runtime import build_runner  # noqa: E402
from indexing.backbones import DEFAULT_BACKBONE, load_backbone  # noqa: E402
from indexing.images import ImageInput, decode  # noqa: E402
from indexing.jobs import Job  # noqa: E402
from indexing.service import BackbonePool, NominalService  # noqa: E402
from indexing.store import EdgeStore  # noqa: E402

TARGET_RATIO = 0.85


def write_cells(folder: Path, n: int) -> list[Path]:
    from elpv_dataset.utils import load_dataset

    images, _, _ = load_dataset()
    if n > len(images):
        raise SystemExit(f"ELPV has {len(images)} cells; ask for at most that many")
    paths = []
    for i in range(n):
        path = folder / f"cell-{i:04d}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(path)
    return paths


def bare_forward(pool: BackbonePool, backbone: str, paths: list[Path]) -> float:
    """Images/s of the model alone, run on a thread of its own as the re-index job is (like for like)."""
    model = pool.get(backbone)
    decoded = [decode(ImageInput.from_path(p)) for p in paths]

    def forward() -> float:
        model.embed(decoded[:32], batch_size=32)  # warm-up
        started = time.perf_counter()
        model.embed(decoded, batch_size=32)
        return len(decoded) / (time.perf_counter() - started)

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(forward).result()


def timed_reindex(config: Config, service: NominalService, source: Path, n: int) -> tuple[float, Job]:
    runner = build_runner(config, service)
    try:
        started = time.perf_counter()
        job = runner.submit_reindex("bench", str(source))
        while not (current := runner.board.get(job.id)).finished:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        runner.close()
    if current.state != "succeeded" or current.result["indexed"] != n:
        raise SystemExit(f"re-index did not succeed: {current.state} {current.message} {current.result}")
    return n / elapsed, current


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "worker", "--concurrency", str(os.cpu_count() or 1)],
        cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if text.count("nominal worker process") >= (os.cpu_count() or 1) and " ready." in text:
            return worker
        if worker.poll() is not None:
            raise SystemExit(f"worker exited:\n{text[-2000:]}")
        time.sleep(0.2)
    raise SystemExit("worker not ready in 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1024, help="ELPV cells to re-index (at least 1,000 for the record)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/5"))
    parser.add_argument("--skip-celery", action="store_true")
    parser.add_argument("--scoring", choices=["global", "patch", "fused"], default=None,
                        help="the setting's scoring (default: what a new setting gets, fused on a CNN); patch and "
                             "fused re-index in this process, since their bank is written where it is made")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each mode's best is kept")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nominal-reindex-bench-"))
    modes = ["bare", "embedded"] + ([] if args.skip_celery else ["celery"])
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    prefix = f"nominal-bench-{uuid.uuid4().hex[:8]}:"
    worker = None
    try:
        source = work / "cells"
        source.mkdir()
        paths = write_cells(source, args.n)
        pool = BackbonePool()
        bare_forward(pool, args.backbone, paths[:256])  # discarded: the first run of a process is slow (allocator, oneDNN caches)
        configs = {"embedded": Config(_env_file=None, NOMINAL_DATA=work / "data")}
        if not args.skip_celery:
            env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": args.redis_url,
                   "NOMINAL_REDIS_PREFIX": prefix, "NOMINAL_DATA": str(work / "data")}
            env.pop("QDRANT_URL", None)
            worker = start_worker(env, work / "worker.log")  # idle between its turns: it waits on Redis
            configs["celery"] = Config(_env_file=None, NOMINAL_DATA=work / "data", REDIS_URL=args.redis_url,
                                       NOMINAL_REDIS_PREFIX=prefix)
        store = EdgeStore(work / "store")
        try:
            service = NominalService(store, backbones=pool, default_backbone=args.backbone)
            service.put_setting("bench", backbone=args.backbone, scoring=args.scoring)
            for _ in range(args.rounds):  # interleaved, so a burst of load elsewhere hits every mode alike
                rates["bare"].append(bare_forward(pool, args.backbone, paths))
                for mode in modes[1:]:
                    rates[mode].append(timed_reindex(configs[mode], service, source, args.n)[0])
        finally:
            store.close()
    finally:
        if worker is not None:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=60)
            _delete_keys(args.redis_url, prefix)
        shutil.rmtree(work, ignore_errors=True)

    figures: dict[str, object] = {"n": args.n, "backbone": args.backbone, "cpus": os.cpu_count() or 1, "runs": rates}
    bare = max(rates["bare"])
    scoring = args.scoring or "the default scoring"
    print(f"re-index of {args.n} ELPV cells with {args.backbone}, {scoring}, on {figures['cpus']} CPU cores, "
          f"best of {args.rounds}")
    for mode in modes:
        best = max(rates[mode])
        ratio = best / bare
        figures[mode] = best
        runs = ", ".join(f"{r:.1f}" for r in rates[mode])
        if mode == "bare":
            print(f"  bare batched forward  {best:6.1f} images/s  (runs: {runs})")
            continue
        figures[f"{mode}_ratio"] = ratio
        verdict = "ok" if ratio >= TARGET_RATIO else f"BELOW {TARGET_RATIO}"
        print(f"  {mode:<9} re-index    {best:6.1f} images/s  ratio {ratio:.2f} {verdict}  (runs: {runs})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def _delete_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


if __name__ == "__main__":
    main()
