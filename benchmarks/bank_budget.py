"""Many patch settings under one bank budget (NOMINAL_MAX_BANK_BYTES): memory and verdict time against the budget.

One embedded store holds N patch settings of M nominal images each (8 rows of 256-d
per image, as the default coreset keeps on a 28 x 28 grid). Verdicts are spread
uniformly at random over all settings; each budget (a fraction of what all banks
need, `bank_bytes`) runs in a fresh process, so its peak RSS is its own.

What is synthetic, and why that is fair here: bank rows are random vectors with the
payload real banks carry, and a "verdict" is the patch part of one: `PatchIndex.bank`
(the store's count, the cache, a reload when evicted) plus `PatchScorer.run` of 784
query patches taken from the bank with small noise (a nominal-looking image, so the
bounds prune as they do on real images). The backbone's forward pass (about 12 ms
per image on these cores) is the same at every budget and is left out; add it to
compare with the API figures.

    python benchmarks/bank_budget.py                              # 10 settings x 1,000 images
    python benchmarks/bank_budget.py --settings 50 --images 1000  # the issue's size
    python benchmarks/bank_budget.py --json bank_budget.json      # also for benchmarks/scale_plan.py
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexing.bank_cache import BankCache, bank_bytes  # noqa: E402
from indexing.patch_bank import load_bank, patch_point_id  # noqa: E402
from indexing.patch_mode import PatchIndex  # noqa: E402
from indexing.patch_search import PatchScorer, default_bounds, default_nn  # noqa: E402
from indexing.store import EdgeStore, Point  # noqa: E402

DIM = 256
ROWS_PER_IMAGE = 8
PATCHES = 784  # 28 x 28 query patches per image


def collection(number: int) -> str:
    return f"bank-{number:03d}"


def fill(store: EdgeStore, settings: int, images: int) -> None:
    rows = images * ROWS_PER_IMAGE
    for number in range(settings):
        store.create_collection(collection(number), DIM)
        rng = np.random.default_rng(number)
        for start in range(0, rows, 4096):
            vectors = rng.standard_normal((min(4096, rows - start), DIM)).astype(np.float32)
            points = []
            for offset, vector in enumerate(vectors):
                image, patch = divmod(start + offset, ROWS_PER_IMAGE)
                image_id = uuid.UUID(int=number << 32 | image).hex
                payload = {"image_id": image_id, "source": f"/data/{number}/{image}.png", "patch": patch,
                           "row": patch // 28, "col": patch % 28, "norm": float(np.linalg.norm(vector))}
                points.append(Point(id=patch_point_id(image_id, patch), vector=vector.tolist(), payload=payload))
            store.upsert(collection(number), points)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    import os

    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_budget(folder: str, settings: int, budget: int, verdicts: int, seed: int) -> dict:
    """In this (fresh) process: `verdicts` verdicts spread over the settings under `budget` bytes."""
    rng = np.random.default_rng(seed)
    with EdgeStore(folder) as store:
        cache = BankCache(max_bytes=budget)
        index = PatchIndex(store, cache=cache)
        start_rss = current_rss()
        times = []
        order = rng.integers(0, settings, verdicts)
        for number in order.tolist():
            started = time.perf_counter()
            bank = index.bank(f"s{number}", collection(number), DIM)
            pick = rng.integers(0, len(bank), PATCHES)
            queries = bank.vectors[pick] + 0.05 * rng.standard_normal((PATCHES, DIM)).astype(np.float32)
            PatchScorer(bank.nn, bounds=bank.bounds).run(queries, grid=False)
            times.append(time.perf_counter() - started)
        stats = cache.stats()
        ms = np.asarray(times) * 1000
        return {
            "budget_bytes": budget, "verdicts": verdicts, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "loads": stats.loads, "evictions": stats.evictions, "held_bytes": stats.bytes,
            "rss_after_open": start_rss, "peak_rss": peak_rss(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=int, default=10, help="patch settings")
    parser.add_argument("--images", type=int, default=1000, help="nominal images per setting (8 rows each)")
    parser.add_argument("--verdicts", type=int, default=150, help="verdicts per budget")
    parser.add_argument("--budgets", default="0.1,0.5,1.0", help="budgets as fractions of what all banks need")
    parser.add_argument("--json", help="also write the figures here (for benchmarks/scale_plan.py)")
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)  # internal: folder budget seed
    args = parser.parse_args()
    if args.run:
        folder, budget, seed = args.run
        print(json.dumps(run_budget(folder, args.settings, int(budget), args.verdicts, int(seed))))
        return

    folder = Path(tempfile.mkdtemp(prefix="nominal-bank-budget-"))
    try:
        with EdgeStore(folder) as store:
            started = time.perf_counter()
            fill(store, args.settings, args.images)
            print(f"{args.settings} settings x {args.images:,} images ({args.images * ROWS_PER_IMAGE:,} rows of "
                  f"{DIM}-d each) written in {time.perf_counter() - started:.1f} s")
            loads = []
            for _ in range(3):
                started = time.perf_counter()
                bank = load_bank(store, collection(0), DIM, default_nn(), default_bounds())
                loads.append(time.perf_counter() - started)
            one = bank_bytes(bank)
            del bank
        total = one * args.settings
        reload_s = float(np.median(loads))
        print(f"one bank: {one / 2**20:.1f} MiB (bank_bytes), reload {reload_s * 1000:.0f} ms (median of 3); "
              f"all banks: {total / 2**20:.1f} MiB")
        rows = []
        for fraction in (float(part) for part in args.budgets.split(",")):
            budget = max(1, int(fraction * total) + (16 if fraction >= 1 else 0))
            out = subprocess.run(
                [sys.executable, __file__, "--settings", str(args.settings), "--verdicts", str(args.verdicts),
                 "--run", str(folder), str(budget), "1"],
                check=True, capture_output=True, text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["fraction"] = fraction
            rows.append(row)
        print()
        print("| budget | banks held | verdict p50 | p99 | mean | reloads | evictions | peak RSS | RSS over store open |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in rows:
            print(f"| {row['fraction']:.0%} ({row['budget_bytes'] / 2**20:.0f} MiB) | {row['held_bytes'] / 2**20:.0f} MiB "
                  f"| {row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms | {row['mean_ms']:.1f} ms | {row['loads']} "
                  f"| {row['evictions']} | {row['peak_rss'] / 2**20:.0f} MiB "
                  f"| {(row['peak_rss'] - row['rss_after_open']) / 2**20:.0f} MiB |")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "settings": args.settings, "images": args.images, "rows_per_image": ROWS_PER_IMAGE, "dim": DIM,
                "bank_bytes_per_image": one / args.images, "reload_s": reload_s,
                "reload_s_per_image": reload_s / args.images, "runs": rows,
            }, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
