"""Vector-store figures at production size: upsert rate, exact query latency, reopen time, peak memory.

Each implementation runs in its own subprocess, so its peak resident memory (VmHWM)
is its own and one cannot warm the other's caches:

    edge   EdgeStore, the embedded default (qdrant-edge, Qdrant's Rust engine)
    local  ServerStore on qdrant-client's local mode (QdrantClient(path=...)), the
           pure-Python stand-in the tests use; shown for comparison, never deployed

Vectors are random, normalised, float32, seeded, generated batch by batch so the
harness never holds the whole set; they are upserted 1,000 at a time as the service
does. Queries are exact top-10, one vector per call, timed after one warm-up query.
Reopen is close, new instance, first query answered.

    python benchmarks/store.py                  # N=100,000 x 2,048-d, both (local mode takes minutes, ~12 GB)
    python benchmarks/store.py --impl edge      # only the embedded store
    python benchmarks/store.py --quick          # N=5,000 smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexing.store import EdgeStore, Point, ServerStore, VectorStore  # noqa: E402

IMPLS = ("edge", "local")
BATCH = 1_000
K = 10
COLLECTION = "bench"


def open_impl(impl: str, path: Path) -> VectorStore:
    if impl == "edge":
        return EdgeStore(path)
    from qdrant_client import QdrantClient

    return ServerStore(QdrantClient(path=str(path)))


def batches(n: int, dim: int, seed: int) -> Iterator[list[Point]]:
    for start in range(0, n, BATCH):
        rows = np.random.default_rng([seed, start]).standard_normal((min(BATCH, n - start), dim), dtype=np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        yield [
            Point(str(uuid.UUID(int=start + i + 1)), row, {"image": f"img-{(start + i) // 64}", "patch": (start + i) % 64})
            for i, row in enumerate(rows)
        ]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_child(impl: str, n: int, dim: int, queries: int) -> dict[str, float]:
    """Measure one implementation in this process; the parent reads the JSON it prints."""
    begun = time.perf_counter()
    warnings.filterwarnings("ignore", message="Local mode")  # it warns about size and search params
    root = Path(tempfile.mkdtemp(prefix=f"nominal-bench-{impl}-"))
    try:
        store = open_impl(impl, root)
        store.create_collection(COLLECTION, dim)
        upsert_s = sum(timed(lambda b=b: store.upsert(COLLECTION, b)) for b in batches(n, dim, seed=0))
        assert store.count(COLLECTION) == n

        probes = np.random.default_rng(1).standard_normal((queries + 1, dim), dtype=np.float32)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        store.search(COLLECTION, probes[:1], K)  # warm-up
        latencies = [timed(lambda q=q: store.search(COLLECTION, q[None, :], K)) for q in probes[1:]]

        store.close()
        start = time.perf_counter()
        store = open_impl(impl, root)
        [hits] = store.search(COLLECTION, probes[1:2], K)
        reopen_s = time.perf_counter() - start
        assert len(hits) == K
        store.close()
        disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "upsert_per_s": n / upsert_s,
        "query_p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "query_p99_ms": float(np.percentile(latencies, 99)) * 1000,
        "reopen_s": reopen_s,
        "peak_rss_gb": peak_rss_bytes() / 1e9,
        "disk_gb": disk / 1e9,
        "total_s": time.perf_counter() - begun,
    }


# (key, label, format, target label, passes)
FIGURES: list[tuple[str, str, str, str, Callable[[float], bool] | None]] = [
    ("upsert_per_s", "upsert (vectors/s)", "{:,.0f}", ">= 3,000", lambda v: v >= 3_000),
    ("query_p50_ms", "exact top-10 query p50 (ms)", "{:,.1f}", "<= 100", lambda v: v <= 100),
    ("query_p99_ms", "exact top-10 query p99 (ms)", "{:,.1f}", "-", None),
    ("reopen_s", "reopen to first answer (s)", "{:,.1f}", "<= 10", lambda v: v <= 10),
    ("peak_rss_gb", "peak resident memory (GB)", "{:,.2f}", "<= 3", lambda v: v <= 3),
    ("disk_gb", "on disk (GB)", "{:,.2f}", "-", None),
    ("total_s", "benchmark wall time (s)", "{:,.0f}", "-", None),
]


def table(results: dict[str, dict[str, float]], n: int, dim: int, queries: int) -> str:
    impls = list(results)
    lines = [
        f"Vector store, N={n:,} x {dim:,}-d float32, cosine, upsert batches of {BATCH:,}, {queries} queries",
        f"{'figure':<30}" + "".join(f"{impl:>18}" for impl in impls) + f"{'target':>12}",
    ]
    for key, label, fmt, target, passes in FIGURES:
        cells = []
        for impl in impls:
            value = results[impl][key]
            verdict = "" if passes is None else (" PASS" if passes(value) else " MISS")
            cells.append(f"{fmt.format(value) + verdict:>18}")
        lines.append(f"{label:<30}" + "".join(cells) + f"{target:>12}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="vectors stored (default 100,000)")
    parser.add_argument("--dim", type=int, default=2_048, help="vector dimension (default 2,048)")
    parser.add_argument("--queries", type=int, default=50, help="timed queries (default 50)")
    parser.add_argument("--impl", choices=[*IMPLS, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smoke run at N=5,000")
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = 5_000 if args.quick else args.n

    if args.child:
        print(json.dumps(run_child(args.child, n, args.dim, args.queries)))
        return

    results = {}
    for impl in IMPLS if args.impl == "all" else (args.impl,):
        print(f"running {impl} at N={n:,} ...", file=sys.stderr, flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--child", impl, "--n", str(n), "--dim", str(args.dim), "--queries", str(args.queries)],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        results[impl] = json.loads(child.stdout.strip().splitlines()[-1])
    print(table(results, n, args.dim, args.queries))


if __name__ == "__main__":
    main()
