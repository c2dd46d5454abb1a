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

- **Embedding shift**: the distance from the mean global embedding of the window's
  verdicts to the centroid of the active version's nominal embeddings, in standard
  errors: ||mean(window) - c|| / sqrt(s2 * (1/n + 1/N)), where s2 is the nominal
  embeddings' total variance (mean squared distance to c, N - 1 denominator) and n, N
  the window and nominal counts. If the window's images were drawn like the nominal
  ones, its expected square is 1, so about 1 is normal whatever the backbone, the set
  or the window size; it grows with sqrt(n) once the look changes (lighting, focus,
  material), even while the scores still pass. Measured on the Hazelnut Toy good images
  (efficientnet_lite0, 2000 random splits into 20 nominal and 14 window images): median
  0.97, 99.9th percentile 1.57, largest 1.63; the same 14 images darkened to 45% give
  3.9, blurred (Gaussian, radius 4) 2.8. Its tail is that light because embeddings
  vary in many directions at once; along one direction only it would be |N(0, 1)|,
  which still passes 2 in 5% and 3 in 0.3% of windows. The vectors come from `RecentEmbeddings`:
  this process's memory, fed by the verdict hook (the history file stores no vectors),
  so after a restart, or for verdicts another process gave, it waits for `min_window`
  verdicts again. Global scoring only: patch scoring computes no global embedding.

State (the worst of the signals; thresholds `Thresholds`, documented in the README):

| signal | warn | alarm |
| --- | --- | --- |
| KS p-value | < 0.01 | < 0.001 |
| PSI (only from `PSI_MIN_WINDOW` verdicts: below that PSI is biased upward by about (bins-1)(1/n+1/m)) | >= 0.1 | >= 0.25 |
| FAIL-rate binomial p-value (more FAILs than predicted) | < 0.01 | < 0.001 |
| embedding shift (standard errors; from `min_window` embeddings) | >= 2 | >= 3 |

Fewer than `min_window` verdicts in the window: state ok, `enough_data` false.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from indexing.service import NominalService
    from indexing.verdicts import Verdict

State = Literal["ok", "warn", "alarm"]
_RANK = {"ok": 0, "warn": 1, "alarm": 2}
PSI_MIN_WINDOW = 100
PSI_FLOOR = 1e-4
CENTROID_SAMPLE = 20_000  # nominal vectors a centroid is computed from at most (a random sample: ids are hashes)
REFRESH_SHARE = 0.05  # a cached centroid serves until the version's image count moves by more than this share


@dataclass(frozen=True)
class Thresholds:
    ks_p_warn: float = 0.01
    ks_p_alarm: float = 0.001
    psi_warn: float = 0.1
    psi_alarm: float = 0.25
    fail_p_warn: float = 0.01
    fail_p_alarm: float = 0.001
    embedding_shift_warn: float = 2.0
    embedding_shift_alarm: float = 3.0
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
    embedding_shift: float | None = None
    embedding_window: int = 0
    reasons: list[str] = field(default_factory=list)
    advice: str | None = None
    computed_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Centroid:
    """The nominal embeddings' mean `vector`, total variance `spread` (N - 1 denominator) and count."""

    vector: np.ndarray
    spread: float
    count: int

    @classmethod
    def of(cls, batches: "Iterable[np.ndarray]") -> "Centroid | None":
        """From vectors in batches (one batch in memory at a time); None for fewer than two (no spread)."""
        total, squares, count = None, 0.0, 0
        for batch in batches:
            batch = np.asarray(batch, dtype=np.float64)
            if not len(batch):
                continue
            total = batch.sum(axis=0) if total is None else total + batch.sum(axis=0)
            squares += float((batch ** 2).sum())
            count += len(batch)
        if total is None or count < 2:
            return None
        centre = total / count
        spread = max(0.0, (squares - count * float(centre @ centre)) / (count - 1))
        return cls(vector=centre, spread=spread, count=count)


def embedding_shift(window: np.ndarray, centroid: Centroid) -> float:
    """Distance of the window's mean embedding to the nominal centroid, in standard errors (module docstring)."""
    n = len(window)
    distance = float(np.linalg.norm(np.asarray(window, dtype=np.float64).mean(axis=0) - centroid.vector))
    error = math.sqrt(centroid.spread * (1.0 / n + 1.0 / centroid.count))
    return distance / error if error > 0 else (0.0 if distance == 0 else math.inf)


class RecentEmbeddings:
    """The global embeddings of each setting's latest verdicts, in this process's memory.

    One window of at most `capacity` vectors per setting, for its latest collection
    version only (older versions' vectors are dropped when a new one answers), plus the
    nominal centroid of each version, computed once from at most `CENTROID_SAMPLE` of its
    vectors, read in batches. Appending is a copy of one vector
    under a lock (about a microsecond: `benchmarks/history.py` prints it). Thread-safe.
    """

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self._windows: dict[str, tuple[int | None, deque[tuple[float, np.ndarray]]]] = {}
        self._centroids: dict[str, tuple[int, Centroid | None]] = {}  # collection -> (its count then, centroid)
        self._lock = threading.Lock()

    def add(self, setting: str, version: int | None, verdicts: "Sequence[Verdict]", at: float) -> None:
        found = [(at, np.array(v.embedding, dtype=np.float32)) for v in verdicts if v.embedding is not None]
        if not found:
            return
        with self._lock:
            held = self._windows.get(setting)
            if held is None or held[0] != version:
                held = self._windows[setting] = (version, deque(maxlen=self.capacity))
            held[1].extend(found)

    def window(self, setting: str, version: int | None, *, last: int | None = None,
               since: float | None = None) -> np.ndarray:
        """The vectors of the latest `last` verdicts and/or those at or after `since`, oldest first; (0, 0) if none."""
        with self._lock:
            held = self._windows.get(setting)
            items = list(held[1]) if held is not None and held[0] == version else []
        if since is not None:
            items = [item for item in items if item[0] >= since]
        if last is not None:
            items = items[-last:] if last > 0 else []
        return np.stack([vector for _, vector in items]) if items else np.empty((0, 0), np.float32)

    def centroid(self, collection: str, count: int, compute: Callable[[], Iterable[np.ndarray]]) -> Centroid | None:
        """The nominal centroid of a version holding `count` images; `compute` gives its vectors in batches.

        Computed again only when the count has moved by more than `REFRESH_SHARE` since (a few
        images added by feedback hardly move a centroid, and each recompute reads the vectors).
        """
        with self._lock:
            held = self._centroids.get(collection)
        if held is not None and abs(count - held[0]) <= REFRESH_SHARE * max(held[0], 1):
            return held[1]
        found = Centroid.of(compute())
        with self._lock:
            self._centroids[collection] = (count, found)
        return found

    def forget(self, setting: str) -> None:
        with self._lock:
            self._windows.pop(setting, None)


class RecentVerdicts(Protocol):
    """What drift reads: `indexing.history.History` (which imports this module, so it is not named here)."""

    embeddings: RecentEmbeddings

    def recent(self, setting: str, *, last: int | None = None, since: float | None = None) -> list[Any]:
        """Recorded verdicts (`Inspection`: version, score, verdict, calibration_id), oldest first."""


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
    shift: float | None = None,
    shift_window: int = 0,
    limits: Thresholds = Thresholds(),
) -> DriftReport:
    """The drift report of a window of scores (and their verdicts) against reference scores.

    `shift` is the window's embedding shift (`embedding_shift`) over `shift_window` vectors;
    it counts toward the state from `limits.min_window` vectors.
    """
    window = window[np.isfinite(window)]
    reference = reference[np.isfinite(reference)]
    n, m = int(window.size), int(reference.size)
    base = dict(setting=setting, window=n, window_since=window_since, reference=m, calibration_id=calibration_id,
                threshold=threshold, mean_score=float(window.mean()) if n else None,
                reference_mean_score=float(reference.mean()) if m else None,
                embedding_shift=shift, embedding_window=shift_window)
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
    scores_moved = bool(reasons)  # KS, PSI or FAIL rate
    looks_moved = shift is not None and shift_window >= limits.min_window and shift >= limits.embedding_shift_warn
    if looks_moved:
        raise_to("alarm" if shift >= limits.embedding_shift_alarm else "warn",
                 f"the recent images look different from the nominal ones (mean embedding {shift:.1f} standard "
                 "errors from the nominal centroid)")
    advice = None
    if state != "ok":
        direction = "higher" if base["mean_score"] > base["reference_mean_score"] else "lower"
        found = [f"scores run {direction} than when the setting was calibrated"] if scores_moved else []
        found += ["the images look different from the nominal ones"] if looks_moved else []
        advice = (f"{' and '.join(found)}. Look at recent FAIL and near-threshold "
                  "images (GET .../inspections?verdict=FAIL): if the parts are good and only the look changed (lighting, "
                  "camera, a new material), re-index the setting with current PASS images (nominal reindex) and "
                  "calibrate again; if the parts are good and the look is the same, calibrate again; if they are "
                  "defective, the line has a problem, not the model.")
    return DriftReport(state=state, enough_data=True, ks_statistic=ks_stat, ks_p_value=ks_p, psi=value,
                       fail_rate=fail_rate, predicted_fail_rate=predicted, fail_rate_p_value=fail_p, reasons=reasons,
                       advice=advice, **base)


def compute_drift(
    service: "NominalService",
    history: RecentVerdicts,
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
    shift, vectors = None, history.embeddings.window(setting, version, last=last, since=since)
    if len(vectors) and status.active is not None:
        centroid = history.embeddings.centroid(status.active.collection, status.count,
                                               lambda: service.nominal_vectors(setting, limit=CENTROID_SAMPLE))
        shift = embedding_shift(vectors, centroid) if centroid is not None else None
    return assess(
        setting, np.asarray([r.score for r in rows], dtype=np.float64),
        # FAIL rate: only verdicts the calibration in use gave count against what it predicts.
        [r.verdict if calibration and r.calibration_id == calibration.id else "-" for r in rows], reference,
        threshold=calibration.threshold if calibration else None,
        calibration_id=calibration.id if calibration else None, window_since=since,
        shift=shift, shift_window=len(vectors) if shift is not None else 0, limits=limits,
    )


def state_number(state: str) -> int:
    """0 ok, 1 warn, 2 alarm: the value of the `nominal_drift_state` gauge."""
    return _RANK[state]


def finite_or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
