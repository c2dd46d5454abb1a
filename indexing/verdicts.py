"""What an inspection answers: the verdict, its evidence, and how it was reached."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from indexing.calibration import Calibration, apply_threshold
from indexing.store.base import Neighbour

Outcome = Literal["PASS", "FAIL", "UNCALIBRATED"]


@dataclass(frozen=True)
class Verdict:
    """One inspected image.

    `threshold` and `calibration_id` are None exactly when the verdict is
    UNCALIBRATED: without a calibration Nominal reports the score, never a guess.
    """

    source: str
    image_id: str
    verdict: Outcome
    score: float
    threshold: float | None
    calibration_id: str | None
    neighbours: list[Neighbour] = field(default_factory=list)
    elapsed_ms: float = 0.0


def decide(score: float, calibration: Calibration | None) -> tuple[Outcome, float | None, str | None]:
    """(outcome, threshold, calibration id) for a score under an optional calibration."""
    if calibration is None:
        return "UNCALIBRATED", None, None
    outcome: Outcome = "FAIL" if apply_threshold(score, calibration.threshold) else "PASS"
    return outcome, calibration.threshold, calibration.id
