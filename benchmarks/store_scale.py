"""The global store at scale: exact search against approximate indexes at N x 1280-d (EfficientNet-Lite0's width).

Each method runs in a fresh process over the same vectors (so each peak RSS is its
own) and reports: recall@10 against exact search, single-query p50/p99 (one query
per verdict, one thread), insert rate, index build time, reopen time, peak RSS and
disk. Methods:

- `numpy`: exact inner product over a float32 matrix (`X @ q`, argpartition): the reference.
- `edge`: the embedded store the service uses (qdrant-edge, `exact=True`), through `EdgeStore`.
- `hnsw`: faiss `IndexHNSWFlat` (M=32, efConstruction=40), efSearch 64, 128 and 256. Its
  distances are exact for what it returns; only recall is approximate.
- `ivfsq`: faiss IVF with 8-bit scalar quantization (nlist = sqrt(N), trained on 39 x nlist rows), nprobe 16 and
  64, 50 candidates rescored exactly from the float32 rows: the scores returned are
  the exact ones, only a neighbour missed by the candidates can differ. Built by
  `indexing.store.approximate.train_ivf_sq8`, the construction the store uses.
- `switch`: the embedded store with `approximate_above` (`--approximate-above`, default
  NOMINAL_APPROXIMATE_ABOVE's 100,000) over the points `edge` wrote (written here if
  `edge` did not run): exact queries first (switch off), then the same store switched:
  the index build (scroll, train, add, save), switched queries, and a restart
  (reopen the saved index; a crash after writes rebuilds instead, the build time).

Not run: qdrant-edge's own HNSW (its `optimize()` took 18 minutes at 100k x 2048-d
on these cores, /work/shared/NOTES.md) and its scalar quantization (it is built by
the same optimizer). A Qdrant server builds HNSW in the background; measure there.

Data: synthetic, clustered like embeddings of one product (256 Gaussian clusters,
unit length, cosine = inner product), queries held out from the same distribution.
Uniform random vectors would be the worst case for any approximate index.

    python benchmarks/store_scale.py                        # 100,000 x 1280-d
    python benchmarks/store_scale.py --n 1000000            # the issue's size: 4.9 GiB of float32 rows,
                                                            #  about 6 GiB peak for numpy/hnsw, 11 GiB disk for edge
    python benchmarks/store_scale.py --methods numpy,hnsw --json store_scale.json
    python benchmarks/store_scale.py --n 200000 --methods edge,switch   # the automatic switch, exact vs switched
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 1280
K = 10


def make_data(folder: Path, n: int, queries: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, DIM)).astype(np.float32)
    rows = np.lib.format.open_memmap(folder / "rows.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, 50_000):
        size = min(50_000, n - start)
        block = centres[rng.integers(0, 256, size)] + 0.7 * rng.standard_normal((size, DIM)).astype(np.float32)
        rows[start : start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
    rows.flush()
    block = centres[rng.integers(0, 256, queries)] + 0.7 * rng.standard_normal((queries, DIM)).astype(np.float32)
    np.save(folder / "queries.npy", block / np.linalg.norm(block, axis=1, keepdims=True))


def exact(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    scores = rows @ query
    top = np.argpartition(-scores, K)[:K]
    return top[np.argsort(-scores[top])]


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def timed(search, queries: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(np.asarray(search(query)))
        times.append(time.perf_counter() - started)
    return found, np.asarray(times) * 1000


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K].tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))


def heap() -> int:
    """Anonymous resident bytes now (RssAnon: the heap, not the store's memory-mapped files, not the peak)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


def filled_edge_store(path: Path, rows: np.ndarray) -> tuple[list[str], float | None]:
    """The points' ids, and the insert rate if this call wrote them (None: `edge` had already)."""
    from indexing.store import EdgeStore, Point

    n = len(rows)
    ids = [str(uuid.UUID(int=i)) for i in range(n)]
    if path.exists():
        return ids, None
    with EdgeStore(path, approximate_above=0) as store:
        store.create_collection("global", DIM)
        started = time.perf_counter()
        for start in range(0, n, 1000):
            store.upsert("global", [Point(id=ids[i], vector=rows[i].tolist(), payload={"n": i})
                                    for i in range(start, min(n, start + 1000))])
        return ids, n / (time.perf_counter() - started)


def saved_and_reopened(index, path: Path) -> float:  # noqa: ANN001 - a faiss index
    """Write a faiss index to `path`; the seconds reading it back takes (a restart's cost)."""
    import faiss

    faiss.write_index(index, str(path))
    started = time.perf_counter()
    faiss.read_index(str(path))
    return time.perf_counter() - started


def run_method(method: str, folder: Path, approximate_above: int) -> list[dict]:
    import faiss

    from indexing.store.approximate import train_ivf_sq8, training_rows

    faiss.omp_set_num_threads(1)
    rows = np.load(folder / "rows.npy")  # in memory: what a process serving the index holds
    queries = np.load(folder / "queries.npy")
    truth = np.load(folder / "truth.npy")
    n = len(rows)
    out: list[dict] = []
    base = {"method": method, "n": n}
    if method == "numpy":
        found, ms = timed(lambda q: exact(rows, q), queries)
        started = time.perf_counter()
        np.load(folder / "rows.npy")
        reopen = time.perf_counter() - started
        out.append({**base, "variant": "exact", "recall": recall(found, truth), "build_s": 0.0, "insert_per_s": None,
                    "reopen_s": reopen, "disk_bytes": disk(folder / "rows.npy")})
    elif method == "edge":
        from indexing.store import EdgeStore

        path = folder / "edge"
        ids, insert = filled_edge_store(path, rows)
        started = time.perf_counter()
        store = EdgeStore(path, approximate_above=0)
        store.count("global")
        reopen = time.perf_counter() - started
        number = {ident: i for i, ident in enumerate(ids)}
        try:
            found, ms = timed(lambda q: [number[h.id] for h in store.search("global", q[None, :], K)[0]], queries)
        finally:
            store.close()
        out.append({**base, "variant": "exact", "recall": recall(found, truth), "build_s": 0.0, "insert_per_s": insert,
                    "reopen_s": reopen, "disk_bytes": disk(path)})
    elif method == "switch":
        from indexing.store import EdgeStore

        path = folder / "edge"
        ids, insert = filled_edge_store(path, rows)
        number = {ident: i for i, ident in enumerate(ids)}
        del rows  # the store serves from its own copy

        def search(store: EdgeStore) -> Callable[[np.ndarray], list[int]]:
            return lambda q: [number[h.id] for h in store.search("global", q[None, :], K)[0]]

        with EdgeStore(path, approximate_above=0) as store:
            exact_found, exact_ms = timed(search(store), queries)
            exact_hits = [store.search("global", q[None, :], K)[0] for q in queries[:20]]
        with EdgeStore(path, approximate_above=approximate_above) as store:
            before = heap()
            started = time.perf_counter()
            mode = store.prepare_search("global")
            build = time.perf_counter() - started
            index_heap = heap() - before
            found, ms = timed(search(store), queries)
            switched_hits = [store.search("global", q[None, :], K)[0] for q in queries[:20]]
            same = sum(a == b for a, b in zip(exact_hits, switched_hits))
        started = time.perf_counter()
        with EdgeStore(path, approximate_above=approximate_above) as store:
            reopened = store.search_mode("global")
            reopen = time.perf_counter() - started
        index_disk = sum(disk(p) for p in (path / "collections" / "global").glob("approximate-*"))
        exact_row = {**base, "variant": f"switch off ({approximate_above:,} threshold)", "recall": recall(exact_found, truth),
                     "build_s": 0.0, "insert_per_s": insert, "reopen_s": 0.0, "disk_bytes": disk(path),
                     "p50_ms": float(np.percentile(exact_ms, 50)), "p99_ms": float(np.percentile(exact_ms, 99))}
        out.append(exact_row)
        out.append({**base, "variant": f"switched: {mode} after build, {reopened} after reopen; "
                    f"{same}/20 answers identical to exact (ids and distances); index {index_disk / 2**20:.0f} MiB "
                    f"on disk, +{index_heap / 2**20:.0f} MiB heap", "recall": recall(found, truth), "build_s": build,
                    "insert_per_s": insert, "reopen_s": reopen, "disk_bytes": disk(path)})
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        faiss.omp_set_num_threads(2)  # the build may use both cores; queries use one
        started = time.perf_counter()
        index.add(rows)
        build = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        reopen = saved_and_reopened(index, folder / "hnsw.index")
        for ef in (64, 128, 256):
            index.hnsw.efSearch = ef
            found, ms = timed(lambda q: index.search(q[None, :], K)[1][0], queries)
            out.append({**base, "variant": f"efSearch={ef}", "recall": recall(found, truth), "build_s": build,
                        "insert_per_s": n / build, "reopen_s": reopen, "disk_bytes": disk(folder / "hnsw.index"),
                        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))})
        return [{**row, "peak_rss": peak_rss()} for row in out]
    elif method == "ivfsq":
        faiss.omp_set_num_threads(2)
        started = time.perf_counter()
        index = train_ivf_sq8(rows[np.random.default_rng(1).choice(n, training_rows(n), replace=False)], n)
        nlist = index.nlist
        train = time.perf_counter() - started
        started = time.perf_counter()
        index.add(rows)
        add = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        reopen = saved_and_reopened(index, folder / "ivfsq.index")

        def rescored(q: np.ndarray) -> np.ndarray:
            candidates = index.search(q[None, :], 5 * K)[1][0]
            candidates = candidates[candidates >= 0]
            scores = rows[candidates] @ q  # exact scores of the candidates
            return candidates[np.argsort(-scores)[:K]]

        for nprobe in (16, 64):
            index.nprobe = nprobe
            found, ms = timed(rescored, queries)
            out.append({**base, "variant": f"nlist={nlist} nprobe={nprobe} rescore {5 * K}", "recall": recall(found, truth),
                        "build_s": train + add, "insert_per_s": n / add, "reopen_s": reopen,
                        "disk_bytes": disk(folder / "ivfsq.index"),
                        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))})
        return [{**row, "peak_rss": peak_rss()} for row in out]
    else:
        raise SystemExit(f"unknown method {method}")
    out[-1].update(p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)))
    return [{**row, "peak_rss": peak_rss()} for row in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="points in the collection")
    parser.add_argument("--queries", type=int, default=200, help="timed queries (recall is over the same)")
    parser.add_argument("--methods", default="numpy,edge,hnsw,ivfsq")
    parser.add_argument("--json", help="also write the figures here (for benchmarks/scale_plan.py)")
    parser.add_argument("--approximate-above", type=int, default=None,
                        help="the switch method's threshold (default NOMINAL_APPROXIMATE_ABOVE's default, 100,000)")
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)  # internal: method folder threshold
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_method(args.run[0], Path(args.run[1]), int(args.run[2]))))
        return
    from indexing.store.approximate import DEFAULT_APPROXIMATE_ABOVE

    above = DEFAULT_APPROXIMATE_ABOVE if args.approximate_above is None else args.approximate_above

    folder = Path(tempfile.mkdtemp(prefix="nominal-store-scale-"))
    try:
        started = time.perf_counter()
        make_data(folder, args.n, args.queries)
        rows = np.load(folder / "rows.npy", mmap_mode="r")
        queries = np.load(folder / "queries.npy")
        truth = np.stack([exact(np.asarray(rows), q) for q in queries]) if args.n <= 200_000 else None
        if truth is None:  # a million rows: the exact answers block by block, without a second copy in memory
            best = np.full((len(queries), K), -np.inf, dtype=np.float32)
            ids = np.zeros((len(queries), K), dtype=np.int64)
            for start in range(0, args.n, 100_000):
                block = np.asarray(rows[start : start + 100_000]) @ queries.T  # (b, q)
                scores = np.concatenate([best, block.T], axis=1)
                numbers = np.concatenate([ids, np.arange(start, start + len(block))[None, :].repeat(len(queries), 0)], 1)
                top = np.argsort(-scores, axis=1)[:, :K]
                best, ids = np.take_along_axis(scores, top, 1), np.take_along_axis(numbers, top, 1)
            truth = ids
        del rows
        np.save(folder / "truth.npy", truth)
        print(f"{args.n:,} x {DIM}-d clustered unit vectors and {args.queries} queries made in "
              f"{time.perf_counter() - started:.1f} s")
        results: list[dict] = []
        for method in args.methods.split(","):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--run", method, str(folder), str(above)], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{method}: failed\n{out.stderr[-2000:]}")
                continue
            results += json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{method}: {time.perf_counter() - started:.0f} s", flush=True)
            if args.json:  # after each method, so a long run keeps what it has measured
                Path(args.json).write_text(json.dumps({"n": args.n, "dim": DIM, "results": results}, indent=2))
        print()
        print("| method | variant | recall@10 | query p50 | p99 | insert | build | reopen | peak RSS | disk |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in results:
            insert = f"{row['insert_per_s']:,.0f}/s" if row["insert_per_s"] else "-"
            print(f"| {row['method']} | {row['variant']} | {row['recall']:.3f} | {row['p50_ms']:.2f} ms | "
                  f"{row['p99_ms']:.2f} ms | {insert} | {row['build_s']:.1f} s | {row['reopen_s']:.2f} s | "
                  f"{row['peak_rss'] / 2**30:.2f} GiB | {row['disk_bytes'] / 2**30:.2f} GiB |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
