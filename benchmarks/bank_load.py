"""How long a patch bank takes to load from the embedded store, against reading its points alone.

A bank is loaded on the first verdict after a re-index switches the alias, or
after a restart, so its load time is that verdict's wait. The baseline, in the
same run, is scrolling the same points out of the store with nothing built;
the ratio is what building the bank (arrays, the exact search, the IVF bounds)
adds. Rows are random 256-d vectors with the payload real banks carry, 8 rows
per image as the default coreset keeps on a 28 x 28 grid.

    python benchmarks/bank_load.py                # 200,000 rows (25,000 nominal images)
    python benchmarks/bank_load.py --rows 400000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexing.patch_bank import load_bank, patch_point_id  # noqa: E402
from indexing.patch_search import default_bounds, default_nn  # noqa: E402
from indexing.store import EdgeStore, Point  # noqa: E402

DIM = 256
ROWS_PER_IMAGE = 8


def fill(store: EdgeStore, rows: int, dim: int = DIM) -> None:
    store.create_collection("bank", dim)
    rng = np.random.default_rng(0)
    for start in range(0, rows, 4096):
        vectors = rng.standard_normal((min(4096, rows - start), dim)).astype(np.float32)
        points = []
        for offset, vector in enumerate(vectors):
            image, patch = divmod(start + offset, ROWS_PER_IMAGE)
            image_id = uuid.UUID(int=image).hex
            payload = {"image_id": image_id, "source": f"/data/{image}.png", "patch": patch,
                       "row": patch // 28, "col": patch % 28, "norm": float(np.linalg.norm(vector))}
            points.append(Point(id=patch_point_id(image_id, patch), vector=vector, payload=payload))
        store.upsert("bank", points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="bank rows (8 per nominal image)")
    parser.add_argument("--repeat", type=int, default=3, help="timed loads of each kind; the best is kept")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="nominal-bank-load-"))
    try:
        with EdgeStore(folder) as store:
            started = time.perf_counter()
            fill(store, args.rows)
            print(f"{args.rows:,} rows x {DIM}-d written in {time.perf_counter() - started:.1f} s")
            scroll_s, load_s = [], []
            for _ in range(args.repeat):
                started = time.perf_counter()
                count = sum(1 for _ in store.scroll("bank", with_vectors=True, batch_size=4096))
                scroll_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                bank = load_bank(store, "bank", DIM, default_nn(), default_bounds())
                load_s.append(time.perf_counter() - started)
                assert count == len(bank) == args.rows
        print(f"read the points alone (baseline): {min(scroll_s):.2f} s")
        print(f"load the bank:                    {min(load_s):.2f} s  = {min(load_s) / min(scroll_s):.2f}x the baseline")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
