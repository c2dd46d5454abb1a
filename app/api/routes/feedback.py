"""Operator feedback on a verdict: a false alarm joins the nominal set, a missed defect is kept as a labelled FAIL."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile

from app.api.deps import AdminAccess, RuntimeDep
from app.api.schemas import FeedbackPublic
from app.api.uploads import form_fields, read_images
from indexing.review import give_feedback

router = APIRouter(tags=["feedback"], dependencies=[AdminAccess])


@router.post("/v1/settings/{setting}/feedback", dependencies=[form_fields("label", "files")])
def feedback(
    setting: str,
    runtime: RuntimeDep,
    label: Annotated[Literal["PASS", "FAIL"], Form(description="What the part really is.")],
    files: Annotated[list[UploadFile] | None, File(description="The inspected image (one file).")] = None,
) -> FeedbackPublic:
    """PASS: the image is added to the nominal set (a job). FAIL: it is kept for the next calibration."""
    runtime.service.get_setting(setting)
    image = read_images(files, field="files", max_image_bytes=runtime.config.max_image_bytes,
                        max_pixels=runtime.config.max_pixels)[0]
    given = give_feedback(runtime.service, runtime.images, runtime.runner, setting, image, label)
    return FeedbackPublic(label=label, image_id=image.id, sha256=image.sha256,
                          job_id=given.job.id if given.job else None, message=given.message)
