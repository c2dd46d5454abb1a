"""Calibrating a setting's threshold from labelled images, and reading the latest calibration."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile

from app.api.deps import AdminAccess, ReadAccess, RuntimeDep
from app.api.errors import ApiError
from app.api.schemas import CalibrationPublic
from app.api.uploads import read_images
from indexing.calibration import Calibration, parse_policy
from indexing.errors import BadImage, InvalidCalibration
from indexing.image_store import ImageRef
from indexing.report import calibration_pr_png

router = APIRouter(tags=["calibrations"])


@router.post("/v1/settings/{setting}/calibrations", dependencies=[AdminAccess])
def calibrate(
    setting: str,
    runtime: RuntimeDep,
    pass_files: Annotated[list[UploadFile] | None, File(alias="pass", description="Labelled PASS images; none: the nominal set, leave-one-out.")] = None,
    fail_files: Annotated[list[UploadFile] | None, File(alias="fail", description="Labelled FAIL images.")] = None,
    policy: Annotated[str, Form(description="f1, precision>=P, recall>=R, fpr<=F, or quantile[:ALPHA] with no FAIL images.")] = "f1",
    use_feedback: Annotated[bool, Form(description="Add the images operators marked FAIL through feedback.")] = True,
) -> CalibrationPublic:
    """Choose the PASS/FAIL threshold on a precision-recall curve and make it the setting's calibration."""
    runtime.service.get_setting(setting)
    try:
        parse_policy(policy)
    except (InvalidCalibration, ValueError) as error:
        raise ApiError(422, ["body", "policy"], str(error), "policy_invalid") from error
    limits = {"max_image_bytes": runtime.config.max_image_bytes, "max_pixels": runtime.config.max_pixels}
    pass_images = read_images(pass_files, field="pass", required=False, **limits)
    fail_images = read_images(fail_files, field="fail", required=False, **limits)
    if use_feedback:
        for record in runtime.service.labels(setting, "FAIL"):
            try:
                fail_images.append(runtime.images.load(ImageRef.from_dict(record)))
            except BadImage:
                continue  # an image store without that file (another host): the uploaded set still counts
    result = runtime.service.calibrate(setting, pass_images=pass_images, fail_images=fail_images, policy=policy)
    return CalibrationPublic.of(result)


def _latest(runtime, setting: str) -> Calibration:
    calibration = runtime.service.latest_calibration(setting)
    if calibration is None:
        raise ApiError(404, ["path", "setting"], f"setting {setting!r} is not calibrated yet: POST its calibrations first", "not_calibrated")
    return calibration


@router.get("/v1/settings/{setting}/calibrations/latest", dependencies=[ReadAccess])
def latest_calibration(setting: str, runtime: RuntimeDep) -> CalibrationPublic:
    return CalibrationPublic.of(_latest(runtime, setting))


@router.get(
    "/v1/settings/{setting}/calibrations/latest/pr_curve.png",
    dependencies=[ReadAccess],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PR curve with the chosen threshold marked."}},
)
def latest_pr_curve(setting: str, runtime: RuntimeDep) -> Response:
    return Response(calibration_pr_png(_latest(runtime, setting)), media_type="image/png")
