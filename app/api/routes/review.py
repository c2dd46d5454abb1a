"""The review queue of a setting: near-threshold and FAIL verdicts waiting for an operator's label."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query

from app.api.deps import AdminAccess, ReadAccess, RuntimeDep
from app.api.routes.history import require_history
from app.api.schemas import ReviewedPublic, ReviewQueuePublic
from app.api.uploads import form_fields
from indexing.review import review

router = APIRouter(tags=["history"])


@router.get("/v1/settings/{setting}/review", dependencies=[ReadAccess])
def review_queue(
    setting: str,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Items to return.")] = 20,
) -> ReviewQueuePublic:
    """The next verdicts to label, oldest first: near-threshold verdicts (both sides) and FAIL verdicts,
    sampled at most NOMINAL_REVIEW_PER_HOUR per hour, whose image is still kept."""
    runtime.service.get_setting(setting)
    return ReviewQueuePublic.of(setting, require_history(runtime), limit=limit)


@router.post("/v1/settings/{setting}/review/{inspection_id}", dependencies=[AdminAccess, form_fields("label")])
def review_label(
    setting: str,
    inspection_id: int,
    runtime: RuntimeDep,
    label: Annotated[Literal["PASS", "FAIL", "skip"], Form(description="What the part really is, or skip.")],
) -> ReviewedPublic:
    """Label a recorded verdict: PASS and FAIL go the feedback path (PASS joins the nominal set, FAIL is a
    FAIL example for the next calibration); skip only takes it off the queue. Each inspection is answered once."""
    history = require_history(runtime)
    done = review(history, runtime.service, runtime.images, runtime.runner, setting, inspection_id, label)
    return ReviewedPublic.of(setting, done, image_kept=history.image_path(done.inspection) is not None)
