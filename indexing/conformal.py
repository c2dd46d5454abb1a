"""Conformal p-values: how unusual a score is among the scores good parts got.

A calibration keeps the PASS scores its threshold was chosen from (its *reference
scores*): the stored nominal images' leave-one-out scores when it was made from the
nominal set alone (`nominal calibrate SETTING`), or the scores of the PASS images it
was given. Every verdict then carries

    p_value = (1 + #{reference scores >= score}) / (n + 1)

the conformal p-value: if the part is good (exchangeable with the reference), the
chance that it scores at least this high is at most `p_value`. A p-value of 0.002
reads "about 1 good part in 500 scores this high". Adding one to numerator and
denominator makes it valid for any n and never 0. A NaN score gets the smallest
p-value, 1 / (n + 1), as it gets FAIL.

The reference scores are stored beside the calibration record (record kind
`calibration_reference`, same key), written before the calibration itself so a
calibration is never recorded without them; verdicts read them once per
calibration and process. Calibrations recorded before this existed have none: their
verdicts use the nominal images' leave-one-out scores, which the service computes
once per version (as for UNCALIBRATED verdicts).

Above `MAX_REFERENCE` scores, the stored reference is that many evenly spaced order
statistics of the sorted scores (p-values then resolve to 1 / MAX_REFERENCE).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from indexing.store.base import VectorStore

REFERENCE_KIND = "calibration_reference"
MAX_REFERENCE = 10_000


def reference_of(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Sorted finite scores, thinned to `MAX_REFERENCE` evenly spaced order statistics."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    values = values[np.isfinite(values)]
    if values.size > MAX_REFERENCE:
        values = values[np.linspace(0, values.size - 1, MAX_REFERENCE).round().astype(int)]
    return values


def p_value(reference: np.ndarray, score: float) -> float | None:
    """(1 + #{reference >= score}) / (n + 1) over a sorted reference; None when it is empty."""
    n = int(reference.size)
    if n == 0:
        return None
    if math.isnan(score):
        return 1.0 / (n + 1)
    at_or_above = n - int(np.searchsorted(reference, score, side="left"))
    return (1 + at_or_above) / (n + 1)


def reference_key(setting: str, calibration_id: str) -> str:
    return f"{setting}__{calibration_id}"


class References:
    """The reference scores of calibrations, in the store, read once per calibration and process."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], np.ndarray | None] = {}
        self._lock = threading.Lock()

    def save(self, setting: str, calibration_id: str, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        reference = reference_of(scores)
        self.store.put_record(
            REFERENCE_KIND, reference_key(setting, calibration_id),
            {"setting": setting, "calibration_id": calibration_id, "scores": reference.tolist()},
        )
        with self._lock:
            self._cache[(setting, calibration_id)] = reference
        return reference

    def get(self, setting: str, calibration_id: str) -> np.ndarray | None:
        """The sorted reference scores of a calibration, or None if it was recorded without them."""
        key = (setting, calibration_id)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        record = self.store.get_record(REFERENCE_KIND, reference_key(setting, calibration_id))
        found = None if record is None else np.asarray(record["scores"], dtype=np.float64)
        with self._lock:
            self._cache[key] = found
        return found

    def delete_setting(self, setting: str) -> None:
        for record in self.store.list_records(REFERENCE_KIND):
            if record.get("setting") == setting:
                self.store.delete_record(REFERENCE_KIND, reference_key(setting, record["calibration_id"]))
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != setting}
