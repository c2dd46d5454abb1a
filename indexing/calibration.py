"""Thresholds from a labelled validation set: pure functions on arrays of scores.

A score is the kNN distance of an image to the PASS images of its collection, so a
higher score is more anomalous, and FAIL is the positive class. One rule turns a
score into a verdict everywhere (`apply_threshold`): **FAIL when score >= threshold**.
It is the rule sklearn's `precision_recall_curve` and `roc_curve` use for their
thresholds, so every threshold chosen here is an observed score and reproduces
exactly the point of the curve it was chosen from.

Policies (`parse_policy` gives the accepted text):

- ``f1``: the point of the precision-recall curve with the highest F1 (the lowest
  threshold on ties, as anomalib and PatchCore).
- ``precision>=P``: the most recall with precision >= P; among thresholds with that
  recall, the highest, so no false alarm is added for nothing. If P is reached
  nowhere: the highest precision reached, with a warning.
- ``recall>=R``: the most precision with recall >= R (precision is not monotone in
  the threshold, so this can be below the highest threshold with recall >= R, with
  both more precision and more recall); the highest threshold on ties.
- ``fpr<=F``: the most true-positive rate with false-positive rate <= F (ROC curve),
  then the least FPR. If only "flag nothing" meets F: a threshold above every
  score, with a warning.
- ``quantile:ALPHA`` (``quantile`` is ALPHA 0.01): the (1 - ALPHA) quantile of the
  PASS scores (numpy's default linear interpolation), which the caller computes
  leave-one-out so that a PASS image is not its own nearest neighbour. Needs no
  FAIL images.

Every policy but ``quantile`` needs FAIL images: asked of a validation set without
any, it is refused (`InvalidCalibration` naming the ``policy`` field), never quietly
replaced by another policy. Without a policy, `policy_for` picks ``f1`` when there
are FAIL images and ``quantile:0.01`` when there are none. "Uncalibrated" is `None` to
callers, never a threshold of 0.0.

A calibration that catches none of its FAIL images, or flags most of its PASS images,
is *degenerate* (`Calibration.degenerate`): it is recorded but never made live on its own.

Example:
    >>> cal = calibrate([0.1, 0.2, 0.3], [0.9, 0.25], "f1", backbone="b", collection="c")
    >>> cal.threshold, apply_threshold(0.95, cal.threshold)
    (0.25, True)
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from indexing.errors import InvalidCalibration

PolicyKind = Literal["f1", "precision", "recall", "fpr", "quantile"]
# One score or label per image, as a list or a 1-D array.
Scores = Sequence[float] | np.ndarray
Labels = Sequence[bool] | np.ndarray

DEFAULT_ALPHA = 0.01
# Enough points to draw the curve smoothly; a curve per distinct score would make a
# stored calibration grow with the validation set.
MAX_CURVE_POINTS = 200
# Below this many FAIL images one image moves recall by more than 10 points.
FEW_FAIL = 10

ACCEPTED_POLICIES = "f1, precision>=P, recall>=R, fpr<=F, quantile or quantile:ALPHA"

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_POLICY_PATTERNS: tuple[tuple[PolicyKind, re.Pattern[str]], ...] = (
    ("f1", re.compile(r"f1")),
    ("precision", re.compile(rf"precision\s*>=\s*{_NUMBER}")),
    ("recall", re.compile(rf"recall\s*>=\s*{_NUMBER}")),
    ("fpr", re.compile(rf"fpr\s*<=\s*{_NUMBER}")),
    ("quantile", re.compile(rf"quantile(?:\s*:\s*{_NUMBER})?")),
)


@dataclass(frozen=True)
class Policy:
    """How to choose a threshold: a kind and, except for ``f1``, a value in (0, 1)."""

    kind: PolicyKind
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("f1", "precision", "recall", "fpr", "quantile"):
            raise InvalidCalibration(f"unknown calibration policy kind {self.kind!r}: use {ACCEPTED_POLICIES}", field="policy")
        if self.kind == "f1":
            if self.value is not None:
                raise InvalidCalibration("policy f1 takes no value", field="policy")
        elif self.value is None or not 0.0 < float(self.value) < 1.0:
            raise InvalidCalibration(
                f"policy {self.kind} needs a value strictly between 0 and 1, got {self.value!r}", field="policy")

    @property
    def text(self) -> str:
        """Canonical text, which `parse_policy` maps back to an equal `Policy`."""
        if self.kind == "f1":
            return "f1"
        # repr is the shortest text that round-trips a float exactly.
        value = repr(float(self.value))  # type: ignore[arg-type]
        return {
            "precision": f"precision>={value}",
            "recall": f"recall>={value}",
            "fpr": f"fpr<={value}",
            "quantile": f"quantile:{value}",
        }[self.kind]

    def __str__(self) -> str:
        return self.text


def parse_policy(text: str | Policy) -> Policy:
    """Parse a policy written as text.

    Args:
        text: one of ``f1``, ``precision>=P``, ``recall>=R``, ``fpr<=F``, ``quantile``
            (ALPHA 0.01) or ``quantile:ALPHA``; case and spaces around the operator
            do not matter. A `Policy` is returned unchanged.

    Returns:
        The parsed `Policy`.

    Raises:
        InvalidCalibration: the text is none of the accepted forms, or its value is
            not strictly between 0 and 1.
    """
    if isinstance(text, Policy):
        return text
    if not isinstance(text, str):
        raise InvalidCalibration(f"calibration policy must be text, got {type(text).__name__}: use {ACCEPTED_POLICIES}", field="policy")
    normalised = text.strip().lower()
    for kind, pattern in _POLICY_PATTERNS:
        match = pattern.fullmatch(normalised)
        if match is None:
            continue
        if kind == "f1":
            return Policy("f1")
        raw = match.group(1)
        value = DEFAULT_ALPHA if raw is None else float(raw)
        if not 0.0 < value < 1.0:
            raise InvalidCalibration(
                f"calibration policy {text!r}: the value must be strictly between 0 and 1 (e.g. {kind} 0.99 or 0.01)", field="policy")
        return Policy(kind, value)
    raise InvalidCalibration(
        f"unknown calibration policy {text!r}: use {ACCEPTED_POLICIES}, "
        "with P, R, F and ALPHA strictly between 0 and 1 (e.g. precision>=0.99, quantile:0.01)", field="policy")


def apply_threshold(score: float, threshold: float) -> bool:
    """The verdict rule: True (FAIL) when ``score >= threshold``.

    A NaN score is FAIL: a score that cannot be compared must never pass a part.

    Raises:
        InvalidCalibration: the threshold is NaN (an uncalibrated setting is `None`
            and must be handled before this call).
    """
    if math.isnan(threshold):
        raise InvalidCalibration("threshold is NaN: calibrate the setting again")
    return bool(math.isnan(score) or score >= threshold)


def predict_fail(scores: Scores, threshold: float) -> np.ndarray:
    """`apply_threshold` over an array of scores: a boolean array, True = FAIL."""
    if math.isnan(threshold):
        raise InvalidCalibration("threshold is NaN: calibrate the setting again")
    values = np.asarray(scores, dtype=np.float64)
    return np.isnan(values) | (values >= threshold)


def confusion_at(is_fail: Labels, scores: Scores, threshold: float) -> dict[str, int]:
    """Counts ``{"tp", "fp", "tn", "fn"}`` at a threshold, FAIL being positive."""
    truth = np.asarray(is_fail, dtype=bool)
    predicted = predict_fail(scores, threshold)
    return {
        "tp": int(np.sum(truth & predicted)),
        "fp": int(np.sum(~truth & predicted)),
        "tn": int(np.sum(~truth & ~predicted)),
        "fn": int(np.sum(truth & ~predicted)),
    }


def rates(confusion: dict[str, int]) -> tuple[float, float, float]:
    """(precision, recall, F1) from counts; 0.0 where the ratio is 0/0, as sklearn's default."""
    tp, fp, fn = confusion["tp"], confusion["fp"], confusion["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return precision, recall, f1


def pr_points(is_fail: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold of every point of the PR curve that has a threshold.

    sklearn appends a final (precision 1, recall 0) point that no threshold
    reaches; it is dropped so the three arrays align. Thresholds increase.
    """
    precision, recall, thresholds = precision_recall_curve(is_fail.astype(int), scores)
    return precision[:-1], recall[:-1], thresholds


def f1_max_threshold(is_fail: Labels, scores: Scores) -> tuple[float, float]:
    """(highest F1, the threshold reaching it) over the PR curve; needs a FAIL score.

    Ties go to the lowest threshold (more recall), as anomalib and PatchCore do.
    """
    precision, recall, thresholds = pr_points(np.asarray(is_fail, dtype=bool), np.asarray(scores, dtype=np.float64))
    f1 = _f1(precision, recall)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


# `Calibration.scoring` of a calibration made with a trained scorer: "trained:<id>" (a metric projection of
# a global setting's embeddings) or "hybrid:<id>" (a DenseHybrid head over a patch setting's patches).
TRAINED_PREFIX = "trained:"
HYBRID_PREFIX = "hybrid:"
# ... and of a fused setting's scores: "fused:" and the scores it fuses ("fused:patch+positional+global",
# `indexing.fused.scorer_name`).
FUSED_PREFIX = "fused:"


def scoring_mode(scoring: str) -> str:
    """The setting's scoring mode a scorer belongs to."""
    if scoring.startswith(TRAINED_PREFIX):
        return "global"
    if scoring.startswith(HYBRID_PREFIX):
        return "patch"
    if scoring.startswith(FUSED_PREFIX):
        return "fused"
    return scoring


@dataclass(frozen=True)
class Calibration:
    """A threshold, how it was chosen, and how it did on the labelled data it came from.

    `backbone` (the backbone's identity) and `scoring` (the scorer: "global", "patch",
    "trained:<id>" or "hybrid:<id>" for a scorer trained on labelled defects, `indexing.training`) are
    recorded so that a calibration is never applied to other scores (`unfit_for`);
    `collection` says which collection its scores were searched in. The calibration in
    use names the scorer verdicts use: activating one made with a trained scorer
    switches that scorer on, activating a "global" one switches it off.
    """

    id: str
    policy: str
    threshold: float
    precision: float | None
    recall: float | None
    f1: float | None
    average_precision: float | None
    roc_auc: float | None
    confusion: dict[str, int]
    pr_curve: list[dict[str, float]]
    n_pass: int
    n_fail: int
    backbone: str
    collection: str
    created_at: str
    warnings: list[str] = field(default_factory=list)
    scoring: str = "global"
    # `indexing.compare.Comparison.to_dict()` when the calibration compared candidate scorers.
    comparison: dict[str, Any] | None = None
    # The recipe (`PatchConfig.to_dict`) of the patch bank its scores came from; None for global scores and
    # for calibrations recorded before it was kept (the service then reads the recipe `collection` recorded).
    patch_recipe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; `from_dict` rebuilds an equal `Calibration`."""
        return {
            "id": self.id,
            "policy": self.policy,
            "threshold": self.threshold,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "average_precision": self.average_precision,
            "roc_auc": self.roc_auc,
            "confusion": dict(self.confusion),
            "pr_curve": [dict(point) for point in self.pr_curve],
            "n_pass": self.n_pass,
            "n_fail": self.n_fail,
            "backbone": self.backbone,
            "collection": self.collection,
            "created_at": self.created_at,
            "warnings": list(self.warnings),
            "scoring": self.scoring,
            "comparison": self.comparison,
            "patch_recipe": self.patch_recipe,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        """Rebuild from `to_dict` output (e.g. after JSON); unknown keys are ignored.

        Raises:
            InvalidCalibration: a field is missing, or the threshold or policy is unusable.
        """
        required = (
            "id", "policy", "threshold", "confusion", "n_pass", "n_fail", "backbone", "collection", "created_at",
        )
        missing = [key for key in required if key not in d]
        if missing:
            raise InvalidCalibration(f"stored calibration lacks {', '.join(missing)}: calibrate the setting again")
        threshold = float(d["threshold"])
        if not math.isfinite(threshold):
            raise InvalidCalibration(f"stored calibration has threshold {threshold}: calibrate the setting again")
        return cls(
            id=str(d["id"]),
            policy=parse_policy(str(d["policy"])).text,
            threshold=threshold,
            precision=_optional_float(d.get("precision")),
            recall=_optional_float(d.get("recall")),
            f1=_optional_float(d.get("f1")),
            average_precision=_optional_float(d.get("average_precision")),
            roc_auc=_optional_float(d.get("roc_auc")),
            confusion={str(key): int(value) for key, value in d["confusion"].items()},
            pr_curve=[{str(key): float(value) for key, value in point.items()} for point in d.get("pr_curve", [])],
            n_pass=int(d["n_pass"]),
            n_fail=int(d["n_fail"]),
            backbone=str(d["backbone"]),
            collection=str(d["collection"]),
            created_at=str(d["created_at"]),
            warnings=[str(warning) for warning in d.get("warnings", [])],
            # Records from before `scoring` was stored: a patch bank's collection name says "__patch__".
            scoring=str(d.get("scoring") or ("patch" if "__patch__" in str(d["collection"]) else "global")),
            comparison=d.get("comparison"),
            patch_recipe=d.get("patch_recipe"),
        )

    def unfit_for(self, *, backbone: str, scoring: str) -> str | None:
        """Why this threshold cannot judge scores of `backbone` vectors in `scoring` mode, or None when it can.

        The one compatibility rule: a threshold is a distance on one backbone's vectors
        (its identity: name and weights file), and global and patch scores have different
        scales. Both are recorded on the calibration when it is made. A trained scorer
        projects a global setting's embeddings, so its calibration fits global mode; a
        trained DenseHybrid head scores a patch bank, so its calibration fits patch and fused mode.
        """
        if self.backbone != backbone:
            return f"calibration {self.id} was made on {self.backbone} vectors, not {backbone} vectors"
        made = scoring_mode(self.scoring)
        # A fused setting's trained head scores its patch bank, as a patch setting's does (`indexing.fused`).
        if made != scoring and not (made == "patch" and scoring == "fused" and self.trained_id is not None):
            return f"calibration {self.id} was made on {self.scoring} scores, not {scoring} scores"
        return None

    @property
    def trained_id(self) -> str | None:
        """The trained scorer this calibration was made with (and that verdicts use with it), or None."""
        for prefix in (TRAINED_PREFIX, HYBRID_PREFIX):
            if self.scoring.startswith(prefix):
                return self.scoring[len(prefix):]
        return None

    @property
    def degenerate(self) -> str | None:
        """Why this threshold should not go live on its own, or None when it is usable.

        It is degenerate when it catches none of its FAIL images, or flags more than half of
        its PASS images: a threshold that makes every verdict PASS, or most good parts FAIL.
        """
        c = self.confusion
        if self.n_fail and c["tp"] == 0:
            return f"it catches none of the {_count(self.n_fail, 'FAIL image')} it was calibrated on"
        if self.n_pass and c["fp"] * 2 > self.n_pass:
            return f"it flags {c['fp']} of the {self.n_pass} PASS images it was calibrated on as FAIL"
        return None


def calibrate(
    pass_scores: Scores,
    fail_scores: Scores,
    policy: str | Policy | None = None,
    *,
    backbone: str,
    collection: str,
    scoring: str = "global",
) -> Calibration:
    """Choose a threshold from the scores of labelled validation images.

    Args:
        pass_scores: scores of PASS images, shape (n_pass,), at least one. For the
            quantile policy these must be leave-one-out scores (each image scored
            against the others), or the PASS scores are all near 0.
        fail_scores: scores of FAIL images, shape (n_fail,); may be empty.
        policy: see `parse_policy`; None: the default of `policy_for`.
        backbone: backbone the scores came from, recorded.
        collection: collection the scores were searched in, recorded.
        scoring: the scorer ("global", "patch" or "trained:<id>"), recorded (see `Calibration.unfit_for`).

    Returns:
        The `Calibration`, with metrics at the chosen threshold. Precision, recall and
        F1 are None without FAIL images; average precision and ROC AUC too.

    Raises:
        InvalidCalibration: no PASS scores, a NaN or infinite score, a bad policy, or a
            policy that needs FAIL images given none.
    """
    passes = _as_scores(pass_scores, "PASS")
    fails = _as_scores(fail_scores, "FAIL")
    parsed = policy_for(policy, fails.size)
    if passes.size == 0:
        raise InvalidCalibration(
            "no PASS scores: calibration needs the leave-one-out scores of PASS images; index PASS images first"
        )
    warnings: list[str] = []
    if 0 < fails.size < FEW_FAIL and parsed.kind != "quantile":
        warnings.append(
            f"only {_count(fails.size, 'FAIL image')}: each one moves recall by {100 / fails.size:.0f} points; "
            "add labelled FAIL images for a steadier threshold"
        )

    is_fail = np.concatenate([np.zeros(passes.size, dtype=bool), np.ones(fails.size, dtype=bool)])
    scores = np.concatenate([passes, fails])
    threshold, policy_warnings = _choose(parsed, is_fail, scores, passes)
    warnings.extend(policy_warnings)

    confusion = confusion_at(is_fail, scores, threshold)
    has_fail = fails.size > 0
    precision, recall, f1 = rates(confusion) if has_fail else (None, None, None)
    return Calibration(
        id=uuid.uuid4().hex,
        policy=parsed.text,
        threshold=threshold,
        precision=precision,
        recall=recall,
        f1=f1,
        average_precision=float(average_precision_score(is_fail, scores)) if has_fail else None,
        roc_auc=float(roc_auc_score(is_fail, scores)) if has_fail else None,
        confusion=confusion,
        pr_curve=_thinned_curve(is_fail, scores, threshold) if has_fail else [],
        n_pass=int(passes.size),
        n_fail=int(fails.size),
        backbone=backbone,
        collection=collection,
        scoring=scoring,
        created_at=datetime.now(timezone.utc).isoformat(),
        warnings=warnings,
    )


def policy_for(policy: str | Policy | None, n_fail: int) -> Policy:
    """The policy a calibration with `n_fail` FAIL images uses.

    None gives the default: ``f1`` (max F1) with FAIL images, ``quantile:0.01`` without.

    Raises:
        InvalidCalibration: a malformed policy, or one that needs FAIL images given none
            (`field` "policy"); it is never swapped for another.
    """
    if policy is None:
        return Policy("f1") if n_fail else Policy("quantile", DEFAULT_ALPHA)
    parsed = parse_policy(policy)
    if n_fail == 0 and parsed.kind != "quantile":
        raise InvalidCalibration(
            f"policy {parsed.text} chooses a threshold on a precision-recall curve, which needs FAIL images, "
            f"and none were given: add labelled FAIL images, or use quantile:ALPHA (e.g. quantile:{DEFAULT_ALPHA}, "
            "the threshold that flags that share of PASS images)",
            field="policy",
        )
    return parsed


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _choose(policy: Policy, is_fail: np.ndarray, scores: np.ndarray, passes: np.ndarray) -> tuple[float, list[str]]:
    """Dispatch to the policy's chooser; every chooser returns (threshold, warnings)."""
    if policy.kind == "quantile":
        return _choose_quantile(passes, float(policy.value))  # type: ignore[arg-type]
    if policy.kind == "f1":
        return f1_max_threshold(is_fail, scores)[1], []
    if policy.kind == "precision":
        return _choose_precision(is_fail, scores, float(policy.value))  # type: ignore[arg-type]
    if policy.kind == "recall":
        return _choose_recall(is_fail, scores, float(policy.value))  # type: ignore[arg-type]
    return _choose_fpr(is_fail, scores, float(policy.value))  # type: ignore[arg-type]


def _choose_quantile(passes: np.ndarray, alpha: float) -> tuple[float, list[str]]:
    warnings = []
    if passes.size * alpha < 1:
        # With fewer than 1/alpha scores the quantile is an interpolation next to the
        # highest PASS score, so the false-alarm rate it promises is not measured.
        warnings.append(
            f"only {passes.size} PASS scores: a {100 * (1 - alpha):g}th percentile needs at least "
            f"{math.ceil(1 / alpha)} to be measured; the threshold sits near the highest PASS score. "
            "Index more PASS images for a false-alarm rate you can trust"
        )
    return float(np.quantile(passes, 1.0 - alpha)), warnings


def _choose_precision(is_fail: np.ndarray, scores: np.ndarray, target: float) -> tuple[float, list[str]]:
    precision, recall, thresholds = pr_points(is_fail, scores)
    feasible = np.flatnonzero(precision >= target)
    if feasible.size:
        # Most recall; among equal recall the highest threshold, which adds no false alarm.
        return float(thresholds[_best(feasible, recall, precision, thresholds)]), []
    best = _best(np.arange(thresholds.size), precision, recall, thresholds)
    return float(thresholds[best]), [
        f"precision>={target!r} is not reached on this validation set: using the highest precision "
        f"reached, {precision[best]:.4f} at recall {recall[best]:.4f}; add PASS images that score high "
        "or choose a lower precision target"
    ]


def _choose_recall(is_fail: np.ndarray, scores: np.ndarray, target: float) -> tuple[float, list[str]]:
    precision, recall, thresholds = pr_points(is_fail, scores)
    feasible = np.flatnonzero(recall >= target)
    if feasible.size:
        # Precision is not monotone in the threshold: a lower threshold can have both
        # more recall and more precision, so maximise precision rather than the threshold.
        return float(thresholds[_best(feasible, precision, thresholds)]), []
    # Unreachable while sklearn's curve starts at full recall; kept so a change there warns.
    best = _best(np.arange(thresholds.size), recall, precision, thresholds)
    return float(thresholds[best]), [
        f"recall>={target!r} is not reached on this validation set: using the highest recall, {recall[best]:.4f}"
    ]


def _choose_fpr(is_fail: np.ndarray, scores: np.ndarray, target: float) -> tuple[float, list[str]]:
    fpr, tpr, thresholds = roc_curve(is_fail.astype(int), scores, drop_intermediate=False)
    feasible = np.flatnonzero(fpr <= target)  # never empty: the first point flags nothing
    best = _best(feasible, tpr, -fpr, thresholds)
    if tpr[best] > 0:
        return float(thresholds[best]), []
    # Only "flag nothing" meets the target; the first point's threshold is +inf, which
    # JSON cannot hold, so use the next float above every score: it also flags nothing.
    above_all = float(np.nextafter(scores.max(), np.inf))
    return above_all, [
        f"fpr<={target!r} is met only by flagging no validation image: the threshold is above every "
        "score, so no FAIL image is caught; allow a higher false-positive rate or add PASS images"
    ]


def _best(candidates: np.ndarray, *keys: np.ndarray) -> int:
    """Index in `candidates` that maximises keys[0], then keys[1], ... (lexicographic)."""
    # np.lexsort sorts by its last key first, so pass the keys reversed.
    order = np.lexsort(tuple(key[candidates] for key in reversed(keys)))
    return int(candidates[order[-1]])


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    denominator = precision + recall
    return np.divide(2 * precision * recall, denominator, out=np.zeros_like(precision), where=denominator > 0)


def _thinned_curve(is_fail: np.ndarray, scores: np.ndarray, chosen: float) -> list[dict[str, float]]:
    """At most ~MAX_CURVE_POINTS PR points, evenly spaced, keeping both ends and the chosen one."""
    precision, recall, thresholds = pr_points(is_fail, scores)
    keep = set(np.linspace(0, thresholds.size - 1, min(thresholds.size, MAX_CURVE_POINTS)).round().astype(int).tolist())
    keep.update(np.flatnonzero(thresholds == chosen).tolist())
    return [
        {"recall": float(recall[i]), "precision": float(precision[i]), "threshold": float(thresholds[i])}
        for i in sorted(keep)
    ]


def _as_scores(values: Scores, label: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InvalidCalibration(f"{label} scores must be one score per image (1-D), got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        raise InvalidCalibration(
            f"{int(bad.sum())} {label} score(s) are NaN or infinite: every image must be scored against "
            "a non-empty collection before calibrating"
        )
    return array


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
