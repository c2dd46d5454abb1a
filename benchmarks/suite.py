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
