"""Request and response bodies: one schema per operation, built from the core's dataclasses."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from indexing.calibration import Calibration
from indexing.history import Inspection
from indexing.jobs import Job
from indexing.service import SettingStatus
from indexing.store.base import Neighbour
from indexing.verdicts import HeatMap, Verdict


def iso_time(epoch: float | None) -> str | None:
    """Seconds since the epoch as the ISO 8601 UTC text settings and calibrations carry."""
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


class SettingPut(BaseModel):
    """Create a machine setting, or change the fields given."""

    model_config = ConfigDict(extra="forbid")

    backbone: str | None = Field(None, description="Backbone name (see GET /v1/backbones); fixed once the setting has a version: a change of backbone is a re-index (409 here).")
    k: int | None = Field(None, ge=1, le=1000, description="Nearest nominal neighbours averaged into the score.")
    scoring: Literal["global", "patch", "fused"] | None = Field(
        None, description="global: one embedding per image; patch: PatchCore-style; fused: the patch, global and (for "
        "aligned parts) per-position scores, each standardised by its nominal images' own, averaged. A new setting "
        "without it gets fused, or global on a backbone without feature maps (CLIP).")
    description: str | None = Field(None, max_length=2000)
    tiling: Literal["auto", "on", "off"] | None = Field(
        None,
        description="Patch scoring of large or elongated images by overlapping tiles: auto (images at least 2:1, one row "
        "with the aspect ratio kept; images far above the backbone input, at its native scale), on (every image, "
        "native scale), off. Takes effect at the next (re-)index.",
    )


class ReindexRequest(BaseModel):
    """Re-index a setting from images the server (and its workers) can read."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="A folder, a glob, or a manifest CSV with a `path` column and metadata columns.")
    backbone: str | None = Field(None, description="Embed with this backbone; the setting switches to it with the new version.")


class CalibrationSummary(BaseModel):
    id: str
    policy: str
    threshold: float
    average_precision: float | None
    roc_auc: float | None
    n_pass: int
    n_fail: int
    created_at: str
    scoring: str = Field(description="The scorer it was made with, and that verdicts use with it: global, patch, or trained:<id>.")
    active: bool = Field(description="Whether verdicts use this calibration now.")

    @classmethod
    def of(cls, c: Calibration, *, active: bool) -> "CalibrationSummary":
        return cls(id=c.id, policy=c.policy, threshold=c.threshold, average_precision=c.average_precision,
                   roc_auc=c.roc_auc, n_pass=c.n_pass, n_fail=c.n_fail, created_at=c.created_at, scoring=c.scoring,
                   active=active)


class CalibrationsPublic(BaseModel):
    calibrations: list[CalibrationSummary] = Field(description="Newest first.")


class SettingPublic(BaseModel):
    name: str
    backbone: str
    k: int
    scoring: str
    scorer: str = Field(description="The scorer verdicts use: the calibration's (trained:<id> after a training that passed its gate), else `scoring`.")
    tiling: str
    description: str
    images: int = Field(description="Nominal images in the active version.")
    active_version: int | None
    collection: str | None
    calibration: CalibrationSummary | None = Field(description="The calibration verdicts use; null: UNCALIBRATED.")
    calibration_note: str | None = Field(None, description="Why the last active calibration no longer applies.")
    candidate_calibration: CalibrationSummary | None = Field(
        None, description="A newer recorded calibration that is not live (held back, or recorded with activate=false).")
    reindex_note: str | None = Field(
        None, description="How the active patch bank differs from what a re-index would build (missing, another tiling, or the earlier patch features); null: it does not.")
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, status: SettingStatus) -> "SettingPublic":
        s, c, candidate = status.setting, status.calibration, status.candidate
        return cls(
            name=s.name, backbone=s.backbone, k=s.k, scoring=s.scoring, scorer=status.scorer, tiling=s.tiling,
            description=s.description, images=status.count,
            active_version=status.active.version if status.active else None,
            collection=status.active.collection if status.active else None,
            calibration=CalibrationSummary.of(c, active=True) if c else None,
            calibration_note=status.calibration_note,
            candidate_calibration=CalibrationSummary.of(candidate, active=False) if candidate else None,
            reindex_note=status.reindex_note,
            created_at=s.created_at, updated_at=s.updated_at,
        )


class VersionPublic(BaseModel):
    version: int
    state: str = Field(description="building (a re-index in progress) or ready.")
    images: int
    backbone: str
    created_at: str
    active: bool = Field(description="Whether verdicts are answered from this version.")


class VersionsPublic(BaseModel):
    versions: list[VersionPublic] = Field(description="Oldest first; `POST .../rollback` returns to the ready one before the active.")


class SettingsPublic(BaseModel):
    settings: list[SettingPublic]


class NeighbourPublic(BaseModel):
    id: str
    distance: float
    source: str | None
    url: str = Field(description="GET this for the stored nominal image (add ?size=256 for a thumbnail).")
    payload: dict[str, Any]

    @classmethod
    def of(cls, setting: str, neighbour: Neighbour) -> "NeighbourPublic":
        return cls(
            id=neighbour.id, distance=neighbour.distance, source=neighbour.payload.get("source"),
            url=f"/v1/settings/{setting}/images/{neighbour.id}", payload=neighbour.payload,
        )


class HeatMapPublic(BaseModel):
    grid: list[list[float]] = Field(description="Nearest-nominal-patch distance of each patch, rows x cols, on the "
                                                "score's scale: divided by the mean own score of the nominal images "
                                                "nearest the worst patch, where the bank scores relative to them. "
                                                "Fused settings: the mean of that map and each patch's distance to "
                                                "its position's nominal statistics, each standardised (z-scores) as "
                                                "its part's score is.")
    worst: tuple[int, int] = Field(description="(row, col) of the patch farthest from the nominal patches (where the "
                                               "neighbours were found).")
    png: str = Field(description="The smoothed map coloured over the image, as a data:image/png;base64 URL.")

    @classmethod
    def of(cls, heatmap: HeatMap) -> "HeatMapPublic":
        encoded = base64.b64encode(heatmap.png).decode("ascii")
        return cls(grid=heatmap.grid, worst=heatmap.worst, png=f"data:image/png;base64,{encoded}")


class VerdictPublic(BaseModel):
    source: str
    image_id: str
    verdict: Literal["PASS", "FAIL", "UNCALIBRATED"]
    score: float
    threshold: float | None
    calibration_id: str | None
    elapsed_ms: float
    nominal_percentile: float | None = Field(
        None, description="UNCALIBRATED only: the share of the nominal images' leave-one-out scores below this score.")
    p_value: float | None = Field(
        None, description=("Conformal p-value: (1 + reference scores at or above this score) / (n + 1), the reference "
                           "being the PASS scores of the calibration in use (without one: the nominal images' "
                           "leave-one-out scores). 0.002 reads 'about 1 good part in 500 scores this high'."))
    scorer: str = Field(description="Which scorer answered: global, patch, fused:<parts> (e.g. fused:patch+positional+"
                              "global), or trained:<id> / hybrid:<id> (learned from labelled defects).")
    parts: dict[str, float] | None = Field(
        None, description="Fused settings: each part's own score (patch, global, positional) before standardising.")
    neighbors: list[NeighbourPublic]
    heatmap: HeatMapPublic | None = Field(None, description="Patch and fused settings, when asked for with heatmap=true "
                                          "(patch distances; in a fused verdict, standardised patch and positional distances, without a threshold line).")

    @classmethod
    def of(cls, setting: str, verdict: Verdict) -> "VerdictPublic":
        return cls(
            source=verdict.source, image_id=verdict.image_id, verdict=verdict.verdict, score=verdict.score,
            threshold=verdict.threshold, calibration_id=verdict.calibration_id, elapsed_ms=verdict.elapsed_ms,
            nominal_percentile=verdict.nominal_percentile, p_value=verdict.p_value, scorer=verdict.scorer,
            parts=verdict.parts, neighbors=[NeighbourPublic.of(setting, n) for n in verdict.neighbours],
            heatmap=HeatMapPublic.of(verdict.heatmap) if verdict.heatmap else None,
        )


class InspectPublic(BaseModel):
    results: list[VerdictPublic] = Field(description="One result per uploaded file, in order.")


class NeighboursOfImage(BaseModel):
    source: str
    neighbors: list[NeighbourPublic]


class NeighboursPublic(BaseModel):
    results: list[NeighboursOfImage]


class GatePublic(BaseModel):
    unsupervised_ap: float = Field(description="Cross-validated AP of the unsupervised kNN on the labelled images.")
    trained_ap: float = Field(description="Cross-validated AP of the trained scorer on the same images.")
    gain_low: float = Field(description="5th percentile of the AP gain over paired bootstrap resamples.")
    margin: float
    folds: int
    n_pass: int
    n_fail: int
    active: bool = Field(description="Whether the trained scorer measurably helps (AP gain >= margin and gain_low > 0).")
    reason: str


class TrainedPublic(BaseModel):
    id: str
    kind: Literal["metric", "hybrid"] = Field(description="metric: a projection of a global setting's embeddings; hybrid: DenseHybrid over a patch setting's patches.")
    scoring: str = Field(description="Its name in a calibration's `scoring` and a verdict's `scorer`: trained:<id> or hybrid:<id>.")
    backbone: str
    projection: str
    gate: GatePublic
    passed: bool = Field(description="Whether it passed its gate (and was calibrated).")
    in_use: bool = Field(description="Whether verdicts use it now (the calibration in use was made with it).")
    n_nominal: int = Field(description="Nominal images it learned from (metric), or held-out PASS images its gate scored (hybrid).")
    n_fail: int = Field(description="Labelled FAIL images it learned from.")
    n_synthetic: int = Field(description="CutPaste defects made from PASS images.")
    steps: int
    trained_on: str = Field(description="The collection version it was trained on.")
    created_at: str
    seconds: float


class TrainedListPublic(BaseModel):
    trained: list[TrainedPublic] = Field(description="Newest first.")


class JobAccepted(BaseModel):
    job_id: str
    state: str
    total: int
    url: str


class JobPublic(BaseModel):
    id: str
    kind: str
    setting: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    done: int
    total: int
    rate: float | None = Field(description="Items per second since the job started.")
    eta_s: float | None
    errors: list[dict[str, str]] = Field(description="Per bad image: source and reason (the first 1,000).")
    error_count: int
    result: dict[str, Any] | None
    message: str | None
    cancel_requested: bool
    created_at: str = Field(description="ISO 8601, UTC, as every time in this API.")
    started_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, job: Job) -> "JobPublic":
        fields = job.to_dict()
        for key in ("created_at", "started_at", "finished_at"):
            fields[key] = iso_time(fields[key])
        return cls(**fields)


class JobsPublic(BaseModel):
    jobs: list[JobPublic]


class CalibrationPublic(BaseModel):
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
    warnings: list[str]
    comparison: dict[str, Any] | None = Field(
        None, description="Candidate scorers compared by cross-validation on this calibration's labelled images "
        "(`nominal calibrate --compare`): ranking, winner, margin in held-out F1.",
    )
    active: bool = Field(description="Whether verdicts use this calibration now.")
    held_back: str | None = Field(None, description="Why a new calibration did not go live.")
    replaced: CalibrationSummary | None = Field(None, description="The calibration verdicts used before this one.")

    @classmethod
    def of(cls, calibration: Calibration, *, active: bool, held_back: str | None = None,
           replaced: Calibration | None = None) -> "CalibrationPublic":
        return cls(**calibration.to_dict(), active=active, held_back=held_back,
                   replaced=CalibrationSummary.of(replaced, active=False) if replaced else None)


class FeedbackPublic(BaseModel):
    label: Literal["PASS", "FAIL"]
    image_id: str
    sha256: str
    job_id: str | None = Field(None, description="PASS feedback: the job adding the image to the nominal set.")
    message: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class InspectionPublic(BaseModel):
    """One recorded verdict."""

    id: int
    at: str = Field(description="When the verdict was given, ISO 8601 UTC.")
    verdict: Literal["PASS", "FAIL", "UNCALIBRATED"]
    score: float | None
    threshold: float | None
    p_value: float | None
    calibration_id: str | None
    version: int | None = Field(description="The collection version the verdict was answered from.")
    sha256: str = Field(description="SHA-256 of the image bytes.")
    source: str
    latency_ms: float
    image_url: str | None = Field(description="The kept image (FAIL and near-threshold verdicts), or null.")
    review: Literal["queued", "PASS", "FAIL", "skip"] | None = Field(
        None, description="Review queue: null (not sampled), queued, or the operator's answer (PASS, FAIL, skip).")
    review_reason: Literal["near", "fail"] | None = Field(
        None, description="Why it was queued: near the threshold (either side), or a FAIL.")

    @classmethod
    def of(cls, setting: str, item: Inspection, *, image_kept: bool) -> "InspectionPublic":
        return cls(
            id=item.id, at=iso_time(item.at) or "", verdict=item.verdict, score=item.score,  # type: ignore[arg-type]
            threshold=item.threshold, p_value=item.p_value, calibration_id=item.calibration_id, version=item.version,
            sha256=item.sha256, source=item.source, latency_ms=item.latency_ms,
            image_url=f"/v1/settings/{setting}/inspections/{item.id}/image" if image_kept else None,
            review=item.review, review_reason=item.review_reason,  # type: ignore[arg-type]
        )


class InspectionsPublic(BaseModel):
    setting: str
    inspections: list[InspectionPublic] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null: no more.")


class ReviewQueuePublic(BaseModel):
    """The next verdicts waiting for an operator's label, oldest first."""

    setting: str
    queued: int = Field(description="Queued verdicts whose image is still kept, in all.")
    per_hour: int = Field(description="NOMINAL_REVIEW_PER_HOUR: verdicts sampled per hour (half near the threshold, half FAIL).")
    items: list[InspectionPublic] = Field(description="Oldest first; label each with POST .../review/{id}.")

    @classmethod
    def of(cls, setting: str, history: Any, *, limit: int) -> "ReviewQueuePublic":
        """The queue of `setting` in an `indexing.history.History`."""
        items, queued = history.review_queue(setting, limit=limit)
        return cls(setting=setting, queued=queued, per_hour=history.review_per_hour,
                   items=[InspectionPublic.of(setting, item, image_kept=True) for item in items])


class ReviewedPublic(BaseModel):
    """An answered review: the inspection, and what its label does (the feedback path)."""

    inspection: InspectionPublic
    label: Literal["PASS", "FAIL", "skip"]
    job_id: str | None = Field(None, description="PASS: the job adding the image to the nominal set.")
    message: str

    @classmethod
    def of(cls, setting: str, done: Any, *, image_kept: bool) -> "ReviewedPublic":
        """From an `indexing.review.Reviewed`."""
        feedback = done.feedback
        return cls(
            inspection=InspectionPublic.of(setting, done.inspection, image_kept=image_kept),
            label=done.inspection.review, job_id=feedback.job.id if feedback and feedback.job else None,
            message=feedback.message if feedback else "skipped: off the queue, nothing learnt",
        )


class DriftPublic(BaseModel):
    """Whether a setting's recent scores still look like the ones its calibration was made on."""

    setting: str
    state: Literal["ok", "warn", "alarm"]
    enough_data: bool = Field(description="False: too few recent verdicts to judge (state stays ok).")
    window: int = Field(description="Verdicts in the recent window (answered from the active version).")
    window_since: str | None = Field(description="Start of a time window (ISO 8601), or null for the last N verdicts.")
    reference: int = Field(description="Reference scores: the calibration in use's PASS scores, or the nominal leave-one-out.")
    calibration_id: str | None
    threshold: float | None
    ks_statistic: float | None
    ks_p_value: float | None
    psi: float | None = Field(description="Population stability index; counts toward the state from 100 verdicts.")
    fail_rate: float | None
    predicted_fail_rate: float | None = Field(description="The FAIL rate the calibration predicts for good parts.")
    fail_rate_p_value: float | None
    mean_score: float | None
    reference_mean_score: float | None
    embedding_shift: float | None = Field(
        description="Distance of the window's mean embedding from the nominal centroid, in standard errors (about 1 "
                    "is normal; warn from 2, alarm from 3); null for scoring: patch (no global embedding) or before 10 verdicts in this process.")
    embedding_window: int = Field(description="Embeddings the shift was measured on (this server process's verdicts).")
    reasons: list[str]
    advice: str | None = Field(description="What to do, when the state is warn or alarm.")
    computed_at: str

    @classmethod
    def of(cls, report: Any) -> "DriftPublic":
        fields = {name: getattr(report, name) for name in cls.model_fields}
        fields["window_since"] = iso_time(report.window_since)
        fields["computed_at"] = iso_time(report.computed_at)
        return cls(**fields)
