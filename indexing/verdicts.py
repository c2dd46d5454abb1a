"""What an inspection answers: the verdict, its evidence, and how it was reached."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from indexing.calibration import Calibration, apply_threshold
from indexing.store.base import Neighbour

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from indexing.patch_mode import PatchResult

Outcome = Literal["PASS", "FAIL", "UNCALIBRATED"]


@dataclass(frozen=True)
class HeatMap:
    """Where an image differs from every nominal image (patch scoring only).

    Attributes:
        grid: rows x cols nearest-nominal-patch distance of each patch (the raw
            map, before upsampling and smoothing), as lists of floats; on the score's
            scale (divided by the image's local scale, `PatchConfig.local_scale`). In a fused
            setting, the mean of the patch and positional maps, each standardised as its part's
            score is (`indexing.fused`).
        worst: (row, col) of the patch farthest from the nominal patches, where its neighbours were found.
        png: the smoothed map coloured over the image, PNG bytes (see
            `indexing.heatmap.overlay_png` for the colour scale).
    """

    grid: list[list[float]]
    worst: tuple[int, int]
    png: bytes

    @classmethod
    def build(cls, found: "PatchResult", image: "Image.Image", *, threshold: float | None) -> "HeatMap":
        from indexing.heatmap import overlay_png

        assert found.heat is not None, "build needs a PatchResult scored with maps=True"
        png = overlay_png(image, found.heat, threshold=threshold)
        return cls(grid=found.grid.astype(float).round(6).tolist(), worst=found.worst, png=png)


@dataclass(frozen=True)
class Verdict:
    """One inspected image.

    `threshold` and `calibration_id` are None exactly when the verdict is
    UNCALIBRATED: without a calibration Nominal reports the score, never a guess,
    and `nominal_percentile`, the share of the nominal images' leave-one-out
    scores below it (0.5: as unusual as a typical good part; 1.0: above all of them).
    `p_value` is the conformal p-value of the score among the reference scores of the
    calibration in use (the nominal leave-one-out scores without one): see `indexing.conformal`.
    `scorer` is the calibration's scorer (`Calibration.scoring`), or the setting's mode without one.
    `embedding` is the image's global vector (global scoring only), for the verdict hooks
    (drift's mean-embedding shift); it is never part of an answer.
    """

    source: str
    image_id: str
    verdict: Outcome
    score: float
    threshold: float | None
    calibration_id: str | None
    neighbours: list[Neighbour] = field(default_factory=list)
    elapsed_ms: float = 0.0
    heatmap: HeatMap | None = None
    nominal_percentile: float | None = None
    p_value: float | None = None
    # Which scorer answered: "global", "patch", "fused:<parts>" (`indexing.fused`), or "trained:<id>" / "hybrid:<id>"
    # (a scorer trained on labelled defects).
    scorer: str = "global"
    # A fused verdict's parts: each scorer's own score ("patch", "global", "positional"), before standardising.
    parts: dict[str, float] | None = None
    embedding: "np.ndarray | None" = field(default=None, compare=False, repr=False)


def decide(score: float, calibration: Calibration | None) -> tuple[Outcome, float | None, str | None]:
    """(outcome, threshold, calibration id) for a score under an optional calibration."""
    if calibration is None:
        return "UNCALIBRATED", None, None
    outcome: Outcome = "FAIL" if apply_threshold(score, calibration.threshold) else "PASS"
    return outcome, calibration.threshold, calibration.id
