"""Image-level metrics of a scorer on labelled images, the way the field reports them.

FAIL is the positive class and a higher score is more anomalous, as everywhere in
Nominal. The threshold-free metrics (ROC AUC, average precision, best F1, FPR at
95% TPR) come from sklearn, as in PatchCore's `metrics.py`; the threshold metrics
use `indexing.calibration.apply_threshold`'s rule (FAIL when score >= threshold),
so an evaluation and a live verdict can never disagree about an image.

A metric that a set cannot define (AUC with only PASS images) is `None`, never a
made-up 0.5, and `Metrics.notes` says why.

Example:
    >>> m = compute_metrics([False, False, True], [0.1, 0.4, 0.9])
    >>> m.roc_auc, m.threshold, m.confusion
    (1.0, 0.9, {'tp': 1, 'fp': 0, 'tn': 2, 'fn': 0})
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from indexing.calibration import Labels, Scores, confusion_at, f1_max_threshold, rates
from indexing.errors import NoImages

# The operating point the out-of-distribution literature reports a false-alarm rate at.
TPR_FOR_FPR = 0.95


@dataclass(frozen=True)
class Metrics:
    """Metrics of one scored, labelled set; None where the set cannot define one.

    Attributes:
        roc_auc: area under the ROC curve; None unless both classes are present.
        average_precision: sklearn's average precision (area under the PR curve,
            step-wise); None unless both classes are present.
        f1_max: best F1 over all thresholds; None without FAIL images.
        threshold_f1_max: the threshold reaching `f1_max` (lowest on ties).
        precision: at `threshold`; None without FAIL images or without a threshold.
        recall: at `threshold`; same.
        balanced_accuracy: mean of TPR and TNR at `threshold`; needs both classes.
        fpr_at_95_tpr: lowest false-positive rate with TPR >= 0.95; needs both classes.
        confusion: ``{"tp", "fp", "tn", "fn"}`` at `threshold`; None without a threshold.
        n_pass: number of PASS images.
        n_fail: number of FAIL images.
        threshold: the threshold precision, recall, balanced accuracy, fpr and
            confusion are computed at; the F1-max one when none was given.
        fpr: false-positive rate (PASS images called FAIL) at `threshold`; needs PASS images.
        notes: why a metric is None, and caveats about how the threshold was chosen.
    """

    roc_auc: float | None
    average_precision: float | None
    f1_max: float | None
    threshold_f1_max: float | None
    precision: float | None
    recall: float | None
    balanced_accuracy: float | None
    fpr_at_95_tpr: float | None
    confusion: dict[str, int] | None
    n_pass: int
    n_fail: int
    threshold: float | None
    fpr: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def compute_metrics(
    is_fail: Labels,
    scores: Scores,
    threshold: float | None = None,
) -> Metrics:
    """Metrics of scores against labels.

    Args:
        is_fail: label per image, True = FAIL, shape (n,).
        scores: anomaly score per image, shape (n,); higher = more anomalous.
        threshold: where to compute the threshold metrics, normally a calibration's
            threshold from *other* images. None uses the F1-max threshold of this very
            set, which flatters the result; a note says so.

    Returns:
        The `Metrics`.

    Raises:
        NoImages: no scores at all.
        ValueError: lengths differ, or a score or the threshold is NaN or infinite.
    """
    truth, values = _validated(is_fail, scores)
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    n_fail = int(truth.sum())
    n_pass = int(truth.size - n_fail)
    both = n_pass > 0 and n_fail > 0
    notes: list[str] = []
    if n_fail == 0:
        notes.append(
            "no FAIL images: ROC AUC, average precision, F1, precision and recall are undefined; "
            "add labelled FAIL images to measure how well defects are caught"
        )
    if n_pass == 0:
        notes.append(
            "no PASS images: ROC AUC, average precision and false-positive rates are undefined; "
            "add labelled PASS images to measure false alarms"
        )

    f1_max, threshold_f1_max = f1_max_threshold(truth, values) if n_fail else (None, None)
    if threshold is None:
        threshold = threshold_f1_max
        if threshold is not None:
            notes.append(
                "threshold is the F1-max threshold of this same set, which flatters precision and recall; "
                "pass a threshold calibrated on other images for an honest estimate"
            )
    else:
        threshold = float(threshold)

    confusion = confusion_at(truth, values, threshold) if threshold is not None else None
    precision = recall = balanced_accuracy = fpr = None
    if confusion is not None:
        if n_fail:
            precision, recall, _ = rates(confusion)
        if n_pass:
            fpr = confusion["fp"] / n_pass
        if both:
            balanced_accuracy = 0.5 * (confusion["tp"] / n_fail + confusion["tn"] / n_pass)

    return Metrics(
        roc_auc=float(roc_auc_score(truth, values)) if both else None,
        average_precision=float(average_precision_score(truth, values)) if both else None,
        f1_max=f1_max,
        threshold_f1_max=threshold_f1_max,
        precision=precision,
        recall=recall,
        balanced_accuracy=balanced_accuracy,
        fpr_at_95_tpr=_fpr_at_tpr(truth, values, TPR_FOR_FPR) if both else None,
        confusion=confusion,
        n_pass=n_pass,
        n_fail=n_fail,
        threshold=threshold,
        fpr=fpr,
        notes=notes,
    )


def _fpr_at_tpr(truth: np.ndarray, values: np.ndarray, tpr_target: float) -> float:
    fpr, tpr, _ = roc_curve(truth.astype(int), values, drop_intermediate=False)
    # TPR reaches 1.0 at the last point, so the selection is never empty.
    return float(fpr[tpr >= tpr_target].min())


def _validated(is_fail: Labels, scores: Scores) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(is_fail, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 1 or values.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, one per image; got shapes {truth.shape} and {values.shape}")
    if truth.size != values.size:
        raise ValueError(f"{truth.size} labels but {values.size} scores: give one label per score")
    if values.size == 0:
        raise NoImages("no scored images to evaluate: score at least one labelled image")
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} score(s) are NaN or infinite: every image must be scored before evaluating")
    return truth, values


def wilson_interval(successes: int, trials: int, *, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); None without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def error_statistics(is_fail: Labels, scores: Scores, confusion: dict[str, int] | None) -> dict[str, object]:
    """The figures the metric-learning literature reports beside AP.

    Type I error (a PASS image called FAIL) and type II error (a FAIL image called PASS)
    at the threshold, each with its 95% Wilson interval; and the PASS and FAIL images'
    scores, which are their distances to the nominal set: intra-class (PASS to PASS)
    and inter-class (FAIL to PASS) distance statistics.
    """
    truth = np.asarray(is_fail, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)

    def summary(group: np.ndarray) -> dict[str, float] | None:
        if group.size == 0:
            return None
        q = np.quantile(group, [0.05, 0.5, 0.95])
        return {"n": int(group.size), "mean": float(group.mean()), "std": float(group.std()),
                "p05": float(q[0]), "median": float(q[1]), "p95": float(q[2])}

    out: dict[str, object] = {
        "intra_class_distance": summary(values[~truth]),
        "inter_class_distance": summary(values[truth]),
    }
    if confusion is not None:
        fp, tn, fn, tp = confusion["fp"], confusion["tn"], confusion["fn"], confusion["tp"]
        for name, errors, total in (("type_i_error", fp, fp + tn), ("type_ii_error", fn, fn + tp)):
            interval = wilson_interval(errors, total)
            out[name] = None if interval is None else {"rate": errors / total, "ci95": list(interval)}
    return out
