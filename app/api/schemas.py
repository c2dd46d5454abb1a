"""Request and response bodies: one schema per operation, built from the core's dataclasses."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from indexing.calibration import Calibration
from indexing.jobs import Job
from indexing.service import SettingStatus
from indexing.store.base import Neighbour
from indexing.verdicts import HeatMap, Verdict


class SettingPut(BaseModel):
    """Create a machine setting, or change the fields given."""

    model_config = ConfigDict(extra="forbid")

    backbone: str | None = Field(None, description="Backbone name (see GET /v1/backbones); fixed once images are stored.")
    k: int | None = Field(None, ge=1, le=1000, description="Nearest nominal neighbours averaged into the score.")
    scoring: Literal["global", "patch"] | None = Field(None, description="global: one embedding per image; patch: PatchCore-style.")
    description: str | None = Field(None, max_length=2000)
    tiling: Literal["auto", "on", "off"] | None = Field(
        None,
        description="Patch scoring of large or elongated images by overlapping tiles at the backbone's native scale: "
        "auto (images far from square or far above the backbone input), on, off. Takes effect at the next (re-)index.",
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
    created_at: str


class SettingPublic(BaseModel):
    name: str
    backbone: str
    k: int
    scoring: str
    tiling: str
    description: str
    images: int = Field(description="Nominal images in the active version.")
    active_version: int | None
    collection: str | None
    calibration: CalibrationSummary | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, status: SettingStatus) -> "SettingPublic":
        s, c = status.setting, status.calibration
        return cls(
            name=s.name, backbone=s.backbone, k=s.k, scoring=s.scoring, tiling=s.tiling, description=s.description,
            images=status.count,
            active_version=status.active.version if status.active else None,
            collection=status.active.collection if status.active else None,
            calibration=CalibrationSummary(
                id=c.id, policy=c.policy, threshold=c.threshold, average_precision=c.average_precision,
                roc_auc=c.roc_auc, created_at=c.created_at,
            ) if c else None,
            created_at=s.created_at, updated_at=s.updated_at,
        )


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
    grid: list[list[float]] = Field(description="Nearest-nominal-patch distance of each patch, rows x cols.")
    worst: tuple[int, int] = Field(description="(row, col) of the most anomalous patch.")
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
    neighbors: list[NeighbourPublic]
    heatmap: HeatMapPublic | None = Field(None, description="Patch-scoring settings, when asked for with heatmap=true.")

    @classmethod
    def of(cls, setting: str, verdict: Verdict) -> "VerdictPublic":
        return cls(
            source=verdict.source, image_id=verdict.image_id, verdict=verdict.verdict, score=verdict.score,
            threshold=verdict.threshold, calibration_id=verdict.calibration_id, elapsed_ms=verdict.elapsed_ms,
            neighbors=[NeighbourPublic.of(setting, n) for n in verdict.neighbours],
            heatmap=HeatMapPublic.of(verdict.heatmap) if verdict.heatmap else None,
        )


class InspectPublic(BaseModel):
    results: list[VerdictPublic] = Field(description="One result per uploaded file, in order.")


class NeighboursOfImage(BaseModel):
    source: str
    neighbors: list[NeighbourPublic]


class NeighboursPublic(BaseModel):
    results: list[NeighboursOfImage]


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
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def of(cls, job: Job) -> "JobPublic":
        return cls(**job.to_dict())


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

    @classmethod
    def of(cls, calibration: Calibration) -> "CalibrationPublic":
        return cls(**calibration.to_dict())


class FeedbackPublic(BaseModel):
    label: Literal["PASS", "FAIL"]
    image_id: str
    sha256: str
    job_id: str | None = Field(None, description="PASS feedback: the job adding the image to the nominal set.")
    message: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
