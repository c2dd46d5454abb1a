"""Memory a loaded patch bank holds per nominal image (the state a process keeps for patch verdicts).

Fills an embedded store with a bank of random rows (8 per image, as the default coreset
keeps on a 28 x 28 grid; 152-d, efficientnet_lite0's own channels, and 256-d, the width
a wider backbone is projected to), then, for each width, in a fresh process, measures the resident set
before and after loading it with the backends a CPU process uses (`default_nn`,
`default_bounds`), after a first read of every point so that the store's own cache is
not counted. The figure includes the rows, their owners and grid cells, the exact
search and the IVF bounds.

    python benchmarks/bank_memory.py                 # 200,000 rows (25,000 nominal images)
    python benchmarks/bank_memory.py --rows 400000 --dims 152
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS_PER_IMAGE = 8


def rss_bytes() -> int:
    """Resident bytes, after handing freed heap back to the system (what the process keeps, not its peak)."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as handle:
        import os

        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(folder: str, rows: int, dim: int) -> dict[str, float]:
    """In this (fresh) process: resident bytes the loaded bank adds."""
    from indexing.patch_bank import load_bank
    from indexing.patch_search import default_bounds, default_nn
    from indexing.store import EdgeStore

    with EdgeStore(folder) as store:
        nn, bounds = default_nn(), default_bounds()
        # The store keeps what it has read mapped (about 20 kB per image here, its own cache, not the
        # bank's): read every point once first, so the figure is what the loaded bank adds.
        for _ in store.scroll("bank", with_vectors=True, batch_size=4096):
            pass
        before = rss_bytes()
        bank = load_bank(store, "bank", dim, nn, bounds)
        gc.collect()
        after = rss_bytes()
        assert len(bank) == rows
        return {
            "rows": rows,
            "images": rows // ROWS_PER_IMAGE,
            "rss_added_bytes": after - before,
            "row_bytes": int(bank.vectors.nbytes),
            "backend": type(nn).__name__,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="bank rows (8 per nominal image)")
    parser.add_argument("--dims", type=int, nargs="+", default=[152, 256], help="patch vector widths to measure")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the fresh process's store folder
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.rows, args.dims[0])))
        return
    for dim in args.dims:
        run(args.rows, dim)


def run(rows: int, dim: int) -> None:
    from benchmarks.bank_load import fill  # noqa: PLC0415 - the same bank the load benchmark uses
    from indexing.store import EdgeStore

    folder = Path(tempfile.mkdtemp(prefix="nominal-bank-memory-"))
    try:
        with EdgeStore(folder) as store:
            fill(store, rows, dim)
        out = subprocess.run(
            [sys.executable, __file__, "--rows", str(rows), "--dims", str(dim), "--measure", str(folder)],
            capture_output=True, text=True, check=True,
        )
        found = json.loads(out.stdout.strip().splitlines()[-1])
        per_image = found["rss_added_bytes"] / found["images"]
        print(f"{found['rows']:,} rows x {dim}-d ({found['images']:,} nominal images), search {found['backend']}")
        print(f"rows alone:          {found['row_bytes'] / found['images']:,.0f} bytes per nominal image")
        print(f"loaded bank (RSS):   {per_image:,.0f} bytes per nominal image "
              f"({found['rss_added_bytes'] / 2**20:,.0f} MiB in all)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
