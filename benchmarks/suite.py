"""The visible benchmark suite: every labelled set present on this machine, by one name each.

ELPV (mono, poly, combined; from the installed elpv-dataset package) and Hazelnut Toy
(the test fixture) are always present. The four sets exported by
`../shared/datasets/export.py` (KolektorSDD, PIPED, AITEX, DeepPCB; MVTec layout) are
found under the folder named by `NOMINAL_BENCH_DATA` and included when present; they
are never part of the repository.

Both `benchmarks/quality.py` (Nominal) and `benchmarks/anchors.py` (anomalib) read
their sets from here, so both score exactly the same splits.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexing.datasets import Dataset, load_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAZELNUT = ROOT / "tests" / "fixtures" / "hazelnut_toy"
# The folder export.py wrote (holds kolektorsdd/, piped/, aitex/, deeppcb/).
BENCH_DATA_VARIABLE = "NOMINAL_BENCH_DATA"
EXPORTED = ("kolektorsdd", "piped", "aitex", "deeppcb")
# Where benchmarks keep what is slow to recompute (embeddings, anchor results); outside the repo.
CACHE_VARIABLE = "NOMINAL_BENCH_CACHE"

BUILTIN: dict[str, Callable[[], Dataset]] = {
    "elpv-mono": lambda: load_dataset("elpv", "elpv", subset="mono"),
    "elpv-poly": lambda: load_dataset("elpv", "elpv", subset="poly"),
    "elpv-combined": lambda: load_dataset("elpv", "elpv", subset="combined"),
    "hazelnut": lambda: load_dataset(HAZELNUT, "mvtec"),
}


# Stress sets for a kind of image the visible sets lack and a held-out set has (small parts in varying
# positions on a large background, where patch scoring once fell to 0.68 against global's 0.83): each image
# of a visible set pasted at a seeded random place on a plain canvas `PLACED_SCALE` times its size, its mask
# moved with it. Proxies built from real images, never a substitute for real sets; named "<set>-placed"
# and run only when asked for (`--datasets`), so the suite's own table is unchanged.
PLACED_SCALE = 2.0
PLACED_FROM = ("elpv-mono", "deeppcb", "kolektorsdd")
# Grey levels of noise on the canvas, so that no two background patches are identical.
PLACED_NOISE = 3.0


def bench_data() -> Path | None:
    value = os.environ.get(BENCH_DATA_VARIABLE)
    return Path(value) if value else None


def available() -> dict[str, Callable[[], Dataset]]:
    """Every set present: the built-in four, then each exported set found under NOMINAL_BENCH_DATA."""
    found = dict(BUILTIN)
    root = bench_data()
    for name in EXPORTED:
        if root is not None and (root / name / "train" / "good").is_dir():
            found[name] = lambda name=name: load_dataset(root / name, "mvtec")
    return found


def stress() -> dict[str, Callable[[], Dataset]]:
    """The placed stress sets (`PLACED_FROM`) whose source set is present, by name ("elpv-mono-placed")."""
    found = available()
    return {f"{name}-placed": (lambda name=name: placed(name, found[name])) for name in PLACED_FROM if name in found}


def placed(name: str, source: Callable[[], Dataset]) -> Dataset:
    """`name`'s images on canvases (`PLACED_SCALE`), in the MVTec layout under the cache; built once."""
    folder = cache_dir() / "placed" / f"{name}-x{PLACED_SCALE:g}"
    if not (folder / "complete").is_file():
        _write_placed(source(), folder)
    return load_dataset(folder, "mvtec")


def _write_placed(data: Dataset, folder: Path) -> None:
    import shutil
    import zlib

    import numpy as np
    from PIL import Image

    from indexing.images import decode

    shutil.rmtree(folder, ignore_errors=True)
    first = np.asarray(decode(data.train[0]))
    border = np.concatenate([first[0], first[-1], first[:, 0], first[:, -1]])
    fill = np.median(border, axis=0)  # one plain background for the whole set, as on one line

    def put(image, target: Path, mask_path: Path | None = None) -> None:
        pixels = np.asarray(decode(image))
        height, width = pixels.shape[:2]
        rng = np.random.default_rng(zlib.crc32(image.source.encode()))
        canvas_h, canvas_w = int(round(height * PLACED_SCALE)), int(round(width * PLACED_SCALE))
        canvas = fill + rng.normal(0.0, PLACED_NOISE, (canvas_h, canvas_w, 3))
        top, left = int(rng.integers(0, canvas_h - height + 1)), int(rng.integers(0, canvas_w - width + 1))
        canvas[top : top + height, left : left + width] = pixels
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(target)
        if mask_path is not None:
            with Image.open(mask_path) as opened:
                mask = np.asarray(opened.convert("L").resize((width, height), Image.Resampling.NEAREST))
            moved = np.zeros((canvas_h, canvas_w), np.uint8)
            moved[top : top + height, left : left + width] = mask
            shown = folder / "ground_truth" / target.parent.name / f"{target.stem}_mask.png"
            shown.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(moved).save(shown)

    for number, image in enumerate(data.train):
        put(image, folder / "train" / "good" / f"{number:04d}.png")
    for number, test in enumerate(data.test):
        # The MVTec layout's labels are its folders: "good" is PASS, any other folder a defect type.
        group = ("defect" if test.group in ("good", "pass") else test.group) if test.is_fail else "good"
        put(test.image, folder / "test" / group / f"{number:04d}.png", test.mask_path)
    (folder / "complete").write_text(f"{data.name} on canvases x{PLACED_SCALE:g}\n")


def missing() -> list[str]:
    """Exported sets not found (so a table can say what it lacks)."""
    return [name for name in EXPORTED if name not in available()]


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "nominal-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


# The figures a row of several runs (Nominal's recipe seeds, anomalib's PatchCore samples) averages.
MEAN_FIELDS = ("roc_auc", "ap", "f1_max", "pixel_roc_auc", "pixel_pro", "ms_per_image", "fit_s")


def mean_row(rows: list[dict], *, drop: tuple[str, ...] = ()) -> dict:
    """One row of several runs' rows: the first row's other fields (less `drop`), each of `MEAN_FIELDS` as
    the mean where every run has it (else None), and each run's image ROC-AUC kept as `seed_roc_aucs`."""
    mean = {k: v for k, v in rows[0].items() if k not in drop}
    for field in MEAN_FIELDS:
        values = [r[field] for r in rows if r.get(field) is not None]
        mean[field] = sum(values) / len(values) if values and len(values) == len(rows) else None
    mean["seed_roc_aucs"] = [r["roc_auc"] for r in rows]
    return mean


def spread(row: dict, runs: str) -> str:
    """Each run's image ROC-AUC, as " (mean of seeds: 0.952 / 0.959 / 0.958)", after a row of several runs'
    mean (`mean_row`); nothing after any other row."""
    found = row.get("seed_roc_aucs")
    return f" (mean of {runs}: {' / '.join(f'{v:.3f}' for v in found)})" if found else ""
