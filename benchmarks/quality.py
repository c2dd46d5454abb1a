"""Detection quality of each offline backbone x k on ELPV (mono, poly, combined) and Hazelnut Toy.

Train on PASS only; score the labelled test split; report image ROC-AUC, AP
(FAIL positive) and F1-max. Each dataset is embedded once per backbone and
every k is scored from the same embeddings with the product's own scoring
functions; one configuration is then re-run through the full service path
(embedded store, `NominalService.evaluate`) to show both give the same figure.

    python benchmarks/quality.py                       # the full table (about 5 minutes on 2 cores)
    python benchmarks/quality.py --datasets hazelnut   # a quick smoke run
    python benchmarks/quality.py --json results.json   # also keep the figures
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexing.backbones import load_backbone  # noqa: E402
from indexing.datasets import Dataset, load_dataset  # noqa: E402
from indexing.evaluation import compute_metrics  # noqa: E402
from indexing.images import decode  # noqa: E402
from indexing.scoring import exact_knn  # noqa: E402
from indexing.service import BackbonePool, NominalService  # noqa: E402
from indexing.store import EdgeStore  # noqa: E402

HAZELNUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hazelnut_toy"
DATASETS = {
    "elpv-mono": lambda: load_dataset("elpv", "elpv", subset="mono"),
    "elpv-poly": lambda: load_dataset("elpv", "elpv", subset="poly"),
    "elpv-combined": lambda: load_dataset("elpv", "elpv", subset="combined"),
    "hazelnut": lambda: load_dataset(HAZELNUT, "mvtec"),
}
BACKBONES = ["efficientnet_lite0", "mobilenet_v2"]
KS = [1, 3, 5]


def embed(backbone, images) -> np.ndarray:
    return backbone.embed([decode(i) for i in images], batch_size=32)


def global_scores(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    distances, _ = exact_knn(train, test, k)
    return distances.mean(axis=1)


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


def service_path(dataset_name: str, backbone: str, k: int) -> float:
    """ROC-AUC of one configuration through the product path: embedded store + NominalService.evaluate."""
    with tempfile.TemporaryDirectory() as scratch:
        store = EdgeStore(Path(scratch) / "store")
        try:
            service = NominalService(store, backbones=BackbonePool())
            service.put_setting("bench", backbone=backbone, k=k)
            result = service.evaluate(DATASETS[dataset_name](), setting="bench", out_dir=Path(scratch) / "report")
        finally:
            store.close()
    return float(result.metrics.roc_auc)


def print_table(rows: list[dict]) -> None:
    print("| dataset | backbone | scoring | k | ROC-AUC | AP | F1-max | train | test PASS | test FAIL |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['backbone']} | {r['scoring']} | {r['k']} | {r['roc_auc']:.3f} | {r['ap']:.3f} "
              f"| {r['f1_max']:.3f} | {r['n_train']} | {r['n_test_pass']} | {r['n_test_fail']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--ks", nargs="+", type=int, default=KS)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--no-check", action="store_true", help="skip the service-path cross-check")
    args = parser.parse_args()

    rows = run_grid(args.datasets, args.backbones, args.ks)
    print_table(rows)
    best = max((r for r in rows if r["dataset"] == "elpv-combined"), key=lambda r: r["roc_auc"], default=None)
    if best:
        print(f"\nbest on ELPV combined: {best['backbone']} k={best['k']} ROC-AUC {best['roc_auc']:.3f}")
    if not args.no_check:
        dataset, backbone, k = args.datasets[-1], args.backbones[0], args.ks[0]
        via_service = service_path(dataset, backbone, k)
        grid = next(r["roc_auc"] for r in rows if (r["dataset"], r["backbone"], r["k"]) == (dataset, backbone, k))
        print(f"service path check ({dataset}, {backbone}, k={k}): ROC-AUC {via_service:.4f} vs grid {grid:.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
