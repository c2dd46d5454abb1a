"""Detection quality on every visible set: one suite, one table; plus the older per-backbone grid and sweeps.

The suite (the default run) scores every set `benchmarks/suite.py` finds (ELPV mono,
poly, combined; Hazelnut Toy; KolektorSDD, PIPED, AITEX, DeepPCB under
NOMINAL_BENCH_DATA) in each scoring mode through the product's own code paths
(`PatchIndex` on an embedded store, with the tiling the setting would use), and prints
one table: image ROC-AUC, AP, F1-max; pixel ROC-AUC and PRO where masks exist; verdict
ms/image (batch 1, decoded image in, score out); fit time; bank bytes per nominal image.
`--anchors anchors.json` (written by `benchmarks/anchors.py`) adds anomalib's rows.

Levers measured beside the product's modes, not product modes themselves:
- `--modes positional` (and the other features and covariances of `POSITIONAL`: `positional-balanced`,
  `-rank32`, `-raw`...): PaDiM-style statistics, a Gaussian per patch position over the nominal images'
  patch vectors (`suite_positional`);
- `--modes global-levels`: image descriptors pooled from the stride-8, stride-16 and final
  maps, scored by kNN and by per-level Gaussians (Rippel et al. 2020; `suite_global_levels`);
- fusions (`FUSIONS`): the mean of two or three modes' scores, each standardised by its own
  nominal images' scores, printed for every set where those modes ran in the same suite; one
  is gated, adding positional statistics only where the set's nominal images pass the
  label-free alignment test (`indexing.positional.aligned_share`) and patch scoring takes them whole;
- stress sets (`suite.stress`, named "<set>-placed", only when `--datasets` names them): a visible
  set's images pasted at random places on a plain canvas twice their size, for parts that are not
  aligned; `patch-earlier` is the patch recipe the issue's held-out figures were measured with;
- local-scale variants (`LOCAL_VARIANTS`), from `patch-plain`'s scores (plain distances):
  other numbers of nominal images, a partial ratio, nearest images by the pooled embedding;
- `patch-ensemble` (both offline backbones), `patch-stride4` (Lite0's stride-4 map beside
  its stride-8 one), `patch-native` (every image tiled at its own pixel scale), coreset,
  re-weighting and normalisation variants; each patch row also gives top-k means and
  anomalib's image score (largest value of the smoothed heat map) from the same grids.

    NOMINAL_BENCH_DATA=../bench-data python benchmarks/quality.py --json suite.json --anchors anchors.json

The older grid (every backbone x k, patch on ELPV/Hazelnut) is `--grid`.

Train on PASS only (the FULL training split); score the labelled test split;
report image ROC-AUC, AP (FAIL positive) and F1-max. Global mode: each dataset is
embedded once per backbone and every k is scored from the same embeddings with the
product's own scoring functions. Patch mode (`--scoring patch`, on by default):
the product's own `PatchMaker`, coreset sampler (batches of 32 images against the
bank so far, as indexing does) and `PatchScorer`; plus pixel ROC-AUC where masks
exist (Hazelnut Toy) and the memory-bank bytes per nominal image. Where no masks
exist, scores come from the pruned search a verdict uses (`UpperBounds`), and the
largest difference from the full search on the first 100 test images is printed.

Speed: `--timing` indexes ELPV combined once through the service (patch setting,
which also holds the global collection) and times `inspect` one image at a time
(batch 1) in patch mode and in global mode, same store, same images; patch mode
also with `heatmap=True`, which needs the full nearest-patch search.
One configuration is re-run through the full service path (embedded store,
`NominalService.evaluate`) to show both give the same figure.

    python benchmarks/quality.py                       # the full table (about 30 minutes on 2 busy cores)
    python benchmarks/quality.py --datasets hazelnut   # a quick smoke run
    python benchmarks/quality.py --sweep               # patch choices on ELPV poly (dim, projection, ratio, re-weighting)
    python benchmarks/quality.py --search              # nearest-patch backends: torch matmul vs faiss vs numpy
    python benchmarks/quality.py --json results.json   # also keep the figures
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from dataclasses import replace
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexing.backbones import load_backbone  # noqa: E402
from indexing.backbones.base import FeatureMaps  # noqa: E402
from indexing.datasets import Dataset  # noqa: E402
from indexing.evaluation import compute_metrics  # noqa: E402
from indexing.heatmap import heat_map, mask_at, pixel_pro, pixel_roc_auc  # noqa: E402
from indexing.images import decode  # noqa: E402
from indexing.patch_mode import PatchConfig  # noqa: E402
from indexing.positional import ALIGNED_SHARE, PositionalStatistics, aligned_share  # noqa: E402
from indexing.patch_search import FaissNN, NumpyNN, PatchScorer, TorchNN, UpperBounds  # noqa: E402
from indexing.scoring import exact_knn  # noqa: E402
from indexing.service import BackbonePool, NominalService  # noqa: E402
from indexing.store import EdgeStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402

DATASETS = suite.available() | suite.stress()
BACKBONES = ["efficientnet_lite0", "mobilenet_v2"]
KS = [1, 3, 5]


def embed(backbone, images) -> np.ndarray:
    return backbone.embed([decode(i) for i in images], batch_size=32)


def global_scores(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    distances, _ = exact_knn(train, test, k)
    return distances.mean(axis=1)


# Images per indexing batch: the service's default batch size, so the coreset sees the same batches.
INDEX_BATCH = 32
# ELPV anchors from ../shared/ANCHORS.md (anomalib on the same backbones, a seeded 70/30 split).
ANCHORS = {
    ("elpv-mono", "efficientnet_lite0"): "PatchCore 0.945 / PaDiM 0.944 / kNN 0.939",
    ("elpv-mono", "mobilenet_v2"): "PatchCore 0.939 / PaDiM 0.938 / kNN 0.920",
    ("elpv-poly", "efficientnet_lite0"): "PatchCore 0.869 / PaDiM 0.895 / kNN 0.842",
    ("hazelnut", "efficientnet_lite0"): "1.000",
    ("hazelnut", "mobilenet_v2"): "1.000",
}
SWEEP = [
    {"coreset_ratio": 0.005}, {"coreset_ratio": 0.02}, {"dim": 384}, {"reweight_k": 9}, {"projection": "pool"},
    {}, {"dim": 128}, {"dim": 64}, {"normalise": False}, {"coreset_ratio": 0.05},
]


def feature_maps(backbone, images, chunk: int = 128):
    """Stride-8 and stride-16 maps of all images, decoded and run `chunk` at a time."""
    import torch

    parts = [backbone.feature_maps([decode(i) for i in images[s : s + chunk]], batch_size=32)
             for s in range(0, len(images), chunk)]
    return FeatureMaps(torch.cat([p.stride8 for p in parts]), torch.cat([p.stride16 for p in parts]))


class GrowingBank:
    """What `indexing.patch_mode._coreset` reads of a `PatchBank`: its rows and its bounds, grown batch by batch."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.empty((0, dim), dtype=np.float32)
        self.bounds = UpperBounds()

    def __len__(self) -> int:
        return len(self.vectors)

    def add(self, rows: np.ndarray) -> None:
        self.vectors = np.concatenate([self.vectors, rows])
        self.bounds.add(rows, bank=self.vectors)


def build_bank(config: PatchConfig, maps) -> np.ndarray:
    """The bank indexing would build: each batch's coreset taken against the bank so far, by the product's
    `_coreset` (every bank row, or the bank's IVF bounds above `EXACT_COVER_ROWS`)."""
    from indexing.patch_mode import _coreset

    maker, sampler, bank = config.maker(), config.sampler(), GrowingBank(config.dim)
    for start in range(0, len(maps.stride8), INDEX_BATCH):
        batch = FeatureMaps(maps.stride8[start : start + INDEX_BATCH], maps.stride16[start : start + INDEX_BATCH])
        flat = maker.patchify(batch).vectors.reshape(-1, config.dim)
        bank.add(flat[_coreset(sampler, bank, flat)])
    return bank.vectors


def patch_scores(config: PatchConfig, bank: np.ndarray, maps, *, grids: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(image scores (n,), patch-distance grids (n, rows, cols) or None) of the test maps against a bank.

    Without grids the scores come from the pruned search a verdict uses.
    """
    nn, bounds = TorchNN(), UpperBounds()
    nn.fit(bank)
    bounds.add(bank)
    scorer, maker = PatchScorer(nn, reweight_k=config.reweight_k, bounds=bounds), config.maker()
    scores, found_grids = [], []
    for start in range(0, len(maps.stride8), 64):
        patches = maker.patchify(FeatureMaps(maps.stride8[start : start + 64], maps.stride16[start : start + 64]))
        for vectors in patches.vectors:
            found = scorer.run(vectors, grid=grids)
            scores.append(found.score)
            if grids:
                found_grids.append(found.distances.reshape(patches.grid))
    return np.asarray(scores), (np.stack(found_grids) if grids else None)


def run_patch(datasets: list[str], backbones: list[str], config: PatchConfig) -> list[dict]:
    rows = []
    for backbone_name in backbones:
        backbone = load_backbone(backbone_name)
        for dataset_name in datasets:
            data: Dataset = DATASETS[dataset_name]()
            started = time.perf_counter()
            train_maps = feature_maps(backbone, data.train)
            test_maps = feature_maps(backbone, [t.image for t in data.test])
            embedded = time.perf_counter()
            resolved = config.for_backbone(backbone.map_channels)  # this backbone's recipe, not the next one's
            bank = build_bank(resolved, train_maps)
            built = time.perf_counter()
            has_masks = any(t.mask_path for t in data.test)
            scores, grids = patch_scores(resolved, bank, test_maps, grids=has_masks)
            scored = time.perf_counter()
            is_fail = np.array([t.is_fail for t in data.test])
            m = compute_metrics(is_fail, scores)
            pixel, pruned_diff = None, None
            if not has_masks:
                first = FeatureMaps(test_maps.stride8[:100], test_maps.stride16[:100])
                pruned_diff = float(np.abs(patch_scores(resolved, bank, first)[0] - scores[:100]).max())
            else:
                side = backbone.input_size
                maps = [heat_map(g, g.shape, (side, side), sigma=resolved.sigma) for g in grids]
                masks = [mask_at(str(t.mask_path), (side, side)) if t.mask_path else np.zeros((side, side), bool)
                         for t in data.test]
                pixel = pixel_roc_auc(maps, masks)
            rows.append({
                "dataset": dataset_name, "backbone": backbone_name, "scoring": "patch", "k": "-",
                "roc_auc": m.roc_auc, "ap": m.average_precision, "f1_max": m.f1_max, "pixel_roc_auc": pixel,
                "n_train": len(data.train), "n_test_pass": m.n_pass, "n_test_fail": m.n_fail,
                "bank_rows": len(bank), "bank_bytes_per_image": bank.nbytes / len(data.train),
                "coreset_s": built - embedded, "scoring_s": scored - built, "pruned_max_abs_diff": pruned_diff,
                "config": resolved.to_dict(),
            })
            check = "" if pruned_diff is None else f", pruned vs full search max |diff| {pruned_diff:.2g}"
            print(f"  patch {backbone_name} on {dataset_name}: maps {embedded - started:.1f} s, bank {len(bank)} rows "
                  f"in {built - embedded:.1f} s, scored in {scored - built:.1f} s, ROC-AUC {m.roc_auc:.3f}{check}",
                  file=sys.stderr)
    return rows


def run_sweep(backbone_name: str = "efficientnet_lite0", dataset_name: str = "elpv-poly") -> list[dict]:
    """Each patch choice in SWEEP on one dataset (maps computed once)."""
    backbone = load_backbone(backbone_name)
    data: Dataset = DATASETS[dataset_name]()
    train_maps = feature_maps(backbone, data.train)
    test_maps = feature_maps(backbone, [t.image for t in data.test])
    is_fail = np.array([t.is_fail for t in data.test])
    rows = []
    for change in SWEEP:
        config = PatchConfig(**change).for_backbone(backbone.map_channels)
        started = time.perf_counter()
        bank = build_bank(config, train_maps)
        scores, _ = patch_scores(config, bank, test_maps, grids=False)
        m = compute_metrics(is_fail, scores)
        rows.append({"change": change, "roc_auc": m.roc_auc, "ap": m.average_precision, "f1_max": m.f1_max,
                     "bank_rows": len(bank), "seconds": time.perf_counter() - started})
        print(f"| {change} | {m.roc_auc:.3f} | {m.average_precision:.3f} | {m.f1_max:.3f} | {len(bank)} |", flush=True)
    return rows


def compare_search(bank_rows: int = 8000, dim: int = 256, queries: int = 784, repeats: int = 10) -> None:
    """Time one image's nearest-patch search on each backend (same random bank); faiss with 1 and 2 threads."""
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((bank_rows, dim)).astype(np.float32)
    q = rng.standard_normal((queries, dim)).astype(np.float32)
    # faiss threads are set just before each faiss run: the setting is process-wide and torch's too.
    backends = {"torch matmul": TorchNN(), "faiss 1 thread": FaissNN(), "faiss 2 threads": FaissNN(),
                "numpy float64": NumpyNN()}
    print(f"nearest-patch search, {queries} queries x {bank_rows} x {dim}-d bank, ms per image:")
    for name, nn in backends.items():
        if name.startswith("faiss"):
            import faiss

            faiss.omp_set_num_threads(1 if "1" in name else 2)
        nn.fit(bank)
        nn.run(q, 1)
        n = repeats if "numpy" not in name else 2
        started = time.perf_counter()
        for _ in range(n):
            nn.run(q, 1)
        print(f"  {name}: {(time.perf_counter() - started) / n * 1000:.1f}")


def verdict_timing(dataset_name: str = "elpv-combined", backbone: str = "efficientnet_lite0", n: int = 40,
                   patch_config: PatchConfig | None = None) -> dict:
    """Per-image `inspect` time at batch 1, fused and patch vs global mode, on one store holding every collection
    (a fused setting's version: global vectors, patch bank, positional statistics); the patch bank built with
    `patch_config` (the service's default when None).

    The modes take turns image by image, and each mode's time is the median of its verdicts: a neighbour's
    burst on a shared machine then slows every mode alike instead of the one that happened to run in it."""
    data: Dataset = DATASETS[dataset_name]()
    probes = [t.image for t in data.test[:: max(1, len(data.test) // n)]][:n]
    with tempfile.TemporaryDirectory() as scratch:
        store = EdgeStore(Path(scratch) / "store")
        try:
            service = NominalService(store, backbones=BackbonePool(), patch_config=patch_config)
            service.put_setting("timing", backbone=backbone, scoring="fused")
            started = time.perf_counter()
            service.index("timing", data.train)
            index_s = time.perf_counter() - started
            turns = (("patch", False), ("global", False), ("fused", False), ("patch", True))
            for mode, heatmap in turns:  # warm-up: the model, the bank, each mode's caches
                service.put_setting("timing", scoring=mode)
                service.inspect("timing", probes[:2], heatmap=heatmap)
                if mode == "fused":
                    fused = service.context("timing").scorer  # what was fused: "fused:patch+positional+global"
            taken: dict[str, list[float]] = {}
            for image in probes:
                for mode, heatmap in turns:
                    service.put_setting("timing", scoring=mode)
                    started = time.perf_counter()
                    service.inspect("timing", [image], heatmap=heatmap)
                    taken.setdefault(mode + ("_heatmap" if heatmap else ""), []).append(time.perf_counter() - started)
            times = {name: float(np.median(seconds)) * 1000.0 for name, seconds in taken.items()}
            version = service.versions.active("timing")
            patch_count = store.count(service.versions.patch_record(version)["collection"])
        finally:
            store.close()
    return {"dataset": dataset_name, "backbone": backbone, "patch_ms": times["patch"], "global_ms": times["global"],
            "patch_heatmap_ms": times["patch_heatmap"], "fused_ms": times["fused"], "fused": fused,
            "fused_ratio": times["fused"] / times["global"],
            "ratio": times["patch"] / times["global"], "index_s": index_s, "bank_points": patch_count,
            "n_train": len(data.train)}


def run_grid(datasets: list[str], backbones: list[str], ks: list[int]) -> list[dict]:
    rows = []
    for backbone_name in backbones:
        backbone = load_backbone(backbone_name)
        for dataset_name in datasets:
            data: Dataset = DATASETS[dataset_name]()
            started = time.perf_counter()
            train = embed(backbone, data.train)
            test = embed(backbone, [t.image for t in data.test])
            seconds = time.perf_counter() - started
            is_fail = np.array([t.is_fail for t in data.test])
            for k in ks:
                m = compute_metrics(is_fail, global_scores(train, test, k))
                rows.append({
                    "dataset": dataset_name, "backbone": backbone_name, "scoring": "global", "k": k,
                    "roc_auc": m.roc_auc, "ap": m.average_precision, "f1_max": m.f1_max,
                    "n_train": len(data.train), "n_test_pass": m.n_pass, "n_test_fail": m.n_fail,
                    "embed_images_per_s": (len(data.train) + len(data.test)) / seconds,
                })
            print(f"  {backbone_name} on {dataset_name}: {len(data.train) + len(data.test)} images embedded "
                  f"in {seconds:.1f} s", file=sys.stderr)
    return rows


def service_path(dataset_name: str, backbone: str, k: int, scoring: str = "global") -> float:
    """ROC-AUC of one configuration through the product path: embedded store + NominalService.evaluate."""
    with tempfile.TemporaryDirectory() as scratch:
        store = EdgeStore(Path(scratch) / "store")
        try:
            service = NominalService(store, backbones=BackbonePool())
            service.put_setting("bench", backbone=backbone, k=k, scoring=scoring)
            result = service.evaluate(DATASETS[dataset_name](), setting="bench", out_dir=Path(scratch) / "report")
        finally:
            store.close()
    return float(result.metrics.roc_auc)


def print_table(rows: list[dict]) -> None:
    print("| dataset | backbone | scoring | k | ROC-AUC | AP | F1-max | pixel ROC-AUC | bank bytes/image "
          "| train | test PASS | test FAIL | anomalib anchors (ROC-AUC) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: (r["dataset"], r["backbone"], r["scoring"] != "global", str(r["k"]))):
        pixel = "-" if r.get("pixel_roc_auc") is None else f"{r['pixel_roc_auc']:.4f}"
        size = f"{r['bank_bytes_per_image']:,.0f}" if "bank_bytes_per_image" in r else "-"
        anchor = ANCHORS.get((r["dataset"], r["backbone"]), "-") if r["scoring"] == "patch" else ""
        print(f"| {r['dataset']} | {r['backbone']} | {r['scoring']} | {r['k']} | {r['roc_auc']:.3f} | {r['ap']:.3f} "
              f"| {r['f1_max']:.3f} | {pixel} | {size} | {r['n_train']} | {r['n_test_pass']} | {r['n_test_fail']} "
              f"| {anchor} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(suite.available()), choices=list(DATASETS),
                        help="sets to score (default: every visible set present; the '-placed' stress sets "
                             "of benchmarks/suite.py only when named)")
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--ks", nargs="+", type=int, default=KS)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--no-check", action="store_true", help="skip the service-path cross-check")
    parser.add_argument("--scoring", nargs="+", default=["global", "patch"], choices=["global", "patch"])
    parser.add_argument("--no-timing", action="store_true", help="skip the patch vs global verdict timing")
    parser.add_argument("--sweep", action="store_true", help="only the patch-choice sweep on ELPV poly")
    parser.add_argument("--search", action="store_true", help="only the nearest-patch search backends")
    parser.add_argument("--timing-only", action="store_true", help="only the patch vs global verdict timing")
    parser.add_argument("--grid", action="store_true", help="the older grid: every backbone x k, patch on ELPV/Hazelnut")
    parser.add_argument("--modes", nargs="+", default=["global", "patch", "patch-notile"], choices=list(SUITE_MODES),
                        help="suite: scoring modes (patch rows also give top-k means from the same grids)")
    parser.add_argument("--anchors", type=Path, help="suite: anomalib rows written by benchmarks/anchors.py --json")
    parser.add_argument("--fresh", action="store_true", help="suite: recompute rows held in the benchmark cache")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="suite: patch recipe seeds (projection and coreset); with several, each patch row is "
                             "their mean (one seed moves KolektorSDD by up to 0.038)")
    args = parser.parse_args()

    if args.search:
        compare_search()
        return
    if args.timing_only:
        print_timing(verdict_timing(backbone=args.backbones[0]))
        # Plain distances (no local scale) in the same run, for what the local scale costs a verdict.
        print_timing(verdict_timing(backbone=args.backbones[0], patch_config=SUITE_MODES["patch-plain"]), "patch-plain")
        return
    if args.sweep:
        print("| change from the default PatchConfig | ROC-AUC | AP | F1-max | bank rows |")
        print("| --- | --- | --- | --- | --- |")
        rows = run_sweep()
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return
    if not args.grid:
        # --scoring keeps its meaning: which of the two families of modes to run.
        modes = [m for m in args.modes if (m.startswith("global") and "global" in args.scoring)
                 or (m.startswith(("patch", "positional", "fused")) and "patch" in args.scoring)]
        rows = run_suite(args.datasets, args.backbones[0], modes, fresh=args.fresh, seeds=tuple(args.seeds))
        rows += fused_rows(rows) + local_rows(rows)
        anchors = json.loads(args.anchors.read_text()) if args.anchors else []
        anchors = [a for a in anchors if a["set"] in args.datasets and a["backbone"] == args.backbones[0]]
        print_suite(rows, anchors, default_mode())
        timing = None
        if not args.no_timing and "patch" in args.scoring:
            timing = verdict_timing(backbone=args.backbones[0])
            print_timing(timing)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "anchors": anchors, "timing": timing}, indent=2))
        return
    timing = None
    rows = run_grid(args.datasets, args.backbones, args.ks) if "global" in args.scoring else []
    if "patch" in args.scoring:
        rows += run_patch(args.datasets, args.backbones, PatchConfig())
    print_table(rows)
    for dataset in args.datasets:
        for backbone in args.backbones:
            mine = [r for r in rows if (r["dataset"], r["backbone"]) == (dataset, backbone)]
            best_global = max((r["roc_auc"] for r in mine if r["scoring"] == "global"), default=None)
            patch = next((r["roc_auc"] for r in mine if r["scoring"] == "patch"), None)
            if best_global is not None and patch is not None:
                print(f"{dataset} {backbone}: patch {patch:.3f} vs best global {best_global:.3f} "
                      f"({'patch better' if patch > best_global else 'global better or equal'})")
    if not args.no_timing and "patch" in args.scoring:
        timing = verdict_timing(backbone=args.backbones[0])
        print_timing(timing)
    best = max((r for r in rows if r["dataset"] == "elpv-combined"), key=lambda r: r["roc_auc"], default=None)
    if best:
        print(f"\nbest on ELPV combined: {best['backbone']} k={best['k']} ROC-AUC {best['roc_auc']:.3f}")
    if not args.no_check:
        dataset, backbone, k = args.datasets[-1], args.backbones[0], args.ks[0]
        for scoring in args.scoring:
            via_service = service_path(dataset, backbone, k, scoring)
            grid = next(r["roc_auc"] for r in rows if r.get("scoring") == scoring
                        and (r["dataset"], r["backbone"]) == (dataset, backbone) and r["k"] in (k, "-"))
            print(f"service path check ({dataset}, {backbone}, {scoring}): ROC-AUC {via_service:.4f} vs grid {grid:.4f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "timing": timing}, indent=2))


# --- the suite -----------------------------------------------------------------------

# Patch scores derived from the same bank and distance grids: the image score as the mean of the top k patches.
TOP_KS = (3, 10)
# Tiled sets with masks: full distance grids (pixel metrics) on at most this many test images, evenly spaced;
# image metrics use every test image (the pruned search a verdict uses).
PIXEL_CAP = 200
TIMING_PROBES = 20


def _cached(key: str, fresh: bool, compute) -> dict:
    path = suite.cache_dir() / f"quality2-{key}.json"  # 2: rows carry per-image and reference scores
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    row = compute()
    path.write_text(json.dumps(row))
    return row


def _probes(data: Dataset) -> list:
    return [decode(t.image) for t in data.test[:: max(1, len(data.test) // TIMING_PROBES)]][:TIMING_PROBES]


def suite_global(name: str, data: Dataset, backbone) -> dict:
    """Global kNN (k=1, cosine on the pooled embedding): the product's scoring functions."""
    started = time.perf_counter()
    train = np.concatenate([embed(backbone, data.train[s : s + 128]) for s in range(0, len(data.train), 128)])
    fit_s = time.perf_counter() - started
    test_images = [t.image for t in data.test]
    test = np.concatenate([embed(backbone, test_images[s : s + 128]) for s in range(0, len(test_images), 128)])
    is_fail = np.array([t.is_fail for t in data.test])
    scores = global_scores(train, test, 1)
    m = compute_metrics(is_fail, scores)
    reference = exact_knn(train, train, 2)[0][:, 1]  # each nominal image against the others (leave-one-out)
    probes = _probes(data)
    backbone.embed(probes[:1])
    timed = time.perf_counter()
    for image in probes:
        exact_knn(train, backbone.embed([image]), 1)
    ms = (time.perf_counter() - timed) / len(probes) * 1000.0
    row = _row(name, "global", data, m, None, None, ms, fit_s, train.shape[1] * 4.0, tiled=False)
    near = exact_knn(train, test, LOCAL_K)[1]  # each test image's nearest nominal images, for `local_rows`
    return row | {"scores": scores.tolist(), "reference": reference.tolist(), "train_ids": [i.id for i in data.train],
                  "near": near.tolist()}


def suite_global_levels(name: str, data: Dataset, backbone, maps_backbone) -> list[dict]:
    """Image descriptors from more than the final layer (a lever, not a product mode): each of the
    stride-8, stride-16 and final maps average-pooled over the image and L2-normalised, then

    - `global-levels`: concatenated (each level weighing the same), cosine kNN k=1, as the product's global;
    - `global-mid`: the stride-8 and stride-16 levels alone;
    - `global-gauss`: one Gaussian per level (Ledoit-Wolf shrinkage), the image score the sum of the
      levels' Mahalanobis distances (Rippel et al. 2020, "Modeling the distribution of normal data in
      pre-trained deep features for anomaly detection", on three of the network's levels);
    - `global-gauss-final`: the same Gaussian on the final level alone.

    Squashed 224 px input, every training image; reference scores are leave-one-out for kNN and
    in-sample for the Gaussians.
    """
    from sklearn.covariance import LedoitWolf

    def levels(images) -> list[np.ndarray]:
        parts = []
        for s in range(0, len(images), 128):
            chunk = images[s : s + 128]
            maps = feature_maps(maps_backbone, chunk)
            pooled = [maps.stride8.mean(dim=(2, 3)).numpy(), maps.stride16.mean(dim=(2, 3)).numpy(),
                      embed(backbone, chunk)]
            parts.append([p / np.linalg.norm(p, axis=1, keepdims=True) for p in pooled])
        return [np.concatenate([p[i] for p in parts]).astype(np.float32) for i in range(3)]

    started = time.perf_counter()
    train = levels(data.train)
    fit_s = time.perf_counter() - started
    test = levels([t.image for t in data.test])
    is_fail = np.array([t.is_fail for t in data.test])
    rows = []

    def knn(chosen: list[int], label: str) -> None:
        bank = np.concatenate([train[i] for i in chosen], axis=1) / np.sqrt(len(chosen))
        queries = np.concatenate([test[i] for i in chosen], axis=1) / np.sqrt(len(chosen))
        scores = global_scores(bank, queries, 1)
        reference = exact_knn(bank, bank, 2)[0][:, 1]
        rows.append(_row(name, label, data, compute_metrics(is_fail, scores), None, None, None, fit_s,
                         bank.shape[1] * 4.0, tiled=False) | {"scores": scores.tolist(), "reference": reference.tolist()})

    def gauss(chosen: list[int], label: str) -> None:
        scores, reference = np.zeros(len(data.test)), np.zeros(len(data.train))
        for i in chosen:
            fitted = LedoitWolf().fit(train[i])
            scores += np.sqrt(fitted.mahalanobis(test[i]))
            reference += np.sqrt(fitted.mahalanobis(train[i]))
        size = sum(train[i].shape[1] * (1 + train[i].shape[1]) for i in chosen) * 4.0 / len(data.train)
        rows.append(_row(name, label, data, compute_metrics(is_fail, scores), None, None, None, fit_s, size, tiled=False)
                    | {"scores": scores.tolist(), "reference": reference.tolist()})

    knn([0, 1, 2], "global-levels")
    knn([0, 1], "global-mid")
    gauss([0, 1, 2], "global-gauss")
    gauss([2], "global-gauss-final")
    return rows


def suite_patch(name: str, data: Dataset, backbone, config: PatchConfig, mode: str) -> list[dict]:
    """Patch scoring through `PatchIndex` on an embedded store, exactly as a setting with `config` indexes and scores
    (`config` as `run_suite` resolved it for the backbone: `PatchConfig.for_backbone`).

    Returns the row of `config` and, where every test image has a distance grid, rows for
    the mean of the top k patch distances (same bank, same grids).
    """
    from indexing.patch_mode import PatchIndex
    from indexing.patch_search import top_mean
    from indexing.tiling import layout_for

    tiled = layout_for(decode(data.train[0]), backbone.input_size, config.tiling) is not None
    has_masks = any(t.mask_path for t in data.test)
    n = len(data.test)
    step = max(1, -(-n // PIXEL_CAP)) if tiled else 1
    with_grid = set(range(0, n, step)) if (has_masks or not tiled) else set()
    with tempfile.TemporaryDirectory() as scratch:
        store = EdgeStore(Path(scratch) / "store")
        try:
            index, collection = PatchIndex(store), "bench"
            store.create_collection(collection, config.dim)
            started = time.perf_counter()
            for start in range(0, len(data.train), INDEX_BATCH):
                batch = data.train[start : start + INDEX_BATCH]
                index.extend(name, collection, config, backbone, batch, [decode(i) for i in batch], batch_size=INDEX_BATCH)
            fit_s = time.perf_counter() - started
            bank = index.bank(name, collection, config.dim)
            found: list = [None] * n
            for grids in (True, False):
                numbers = [i for i in range(n) if (i in with_grid) == grids]
                for start in range(0, len(numbers), 16):
                    part = numbers[start : start + 16]
                    images = [data.test[i].image for i in part]
                    results = index.score(name, collection, config, backbone, images, [decode(i) for i in images], grids=grids,
                                          neighbours=LOCAL_K)
                    for i, result in zip(part, results):
                        found[i] = result
            probes = _probes(data)
            raw = backbone._backbone if isinstance(backbone, MapCache) else backbone  # time the network, not the cache
            index.score(name, collection, config, raw, [data.test[0].image], probes[:1], neighbours=1)
            timed = time.perf_counter()
            for number, image in enumerate(probes):
                index.score(name, collection, config, raw, [data.test[number].image], [image], neighbours=1)
            ms = (time.perf_counter() - timed) / len(probes) * 1000.0
            per_image = bank.vectors.nbytes / len(data.train)
            by_image = index.nominal_scores_by_image(name, collection, config)
            reference = np.fromiter(by_image.values(), dtype=np.float64)
        finally:
            store.close()
    is_fail = np.array([t.is_fail for t in data.test])
    scores = np.array([f.score for f in found])
    pixel = pro = None
    if has_masks and with_grid:
        heats, masks = [], []
        for i in sorted(with_grid):
            heat = found[i].heat_at(backbone.input_size, config.sigma)
            test = data.test[i]
            heats.append(heat)
            masks.append(mask_at(str(test.mask_path), heat.shape) if test.mask_path else np.zeros(heat.shape, bool))
        pixel, pro = pixel_roc_auc(heats, masks), pixel_pro(heats, masks)
    label = mode + (" (tiled)" if tiled else "")
    rows = [_row(name, label, data, compute_metrics(is_fail, scores), pixel, pro, ms, fit_s, per_image, tiled=tiled,
                 pixel_images=len(with_grid) if has_masks else None)
            | {"scores": scores.tolist(), "reference": reference.tolist(), "reference_ids": list(by_image),
               "named": [[neighbour.id for neighbour in f.neighbours] for f in found]}]
    if len(with_grid) == n and config.reweight_k == 0 and config.top_k == 1:
        for k in TOP_KS:
            top = np.array([top_mean(f.grid.ravel(), k) for f in found])
            rows.append(_row(name, f"{mode} top-{k} mean", data, compute_metrics(is_fail, top), pixel, pro, None, fit_s,
                             per_image, tiled=tiled))
        # anomalib's PaDiM image score: the largest value of the smoothed heat map, not of the raw distances.
        smoothed = np.array([f.heat_at(backbone.input_size, config.sigma).max() for f in found])
        rows.append(_row(name, f"{mode} smoothed max", data, compute_metrics(is_fail, smoothed), pixel, pro, None, fit_s,
                         per_image, tiled=tiled))
    return rows


def suite_fused(name: str, data: Dataset, backbone, config: PatchConfig, mode: str = "fused") -> list[dict]:
    """The fused scoring mode through the service itself (`indexing.fused`): a setting created with
    scoring="fused" on an embedded store, indexed with the training images, every test image scored as
    `calibrate` and `evaluate` score them; the patch recipe `config`. Heat maps (the patch grids) where
    masks exist, on at most `PIXEL_CAP` test images of a tiled set, as `suite_patch` does."""
    from indexing.tiling import layout_for

    tiled = layout_for(decode(data.train[0]), backbone.input_size, config.tiling) is not None
    has_masks = any(t.mask_path for t in data.test)
    n = len(data.test)
    step = max(1, -(-n // PIXEL_CAP)) if tiled else 1
    with_grid = set(range(0, n, step)) if has_masks else set()
    with tempfile.TemporaryDirectory() as scratch:
        store = EdgeStore(Path(scratch) / "store")
        try:
            service = NominalService(store, backbones=BackbonePool(lambda _: backbone), patch_config=config)
            service.put_setting("bench", backbone=backbone.name, scoring="fused")
            started = time.perf_counter()
            service.index("bench", data.train)
            fit_s = time.perf_counter() - started
            found: list = [None] * n
            for grids in (True, False):
                numbers = [i for i in range(n) if (i in with_grid) == grids]
                scored = service._scored("bench", [data.test[i].image for i in numbers], grids=grids)
                for i, result in zip(numbers, scored):
                    found[i] = result
            probes = [data.test[i].image for i in range(0, n, max(1, n // TIMING_PROBES))][:TIMING_PROBES]
            service.inspect("bench", probes[:1])
            timed = time.perf_counter()
            for image in probes:
                service.inspect("bench", [image])
            ms = (time.perf_counter() - timed) / len(probes) * 1000.0
            version = service.versions.active("bench")
            patch = service.versions.patch_record(version)
            record = service.fused.record(patch)
            scorer = service.context("bench").scorer
            per_image = (store.count(patch["collection"]) * patch["dim"] * 4 + version.dim * len(data.train) * 4
                         + (service.positional.statistics(record).nbytes if record.generation else 0)) / len(data.train)
        finally:
            store.close()
    is_fail = np.array([t.is_fail for t in data.test])
    scores = np.array([score for score, _ in found])
    pixel = pro = None
    if with_grid:
        heats, masks = [], []
        for i in sorted(with_grid):
            heat = found[i][1].heat_at(backbone.input_size, config.sigma)
            test = data.test[i]
            heats.append(heat)
            masks.append(mask_at(str(test.mask_path), heat.shape) if test.mask_path else np.zeros(heat.shape, bool))
        pixel, pro = pixel_roc_auc(heats, masks), pixel_pro(heats, masks)
    label = mode + (" (tiled)" if tiled else "")
    row = _row(name, label, data, compute_metrics(is_fail, scores), pixel, pro, ms, fit_s, per_image, tiled=tiled,
               pixel_images=len(with_grid) if has_masks else None)
    return [row | {"scores": scores.tolist(), "fused": scorer.removeprefix("fused:"),
                   "aligned_share": record.within / record.checked if record.checked else None}]


# The positional levers (`suite_positional`): mode -> (patch features, dim, covariance).
# Features: "random" is the earlier recipe's (a seeded projection to `dim`); "balanced" the product's (the
# backbone's own channels, each scale L2-normalised per position: 152-d for efficientnet_lite0); "raw" those
# channels unnormalised, as anomalib's PaDiM takes them.
# Covariance: "full" one per position (PaDiM); "diag" its diagonal only (2 x 152 floats a position instead of
# 152²); a number r its r largest principal directions, every other direction at the ridge alone; ("batches", r)
# the product's `indexing.positional.PositionalStatistics` (r directions merged 32 images at a time, the rest of
# the variance as one floor).
POSITIONAL = {
    "positional": ("random", 128, "full"),
    "positional-64": ("random", 64, "full"),
    "positional-256": ("random", 256, "full"),
    "positional-balanced": ("balanced", 0, "full"),
    "positional-diag": ("balanced", 0, "diag"),
    "positional-rank16": ("balanced", 0, 16),
    "positional-rank32": ("balanced", 0, 32),
    # Merged batch by batch, as indexing adds images, without the full covariance ever being held.
    "positional-rank32-batches": ("balanced", 0, ("batches", 32)),
    "positional-raw": ("raw", 0, "full"),
    "positional-raw-rank32-batches": ("raw", 0, ("batches", 32)),
}


def suite_positional(name: str, data: Dataset, backbone, mode: str = "positional", ridge: float = 0.01) -> list[dict]:
    """A PaDiM-style prototype (positional statistics): a Gaussian per patch position over the nominal
    images' patch vectors (the product's `PatchMaker`, 224 px squashed, as anomalib's PaDiM sees them),
    patch score = Mahalanobis distance to its position's Gaussian, image score = the largest. `mode` names
    the features and covariance (`POSITIONAL`).

    Not a product mode: it measures whether per-position statistics would win on the suite.
    Reference scores are the nominal images' own (in-sample) scores.
    """
    import torch

    projection, dim, covariance_kind = POSITIONAL[mode]
    config = (PatchConfig(dim=dim, projection="random") if projection == "random" else
              PatchConfig(projection="none", normalise=False).for_backbone(backbone.map_channels) if projection == "raw"
              else PatchConfig().for_backbone(backbone.map_channels))
    maker, dim = config.maker(), config.dim

    def vectors(images) -> torch.Tensor:
        parts = [maker.patchify(feature_maps(backbone, images[s : s + 64])).vectors for s in range(0, len(images), 64)]
        return torch.from_numpy(np.concatenate(parts)).double()  # (n, positions, dim)

    started = time.perf_counter()
    train = vectors(data.train)
    positions = train.shape[1]
    grid = (int(round(positions ** 0.5)),) * 2
    # Each form keeps, per setting, `stored` float32 values: the mean and the covariance, its diagonal or its directions.
    aligned = None
    if isinstance(covariance_kind, tuple):  # the product's statistics hold their own mean
        statistics = PositionalStatistics.of(train.numpy(), rank=covariance_kind[1])
        stored = statistics.nbytes / 4
        # The label-free alignment test, on the nominal images alone (each against the others' mean map).
        aligned = aligned_share(np.concatenate([statistics.shifts(train[s : s + 64].numpy(), held_in=True)
                                                for s in range(0, len(train), 64)]))
        print(f"  {name}: {aligned:.2f} of the nominal images register within one cell", file=sys.stderr)
    else:
        mean = train.mean(dim=0)
        centred = train - mean
        if covariance_kind == "diag":
            inverse_variance = 1.0 / (centred.square().sum(dim=0) / max(len(train) - 1, 1) + ridge)
            stored = positions * 2 * dim
        elif isinstance(covariance_kind, int):
            covariance = torch.einsum("npi,npj->pij", centred, centred) / max(len(train) - 1, 1)
            variances, directions = torch.linalg.eigh(covariance)  # ascending
            variances, directions = variances[:, -covariance_kind:], directions[:, :, -covariance_kind:]
            # (C_r + ridge I)^-1 = (I - V diag(l / (l + ridge)) V^T) / ridge
            shrink = variances.clamp_min(0) / (variances.clamp_min(0) + ridge)
            stored = positions * (dim + (dim + 1) * covariance_kind)
        else:
            covariance = torch.einsum("npi,npj->pij", centred, centred) / max(len(train) - 1, 1)
            covariance += ridge * torch.eye(dim, dtype=covariance.dtype)
            precision = torch.linalg.inv(covariance)
            stored = positions * (dim + dim * dim)
        del centred
    fit_s = time.perf_counter() - started

    def distances(x: torch.Tensor) -> np.ndarray:
        if isinstance(covariance_kind, tuple):
            return statistics.distances(x.numpy(), ridge=ridge)
        d = x - mean
        if covariance_kind == "diag":
            return (d.square() * inverse_variance).sum(dim=-1).clamp_min(0).sqrt().numpy()
        if isinstance(covariance_kind, int):
            along = torch.einsum("npi,pir->npr", d, directions)
            return ((d.square().sum(-1) - (along.square() * shrink).sum(-1)) / ridge).clamp_min(0).sqrt().numpy()
        return torch.einsum("npi,pij,npj->np", d, precision, d).clamp_min(0).sqrt().numpy()

    test_images = [t.image for t in data.test]
    grids = np.concatenate([distances(vectors(test_images[s : s + 64])) for s in range(0, len(test_images), 64)])
    reference = np.concatenate([distances(train[s : s + 64]) for s in range(0, len(train), 64)]).max(axis=1)
    scores = grids.max(axis=1)
    is_fail = np.array([t.is_fail for t in data.test])
    pixel = pro = None
    if any(t.mask_path for t in data.test):
        size = (backbone.input_size, backbone.input_size)
        heats = [heat_map(g, grid, size) for g in grids]
        masks = [mask_at(str(t.mask_path), size) if t.mask_path else np.zeros(size, bool) for t in data.test]
        pixel, pro = pixel_roc_auc(heats, masks), pixel_pro(heats, masks)
    per_image = stored * 4.0 / len(data.train)  # one Gaussian per position, per setting
    label = mode
    row = _row(name, label, data, compute_metrics(is_fail, scores), pixel, pro, None, fit_s, per_image, tiled=False)
    # anomalib's PaDiM image score: the largest value of the smoothed heat map.
    size = (backbone.input_size, backbone.input_size)
    smoothed = np.array([heat_map(g, grid, size).max() for g in grids])
    if aligned is not None:
        row["aligned_share"] = aligned
    return [row | {"scores": scores.tolist(), "reference": reference.tolist()},
            _row(name, f"{label} smoothed max", data, compute_metrics(is_fail, smoothed), pixel, pro, None, fit_s,
                 per_image, tiled=False)]


def _row(name, mode, data, m, pixel, pro, ms, fit_s, bytes_per_image, *, tiled, pixel_images=None) -> dict:
    return {
        "set": name, "mode": mode, "roc_auc": m.roc_auc, "ap": m.average_precision, "f1_max": m.f1_max,
        "pixel_roc_auc": pixel, "pixel_pro": pro, "ms_per_image": ms, "fit_s": fit_s,
        "bytes_per_nominal_image": bytes_per_image, "n_train": len(data.train), "n_test_pass": m.n_pass,
        "n_test_fail": m.n_fail, "tiled": tiled, "pixel_images": pixel_images,
    }


SUITE_MODES = {
    "global": None,
    "global-levels": None,  # pooled stride-8, stride-16 and final features (`suite_global_levels`): kNN and Gaussians
    **dict.fromkeys(POSITIONAL),  # per-position statistics (`suite_positional`), each form of `POSITIONAL`
    "patch": PatchConfig(),
    # The product's fused scoring (`indexing.fused`), through the service (`suite_fused`), on the patch recipe.
    "fused": PatchConfig(),
    # The neighbourhood levers: a single cell (PaDiM's features), and PatchCore's plain 3 x 3 mean (the
    # default before December 5, 2026; the default now weighs the 3 x 3 cells by closeness, "tent").
    "fused-neighbourhood1": PatchConfig(neighbourhood=1),
    "fused-box": PatchConfig(aggregation="box"),
    # Plain distances, the image score before December 2026's local scale (`PatchConfig.local_scale`).
    "patch-plain": PatchConfig(local_scale=0),
    "patch-notile": PatchConfig(tiling="off"),
    "patch-tiled": PatchConfig(tiling="on"),
    "patch-ensemble": PatchConfig(projection="random"),  # patch features from efficientnet_lite0 and mobilenet_v2 together (`Ensemble`)
    "patch-stride4": PatchConfig(projection="random"),  # efficientnet_lite0's stride-4 map beside its stride-8 one (`Stride4`)
    "patch-reweight9": PatchConfig(reweight_k=9),
    "patch-neighbourhood1": PatchConfig(neighbourhood=1),
    "patch-coreset5": PatchConfig(coreset_ratio=0.05),
    "patch-coreset10": PatchConfig(coreset_ratio=0.1),
    "patch-unnormalised": PatchConfig(normalise=False),
    # The recipe before December 2026: both scales projected to 128-d each by a seeded Gaussian. And
    # the backbone's own channels unnormalised, so the louder scale weighs more ("none").
    "patch-random": PatchConfig(projection="random"),
    "patch-none": PatchConfig(projection="none"),
    # The patch recipe of the issue-13 held-out figures (before December 2026): 256-d seeded projection,
    # plain distances, every image squashed to one square.
    "patch-earlier": PatchConfig(projection="random", local_scale=0, tiling="off"),
    # Every image cut at its own pixel scale (input above 224 px where an image is larger): ELPV's
    # 300 px cells as 4 tiles. (`auto`'s one row with the aspect kept was this suite's `patch-aspect`.)
    "patch-native": PatchConfig(tiling="on"),
}
# `indexing.tiling.ONE_ROW` for the tiling-scale levers: short sides below this many tiles are scaled to one.
TILE_SCALE = {"patch-native": 0.0}


@contextmanager
def tile_scale(mode: str):
    """The tiling-scale lever `mode` names, for the duration (the product's rule elsewhere)."""
    from indexing import tiling

    kept = tiling.ONE_ROW
    tiling.ONE_ROW = TILE_SCALE.get(mode, kept)
    try:
        yield
    finally:
        tiling.ONE_ROW = kept


class Ensemble:
    """Two backbones as one for patch features (the issue's "ensemble of the two offline backbones"):
    each one's stride-8 and stride-16 maps are L2-normalised per position, so neither network's
    activation scale dominates, and concatenated along channels (same 224 px input, same grids).
    Not a product backbone: a verdict would pay both forward passes."""

    def __init__(self, first, second) -> None:
        self.first, self.second = first, second
        self.input_size = first.input_size
        self.name = f"{first.name}+{second.name}"
        self.map_channels = None  # measured with the seeded projection to 256-d (its SUITE_MODES recipe)

    def feature_maps(self, images, batch_size: int = 32) -> FeatureMaps:
        import torch
        import torch.nn.functional as F

        a, b = self.first.feature_maps(images, batch_size), self.second.feature_maps(images, batch_size)
        return FeatureMaps(*(torch.cat([F.normalize(x, dim=1), F.normalize(y, dim=1)], dim=1) for x, y in zip(a, b)))


class Stride4:
    """EfficientNet-Lite0 with its stride-4 map beside the stride-8 one (the issue's "stride-4 features
    beside stride 8 and 16"): the stride-4 block output is averaged over 2 x 2 onto the stride-8 grid,
    and each map is L2-normalised per position before they are concatenated, so the finer, lower-level
    features join each patch vector without changing the grid, the bank or the search.
    Not a product backbone: it measures whether those features win on the suite."""

    def __init__(self, backbone) -> None:
        self._backbone = backbone
        self.input_size, self.name = backbone.input_size, f"{backbone.name}+stride4"
        self.map_channels = None  # measured with the seeded projection to 256-d (its SUITE_MODES recipe)
        encoder = backbone._encoder
        total, self._tap4 = encoder.model._conv_stem.stride[0], None
        for index, block in enumerate(encoder.model._blocks):
            total *= block._depthwise_conv.stride[0]
            if total == 4:
                self._tap4 = index
        assert self._tap4 is not None, "no stride-4 block"

    def feature_maps(self, images, batch_size: int = 32) -> FeatureMaps:
        import torch
        import torch.nn.functional as F

        encoder, parts8, parts16 = self._backbone._encoder, [], []
        for start in range(0, len(images), batch_size):
            x = self._backbone._input(images[start : start + batch_size])
            with torch.inference_mode():
                x = encoder._stem(x)
                for index, block in enumerate(encoder.model._blocks[: encoder._tap16 + 1]):
                    x = block(x)
                    if index == self._tap4:
                        map4 = x
                    if index == encoder._tap8:
                        map8 = x
                fine = torch.cat([F.normalize(F.avg_pool2d(map4, 2), dim=1), F.normalize(map8, dim=1)], dim=1)
                parts8.append(fine.float().cpu())
                parts16.append(x.float().cpu())
        return FeatureMaps(torch.cat(parts8), torch.cat(parts16))


class MapCache:
    """A backbone whose feature maps are remembered by image content (float32, exact), so the patch
    modes of one run share one backbone pass per image; ELPV mono and poly reuse combined's cells."""

    def __init__(self, backbone) -> None:
        self._backbone = backbone
        self._maps: dict[bytes, tuple] = {}

    def __getattr__(self, name: str):
        return getattr(self._backbone, name)

    def feature_maps(self, images, batch_size: int = 32) -> FeatureMaps:
        import hashlib

        import torch

        keys = [hashlib.blake2b(i.tobytes() + repr((i.size, i.mode)).encode(), digest_size=16).digest() for i in images]
        missing = [n for n, key in enumerate(keys) if key not in self._maps]
        if missing:
            fresh = self._backbone.feature_maps([images[n] for n in missing], batch_size=batch_size)
            for j, n in enumerate(missing):
                self._maps[keys[n]] = (fresh.stride8[j].clone(), fresh.stride16[j].clone())
        if not keys:
            return self._backbone.feature_maps([], batch_size=batch_size)
        return FeatureMaps(torch.stack([self._maps[k][0] for k in keys]), torch.stack([self._maps[k][1] for k in keys]))


def run_suite(names: list[str], backbone_name: str, modes: list[str], *, fresh: bool,
              seeds: tuple[int, ...] = (0,)) -> list[dict]:
    """Rows of every set and mode; patch modes once per recipe seed, with a mean row when there are several."""
    backbone = load_backbone(backbone_name)
    shared = sum(len(seeds) if m.startswith("patch") else m.startswith(("positional", "global-")) for m in modes) > 1
    patch_backbone = MapCache(backbone) if shared else backbone
    rows: list[dict] = []
    # The lever backbones, built on first use and shared by every seed, so their maps are computed once.
    levers = {"patch-stride4": lambda: MapCache(Stride4(backbone)),
              "patch-ensemble": lambda: MapCache(Ensemble(backbone, load_backbone("mobilenet_v2")))}
    for name in names:
        data, lever_backbones = None, {}  # per set: the maps of one set at a time are held
        for mode in modes:
            config = SUITE_MODES[mode]
            if mode == "patch-notile":
                # Only where it differs from the default: sets the default tiles.
                data = data or DATASETS[name]()
                from indexing.tiling import layout_for

                if layout_for(decode(data.train[0]), backbone.input_size, "auto") is None:
                    continue
            per_seed = []
            for seed in (seeds if config is not None else (None,)):
                chosen = config if seed is None else replace(config, seed=seed).for_backbone(backbone.map_channels)
                key = f"{name}-{backbone_name}-{mode}-" + ("" if chosen is None else _config_key(chosen))

                def compute(mode=mode, config=chosen):
                    nonlocal data
                    data = data or DATASETS[name]()
                    started = time.perf_counter()
                    if mode.startswith("positional"):
                        out = suite_positional(name, data, patch_backbone, mode)
                    elif mode.startswith("fused"):
                        out = suite_fused(name, data, backbone, config, mode)
                    elif mode == "global-levels":
                        out = suite_global_levels(name, data, backbone, patch_backbone)
                    elif config is None:
                        out = [suite_global(name, data, backbone)]
                    elif mode in levers:
                        if mode not in lever_backbones:
                            lever_backbones[mode] = levers[mode]()
                        out = suite_patch(name, data, lever_backbones[mode], config, mode)
                    else:
                        with tile_scale(mode):
                            out = suite_patch(name, data, patch_backbone, config, mode)
                    which = mode if config is None or config.seed == 0 else f"{mode} [seed {config.seed}]"
                    print(f"  {which} on {name}: {time.perf_counter() - started:.0f} s, ROC-AUC {out[0]['roc_auc']:.3f}",
                          file=sys.stderr, flush=True)
                    return {"rows": out}

                found = _cached(key, fresh, compute)["rows"]
                for row in found:
                    row["backbone"] = backbone_name
                per_seed.append((seed, found))
            rows += per_seed[0][1] if len(per_seed) == 1 else _seed_rows(per_seed)
    return rows


def _seed_rows(per_seed: list[tuple[int, list[dict]]]) -> list[dict]:
    """The rows of several recipe seeds, each labelled with its seed, and a row of their means under the
    mode's own label (what the anchor comparison reads), its image ROC-AUC per seed kept beside."""
    out = []
    for seed, found in per_seed:
        for row in found:
            base, sep, rest = row["mode"].partition(" (")
            out.append(row | {"mode": f"{base} [seed {seed}]" + (sep + rest if sep else "")})
    means = []
    for rank in range(min(len(found) for _, found in per_seed)):  # the mode's row, then its top-k and smoothed rows
        means.append(suite.mean_row([found[rank] for _, found in per_seed], drop=("scores", "reference")))
    return means + out


# Score fusions measured beside the modes: each mode's score standardised by its nominal images' scores
# (mean and standard deviation of the reference, never the test split), then averaged. A mode ending in "?" is
# fused only where its row finds the set's nominal images aligned (`aligned_share`, `ALIGNED_SHARE`) and the first
# mode scores them whole (per-position statistics of a squashed image beside tiles would cost a verdict a second
# backbone pass); elsewhere the fusion is of the other modes.
FUSIONS = (("patch", "global"), ("patch", "positional-rank32-batches?", "global"),
           ("patch", "positional"), ("patch", "positional", "global"),
           ("patch", "positional-balanced", "global"), ("patch", "positional-diag", "global"),
           ("patch", "positional-rank16", "global"), ("patch", "positional-rank32", "global"),
           ("patch", "positional-rank32-batches", "global"), ("patch", "positional-raw", "global"),
           ("patch", "positional-raw-rank32-batches", "global"))


def _scored_by_set(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """set -> mode label (without " (tiled)") -> the row, for the rows that keep their scores."""
    by_set: dict[str, dict[str, dict]] = {}
    for r in rows:
        if "scores" in r:
            by_set.setdefault(r["set"], {})[r["mode"].split(" (")[0]] = r
    return by_set


def fused_rows(rows: list[dict]) -> list[dict]:
    """A row per set and fusion whose modes all ran in this suite (same test images, same order).

    Where the patch modes ran once per recipe seed, each seed's rows are fused with the
    seedless modes' and the fusion's row is the mean over seeds (each seed's figure beside).
    """
    import re

    out = []
    for name, modes in _scored_by_set(rows).items():
        data = None
        seeds = sorted({int(m) for label in modes for m in re.findall(r"\[seed (\d+)\]", label)}) or [None]
        for fusion in FUSIONS:
            gated = [m[:-1] for m in fusion if m.endswith("?")]
            first = next((modes[label] for label in modes if label.split(" [")[0] == fusion[0]), None)
            if first is None or any(m not in modes for m in gated):
                continue
            fused = [m for m in fusion if not m.endswith("?")] + [
                m for m in gated if not first["tiled"] and modes[m].get("aligned_share", 0.0) >= ALIGNED_SHARE]
            per_seed = []
            for seed in seeds:
                labels = [m if seed is None or f"{m} [seed {seed}]" not in modes else f"{m} [seed {seed}]" for m in fused]
                if not all(label in modes for label in labels):
                    continue
                data = data or DATASETS[name]()
                is_fail = np.array([t.is_fail for t in data.test])
                standardised = []
                for label in labels:
                    reference = np.asarray(modes[label]["reference"])
                    standardised.append((np.asarray(modes[label]["scores"]) - reference.mean()) / max(reference.std(), 1e-12))
                per_seed.append(compute_metrics(is_fail, np.mean(standardised, axis=0)))
            if not per_seed:
                continue
            row = _row(name, "+".join(fusion), data, per_seed[0], None, None, None, None, None, tiled=first["tiled"])
            if gated:
                row["fused"] = "+".join(fused)
            if len(per_seed) > 1:
                for field, attribute in (("roc_auc", "roc_auc"), ("ap", "average_precision"), ("f1_max", "f1_max")):
                    row[field] = float(np.mean([getattr(m, attribute) for m in per_seed]))
                row["seed_roc_aucs"] = [m.roc_auc for m in per_seed]
            out.append(row)
    return out


# The local scale's variants, levers beside the product's (`PatchConfig.local_scale`: the mean leave-one-out
# score of the 20 nominal images named for the worst patch, the whole ratio), computed from the plain rows
# (`patch-plain`): ("named", k, power) divides by the k named images' mean to that power; ("global", k, power)
# takes the k nominal images nearest by the pooled embedding (the global mode's kNN) instead.
LOCAL_K = 50
LOCAL_VARIANTS = (("named", 10, 1.0), ("named", 50, 1.0), ("global", 10, 1.0), ("global", 10, 0.5), ("global", 20, 0.5))


def local_rows(rows: list[dict]) -> list[dict]:
    """A row per set and local-scale variant (`LOCAL_VARIANTS`) where `patch-plain` (each seed) and global ran in
    this suite."""
    import re

    out = []
    for name, modes in _scored_by_set(rows).items():
        near = modes.get("global")
        patch = [r for label, r in modes.items() if re.fullmatch(r"patch-plain( \[seed \d+\])?", label) and "named" in r]
        if near is None or "near" not in near or not patch:
            continue
        if len(patch) > 1:
            patch = [r for r in patch if "[seed" in r["mode"]]
        data = DATASETS[name]()
        is_fail = np.array([t.is_fail for t in data.test])
        for source, k, power in LOCAL_VARIANTS:
            per_seed = []
            for r in patch:
                reference = dict(zip(r["reference_ids"], r["reference"]))
                fallback = float(np.mean(r["reference"]))
                nearest = ([[near["train_ids"][j] for j in row[:k]] for row in near["near"]] if source == "global"
                           else [ids[:k] for ids in r["named"]])
                scale = np.array([np.mean([reference[i] for i in ids if i in reference] or [fallback]) for ids in nearest])
                per_seed.append(compute_metrics(is_fail, np.asarray(r["scores"]) / np.maximum(scale, 1e-12) ** power))
            label = f"{source} {k}" + ("" if power == 1.0 else f", power {power:g}")
            row = _row(name, f"patch-plain, local scale ({label})", data, per_seed[0], None, None, None, None, None,
                       tiled=patch[0]["tiled"])
            for field, attribute in (("roc_auc", "roc_auc"), ("ap", "average_precision"), ("f1_max", "f1_max")):
                row[field] = float(np.mean([getattr(m, attribute) for m in per_seed]))
            row["seed_roc_aucs"] = [m.roc_auc for m in per_seed]
            out.append(row)
    return out


def _config_key(config: PatchConfig) -> str:
    import hashlib

    recipe = config.to_dict()
    if not recipe["local_scale"]:
        del recipe["local_scale"]  # plain distances hash as before the field existed: their cached rows still hold
    if recipe["neighbourhood"] == 3:
        del recipe["neighbourhood"]  # likewise the 3 x 3 neighbourhood every recipe had before it was a field
    if recipe["aggregation"] == "box":
        del recipe["aggregation"]  # and the box it averaged with
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_suite(rows: list[dict], anchors: list[dict], default_mode: str) -> None:
    lacking = suite.missing()
    print(f"\nsuite: {len(dict.fromkeys(r['set'] for r in rows))} sets"
          + (f" (not present: {', '.join(lacking)}; set {suite.BENCH_DATA_VARIABLE})" if lacking else ""))
    cap = next((a for a in anchors), None)
    if anchors:
        print(f"anomalib 2.7.0 rows: same backbone weights, input and split; PatchCore fit on at most "
              f"{cap.get('cap', 80)} seeded training images where a set is larger; PaDiM on all")
    print("| set | method | image ROC-AUC | AP | F1-max | pixel ROC-AUC | PRO | verdict ms/image | fit s "
          "| bank bytes / nominal image | train | test PASS / FAIL |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    by_set: dict[str, list[dict]] = {}
    for r in rows:
        by_set.setdefault(r["set"], []).append(r)
    for a in anchors:
        by_set.setdefault(a["set"], [])
    for name, mine in by_set.items():
        for r in mine:
            star = " (default)" if r["mode"].split(" (")[0] == default_mode else ""
            star += f": {r['fused']}" if r.get("fused") else ""  # what a gated fusion fused on this set
            pixels = "" if not r.get("pixel_images") or r["pixel_images"] >= r["n_test_pass"] + r["n_test_fail"] else \
                f" ({r['pixel_images']} images)"
            size = "-" if r["bytes_per_nominal_image"] is None else f"{r['bytes_per_nominal_image']:,.0f}"
            print(f"| {name} | Nominal {r['mode']}{star} | {_f(r['roc_auc'])}{suite.spread(r, 'seeds')} | {_f(r['ap'])} | {_f(r['f1_max'])} "
                  f"| {_f(r['pixel_roc_auc'])}{pixels} | {_f(r['pixel_pro'])} | {_f(r['ms_per_image'], 0)} "
                  f"| {_f(r['fit_s'], 0)} | {size} | {r['n_train']} | {r['n_test_pass']} / {r['n_test_fail']} |")
        for a in (a for a in anchors if a["set"] == name):
            used = f" ({a['n_train_used']} train)" if a["n_train_used"] < a["n_train"] else ""
            print(f"| {name} | anomalib {a['model']}{used} | {_f(a['roc_auc'])}{suite.spread(a, 'samples')} | {_f(a['ap'])} | {_f(a['f1_max'])} "
                  f"| {_f(a['pixel_roc_auc'])} | {_f(a['pixel_pro'])} | {_f(a['ms_per_image'], 0)} | {_f(a['fit_s'], 0)} "
                  f"| - | {a['n_train']} | - |")
    if anchors:
        for mode in dict.fromkeys([default_mode, "global", "patch"]):
            label = f"Nominal {mode}" + (" (the default)" if mode == default_mode else "")
            print(f"\n{label} against the best anchor, per set (image ROC-AUC; pixel ROC-AUC against PaDiM):")
            for name, mine in by_set.items():
                row = next((r for r in mine if r["mode"].split(" (")[0] == mode), None)
                theirs = [a for a in anchors if a["set"] == name]
                if row is None or not theirs:
                    continue
                best = max(theirs, key=lambda a: a["roc_auc"])
                padim = next((a for a in theirs if a["model"] == "padim"), None)
                verdict = "at or above" if row["roc_auc"] >= best["roc_auc"] - 5e-4 else "BELOW"
                line = f"  {name}: {row['roc_auc']:.3f} vs {best['model']} {best['roc_auc']:.3f} ({verdict})"
                if padim and padim.get("pixel_roc_auc") is not None and row.get("pixel_roc_auc") is not None:
                    pv = "at or above" if row["pixel_roc_auc"] >= padim["pixel_roc_auc"] - 5e-4 else "BELOW"
                    line += f"; pixel {row['pixel_roc_auc']:.3f} vs PaDiM {padim['pixel_roc_auc']:.3f} ({pv})"
                print(line)


def default_mode() -> str:
    """The scoring a setting created without `scoring` gets."""
    from indexing.backbones import DEFAULT_BACKBONE, map_channels
    from indexing.settings import default_scoring

    return default_scoring(map_channels(DEFAULT_BACKBONE))


def print_timing(t: dict, patch: str = "patch") -> None:
    print(f"\nverdict time (median, modes in turn), batch 1, {t['dataset']} ({t['n_train']} nominal images, "
          f"{t['bank_points']} bank patches), "
          f"{t['backbone']}: {patch} {t['patch_ms']:.1f} ms, global {t['global_ms']:.1f} ms, "
          f"ratio {t['ratio']:.2f}x (target <= 2x); with a heat map (full search) {t['patch_heatmap_ms']:.1f} ms; "
          f"service indexing (fused: bank and positional statistics) {t['index_s']:.0f} s")
    if "fused_ms" in t:
        print(f"  {t['fused']} {t['fused_ms']:.1f} ms, ratio to global {t['fused_ratio']:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
