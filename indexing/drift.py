"""Score drift: is the line still producing what the calibration was made on?

The recent window of a setting's recorded verdicts (`indexing.history`: the last N,
or those of the last T minutes, answered from the active collection version) is
compared with the reference scores of the calibration in use (`indexing.conformal`:
the PASS scores its threshold was chosen from; without a calibration, the nominal
images' leave-one-out scores):

- **KS**: the two-sample Kolmogorov-Smirnov statistic and p-value (SciPy `ks_2samp`):
  is the window drawn from the reference distribution?
- **PSI**: the population stability index over the reference's deciles (fewer bins
  when the reference is small), sum((a - e) * ln(a / e)), proportions floored at 1e-4.
- **FAIL rate** against the rate the calibration predicts for good parts (the share
  of reference scores at or above the threshold, Laplace-smoothed so a threshold above
  every reference score predicts 1/(n+2), not 0), with a one-sided binomial p-value.

State (the worst of the signals; thresholds `Thresholds`, documented in the README):

| signal | warn | alarm |
| --- | --- | --- |
| KS p-value | < 0.01 | < 0.001 |
| PSI (only from `PSI_MIN_WINDOW` verdicts: below that PSI is biased upward by about (bins-1)(1/n+1/m)) | >= 0.1 | >= 0.25 |
| FAIL-rate binomial p-value (more FAILs than predicted) | < 0.01 | < 0.001 |

Fewer than `min_window` verdicts in the window: state ok, `enough_data` false.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from indexing.history import History
    from indexing.service import NominalService

State = Literal["ok", "warn", "alarm"]
_RANK = {"ok": 0, "warn": 1, "alarm": 2}
PSI_MIN_WINDOW = 100
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class Thresholds:
    ks_p_warn: float = 0.01
    ks_p_alarm: float = 0.001
    psi_warn: float = 0.1
    psi_alarm: float = 0.25
    fail_p_warn: float = 0.01
    fail_p_alarm: float = 0.001
    min_window: int = 10


@dataclass(frozen=True)
class DriftReport:
    setting: str
    state: State
    enough_data: bool
    window: int
    window_since: float | None
    reference: int
    calibration_id: str | None
    threshold: float | None
    ks_statistic: float | None
    ks_p_value: float | None
    psi: float | None
    fail_rate: float | None
    predicted_fail_rate: float | None
    fail_rate_p_value: float | None
    mean_score: float | None
    reference_mean_score: float | None
    reasons: list[str] = field(default_factory=list)
    advice: str | None = None
    computed_at: float = field(default_factory=time.time)


def psi(window: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of `window` against `reference`, over the reference's quantile bins."""
    bins = int(min(10, max(2, reference.size // 5)))
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1) / reference.size
    actual = np.bincount(np.searchsorted(edges, window, side="right"), minlength=edges.size + 1) / window.size
    expected, actual = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def assess(
    setting: str,
    window: np.ndarray,
    verdicts: list[str],
    reference: np.ndarray,
    *,
    threshold: float | None,
    calibration_id: str | None,
    window_since: float | None = None,
    limits: Thresholds = Thresholds(),
) -> DriftReport:
    """The drift report of a window of scores (and their verdicts) against reference scores."""
    window = window[np.isfinite(window)]
    reference = reference[np.isfinite(reference)]
    n, m = int(window.size), int(reference.size)
    base = dict(setting=setting, window=n, window_since=window_since, reference=m, calibration_id=calibration_id,
                threshold=threshold, mean_score=float(window.mean()) if n else None,
                reference_mean_score=float(reference.mean()) if m else None)
    if n < limits.min_window or m < 2:
        why = (f"{n} verdicts in the window, {limits.min_window} needed" if n < limits.min_window
               else "the calibration in use has fewer than 2 reference scores")
        return DriftReport(state="ok", enough_data=False, ks_statistic=None, ks_p_value=None, psi=None, fail_rate=None,
                           predicted_fail_rate=None, fail_rate_p_value=None, reasons=[why], **base)
    state: State = "ok"
    reasons: list[str] = []

    def raise_to(level: State, reason: str) -> None:
        nonlocal state
        reasons.append(f"{level}: {reason}")
        if _RANK[level] > _RANK[state]:
            state = level

    ks = stats.ks_2samp(window, reference)
    ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
    if ks_p < limits.ks_p_warn:
        raise_to("alarm" if ks_p < limits.ks_p_alarm else "warn",
                 f"the recent scores differ from the calibration's (KS {ks_stat:.2f}, p={ks_p:.2g})")
    value = psi(window, reference)
    if n >= PSI_MIN_WINDOW and value >= limits.psi_warn:
        raise_to("alarm" if value >= limits.psi_alarm else "warn", f"population stability index {value:.2f}")
    fail_rate = predicted = fail_p = None
    judged = [v for v in verdicts if v in ("PASS", "FAIL")]
    if threshold is not None and judged:
        fails = sum(v == "FAIL" for v in judged)
        fail_rate = fails / len(judged)
        predicted = (int(np.sum(reference >= threshold)) + 1) / (m + 2)
        fail_p = float(stats.binomtest(fails, len(judged), predicted, alternative="greater").pvalue)
        if fail_p < limits.fail_p_warn:
            raise_to("alarm" if fail_p < limits.fail_p_alarm else "warn",
                     f"FAIL rate {fail_rate:.1%} against {predicted:.1%} predicted for good parts (p={fail_p:.2g})")
    advice = None
    if state != "ok":
        direction = "higher" if base["mean_score"] > base["reference_mean_score"] else "lower"
        advice = (f"scores run {direction} than when the setting was calibrated. Look at recent FAIL and near-threshold "
                  "images (GET .../inspections?verdict=FAIL): if the parts are good and only the look changed (lighting, "
                  "camera, a new material), re-index the setting with current PASS images (nominal reindex) and "
                  "calibrate again; if the parts are good and the look is the same, calibrate again; if they are "
                  "defective, the line has a problem, not the model.")
    return DriftReport(state=state, enough_data=True, ks_statistic=ks_stat, ks_p_value=ks_p, psi=value,
                       fail_rate=fail_rate, predicted_fail_rate=predicted, fail_rate_p_value=fail_p, reasons=reasons,
                       advice=advice, **base)


def compute_drift(
    service: "NominalService",
    history: "History",
    setting: str,
    *,
    last: int | None = 200,
    minutes: float | None = None,
    limits: Thresholds = Thresholds(),
) -> DriftReport:
    """Drift of a setting's recent verdicts (the last `last`, and/or those of the last `minutes`).

    Only verdicts answered from the active collection version count: scores of another
    version (other nominal images, maybe another backbone) are not comparable.
    """
    status = service.status(setting)
    calibration = status.calibration
    # A setting with no nominal images yet has nothing to drift from: "not judged yet", not an error.
    reference = service.reference_scores(setting) if status.active and status.count else np.empty(0)
    since = None if minutes is None else time.time() - minutes * 60.0
    version = status.active.version if status.active else None
    rows = [r for r in history.recent(setting, last=last, since=since) if r.version == version and r.score is not None]
    return assess(
        setting, np.asarray([r.score for r in rows], dtype=np.float64),
        # FAIL rate: only verdicts the calibration in use gave count against what it predicts.
        [r.verdict if calibration and r.calibration_id == calibration.id else "-" for r in rows], reference,
        threshold=calibration.threshold if calibration else None,
        calibration_id=calibration.id if calibration else None, window_since=since, limits=limits,
    )


def state_number(state: str) -> int:
    """0 ok, 1 warn, 2 alarm: the value of the `nominal_drift_state` gauge."""
    return _RANK[state]


def finite_or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
