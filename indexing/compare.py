"""Which scorer separates a setting's labelled images best: a cross-validated comparison.

`nominal calibrate SETTING --pass ... --fail ... --compare` scores the calibration's
labelled images with every candidate scorer the setting can run (global kNN with k
of 1, 3, 5; where the setting keeps a patch bank, the largest patch distance and the
mean of the 3 and 10 largest), then, for each candidate, calibrates a threshold with
the calibration's policy on all folds but one and measures F1 and balanced accuracy
on the fold left out. Every candidate sees the same stratified folds, so the
comparison is paired. Only the calibration's labelled images are used: never an
evaluation test split.

The winner is the candidate with the best mean held-out F1 (ROC-AUC over all the
labelled images breaks ties); `margin` is how far ahead of the runner-up it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from indexing.calibration import Scores, calibrate, confusion_at, rates
from indexing.errors import InvalidCalibration

DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class ScorerResult:
    """One candidate's figures: ROC-AUC on all labelled images, and held-out F1 / balanced accuracy per fold."""

    name: str
    roc_auc: float
    f1_mean: float
    f1_std: float
    balanced_accuracy_mean: float
    f1_per_fold: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    """The candidates, best first, and which one wins by how much (held-out F1)."""

    policy: str
    folds: int
    n_pass: int
    n_fail: int
    results: list[ScorerResult]
    winner: str
    margin: float
    current: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Comparison":
        values = dict(data)
        values["results"] = [ScorerResult(**r) for r in values.get("results", [])]
        return cls(**values)


def compare_scorers(
    candidates: Mapping[str, tuple[Scores, Scores]],
    *,
    policy: str = "f1",
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    current: str | None = None,
) -> Comparison:
    """Cross-validate each candidate's threshold on the labelled images; see the module docstring.

    Args:
        candidates: name -> (PASS scores, FAIL scores), every candidate scoring the same
            images in the same order.
        policy: the threshold policy calibrated on each training fold (a FAIL-using one:
            "f1", "recall>=R", ...).
        folds: at most this many folds; fewer when a class has fewer images.
        seed: seeds the stratified fold assignment.
        current: the name of the scorer the setting uses now, recorded for the report.

    Raises:
        InvalidCalibration: no candidates, or fewer than 2 PASS or 2 FAIL images.
    """
    if not candidates:
        raise InvalidCalibration("no candidate scorers to compare")
    first_pass, first_fail = next(iter(candidates.values()))
    n_pass, n_fail = len(first_pass), len(first_fail)
    if n_pass < 2 or n_fail < 2:
        raise InvalidCalibration(
            f"comparing scorers needs at least 2 PASS and 2 FAIL labelled images, got {n_pass} and {n_fail}"
        )
    folds = int(min(folds, n_pass, n_fail))
    rng = np.random.default_rng(seed)
    pass_fold = rng.permutation(n_pass) % folds
    fail_fold = rng.permutation(n_fail) % folds
    results = []
    for name, (pass_scores, fail_scores) in candidates.items():
        passes = np.asarray(pass_scores, dtype=np.float64)
        fails = np.asarray(fail_scores, dtype=np.float64)
        if len(passes) != n_pass or len(fails) != n_fail:
            raise ValueError(f"candidate {name!r} scored {len(passes)} + {len(fails)} images, not {n_pass} + {n_fail}")
        f1s, balanced = [], []
        for fold in range(folds):
            threshold = calibrate(
                passes[pass_fold != fold], fails[fail_fold != fold], policy, backbone="-", collection="-"
            ).threshold
            held_pass, held_fail = passes[pass_fold == fold], fails[fail_fold == fold]
            truth = np.r_[np.zeros(len(held_pass), bool), np.ones(len(held_fail), bool)]
            confusion = confusion_at(truth, np.r_[held_pass, held_fail], threshold)
            f1s.append(rates(confusion)[2])
            balanced.append(0.5 * (confusion["tp"] / len(held_fail) + confusion["tn"] / len(held_pass)))
        truth = np.r_[np.zeros(n_pass, bool), np.ones(n_fail, bool)]
        results.append(ScorerResult(
            name=name, roc_auc=float(roc_auc_score(truth, np.r_[passes, fails])),
            f1_mean=float(np.mean(f1s)), f1_std=float(np.std(f1s)),
            balanced_accuracy_mean=float(np.mean(balanced)), f1_per_fold=[float(v) for v in f1s],
        ))
    results.sort(key=lambda r: (r.f1_mean, r.roc_auc), reverse=True)
    margin = results[0].f1_mean - results[1].f1_mean if len(results) > 1 else 0.0
    return Comparison(
        policy=policy, folds=folds, n_pass=n_pass, n_fail=n_fail, results=results,
        winner=results[0].name, margin=float(margin), current=current,
    )
