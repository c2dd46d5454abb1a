"""What taking the coreset against the bank's IVF bounds costs and buys: indexing time as the bank grows, and quality.

Indexing takes each batch's coreset against the bank so far (`indexing.sampler`). Measured
against every bank row, a batch costs (batch rows x bank rows): quadratic over a setting's
life, and minutes a batch for tiled 5-20 MP images (hundreds of tiles an image) within a
few hundred images. Above `EXACT_COVER_ROWS` bank rows, `indexing.patch_mode._coreset`
measures each patch against the nearest row of its IVF cell instead (`UpperBounds`, which
the bank keeps anyway for pruned verdicts).

1. Time: one batch of 32 images' patches (ELPV cells, the product's `PatchMaker`) against
   banks of growing size, every row and bounds, in the same run; the ratio.
2. Quality: banks built batch by batch as indexing builds them, with the bounds used from
   the second batch on (`EXACT_COVER_ROWS` forced to 0) and with every row; image ROC-AUC.

    python benchmarks/coreset.py
    NOMINAL_BENCH_DATA=../bench-data python benchmarks/coreset.py --sets elpv-poly elpv-combined kolektorsdd piped deeppcb
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import indexing.patch_mode as patch_mode  # noqa: E402
from indexing.backbones import load_backbone  # noqa: E402
from indexing.evaluation import compute_metrics  # noqa: E402
from indexing.patch_mode import PatchConfig  # noqa: E402
from quality import GrowingBank, build_bank, feature_maps, patch_scores  # noqa: E402
import suite  # noqa: E402


def timing(backbone, banks: list[int], repeats: int) -> None:
    config = PatchConfig().for_backbone(backbone.map_channels)
    data = suite.available()["elpv-combined"]()
    images = data.train[: 32 + max(banks) // 784 + 1]
    vectors = config.maker().patchify(feature_maps(backbone, images)).vectors.reshape(-1, config.dim)
    batch, pool = vectors[: 32 * 784], vectors[32 * 784 :]
    print(f"one batch of {len(batch):,} patch rows (32 ELPV cells), coreset {config.coreset_ratio:.0%}; best of {repeats}")
    print("| bank rows | every row s | IVF bounds s | every row / bounds |")
    print("| --- | --- | --- | --- |")
    for rows in banks:
        bank = GrowingBank(config.dim)
        bank.add(pool[:rows])
        found = {}
        for label, exact in (("every", rows), ("bounds", 0)):
            default, patch_mode.EXACT_COVER_ROWS = patch_mode.EXACT_COVER_ROWS, exact
            try:
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    patch_mode._coreset(config.sampler(), bank, batch)
                    times.append(time.perf_counter() - started)
            finally:
                patch_mode.EXACT_COVER_ROWS = default
            found[label] = min(times)
        print(f"| {rows:,} | {found['every']:.2f} | {found['bounds']:.2f} | {found['every'] / found['bounds']:.1f}x |")


def quality(backbone, names: list[str], seeds: list[int]) -> None:
    print(f"\nbanks built batch by batch (32 images), every row vs IVF bounds ({patch_mode.COVER_PROBES} cells probed) "
          f"from the second batch on; image ROC-AUC for coreset seeds {', '.join(map(str, seeds))}, and their mean")
    print("| set | bank rows | every row | IVF bounds | difference of the means |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        data = suite.available()[name]()
        train = feature_maps(backbone, data.train)
        test = feature_maps(backbone, [t.image for t in data.test])
        is_fail = np.array([t.is_fail for t in data.test])
        found: dict[str, list[float]] = {"every": [], "bounds": []}
        for seed in seeds:
            config = PatchConfig(tiling="off", seed=seed).for_backbone(backbone.map_channels)
            for label, exact in (("every", 1 << 62), ("bounds", 0)):
                default, patch_mode.EXACT_COVER_ROWS = patch_mode.EXACT_COVER_ROWS, exact
                try:
                    bank = build_bank(config, train)
                finally:
                    patch_mode.EXACT_COVER_ROWS = default
                scores, _ = patch_scores(config, bank, test, grids=False)
                found[label].append(compute_metrics(is_fail, scores).roc_auc)
        every, bounded = found["every"], found["bounds"]
        cells = [" / ".join(f"{v:.3f}" for v in values) + f" (mean {np.mean(values):.3f})" for values in (every, bounded)]
        print(f"| {name} | {len(bank):,} | {cells[0]} | {cells[1]} | {np.mean(bounded) - np.mean(every):+.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--banks", nargs="+", type=int, default=[8_192, 32_768, 131_072], help="bank sizes to time")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sets", nargs="+", default=["elpv-poly", "elpv-combined"], choices=list(suite.available()))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="quality: the recipe's seeds (projection and coreset); one set's figure moves with them")
    parser.add_argument("--no-quality", action="store_true")
    args = parser.parse_args()
    backbone = load_backbone("efficientnet_lite0")
    timing(backbone, args.banks, args.repeats)
    if not args.no_quality:
        quality(backbone, args.sets, args.seeds)


if __name__ == "__main__":
    main()
