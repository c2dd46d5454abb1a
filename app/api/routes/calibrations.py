"""Calibrating a setting's threshold from labelled images; the recorded calibrations; which one is live.

How a calibration goes live (`NominalService.calibrate`): every calibration is recorded;
it replaces the active one when `activate` is true (the default) and it is not degenerate
(it catches no FAIL image, or flags most PASS images). Otherwise it stays a candidate,
listed here and on the setting, until `POST .../calibrations/{id}/activate`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile

from app.api.deps import AdminAccess, ReadAccess, RuntimeDep
from app.api.errors import ApiError
from app.api.schemas import CalibrationPublic, CalibrationsPublic, CalibrationSummary
from app.api.uploads import form_fields, read_images
from indexing.calibration import Calibration
from indexing.report import calibration_pr_png

router = APIRouter(tags=["calibrations"])

FIELDS = ("pass", "fail", "policy", "use_feedback", "activate")


@router.post("/v1/settings/{setting}/calibrations", dependencies=[AdminAccess, form_fields(*FIELDS, at_least_one=True)])
def calibrate(
    setting: str,
    runtime: RuntimeDep,
    pass_files: Annotated[list[UploadFile] | None, File(alias="pass", description="Labelled PASS images; none: the nominal set, leave-one-out.")] = None,
    fail_files: Annotated[list[UploadFile] | None, File(alias="fail", description="Labelled FAIL images.")] = None,
    policy: Annotated[str | None, Form(description="f1, precision>=P, recall>=R, fpr<=F (these need FAIL images), or quantile[:ALPHA]. Default: f1 with FAIL images, quantile:0.01 without.")] = None,
    use_feedback: Annotated[bool, Form(description="Add the images operators marked FAIL through feedback.")] = True,
    activate: Annotated[bool, Form(description="Make it live unless it is degenerate; false: record it as a candidate only.")] = True,
) -> CalibrationPublic:
    """Choose a PASS/FAIL threshold on a precision-recall curve, record it, and make it live when that is safe.

    The answer says whether it is `active`, what it `replaced`, or why it was `held_back`.
    Give at least one field; with `policy` alone, the nominal set is scored leave-one-out.
    """
    runtime.service.get_setting(setting)
    limits = {"max_image_bytes": runtime.config.max_image_bytes, "max_pixels": runtime.config.max_pixels}
    pass_images = read_images(pass_files, field="pass", required=False, **limits)
    fail_images = read_images(fail_files, field="fail", required=False, **limits)
    result = runtime.service.calibrate(setting, pass_images=pass_images, fail_images=fail_images, policy=policy,
                                       use_feedback=use_feedback, activate=activate)
    return CalibrationPublic.of(result.calibration, active=result.active, held_back=result.held_back,
                                replaced=result.replaced)


@router.get("/v1/settings/{setting}/calibrations", dependencies=[ReadAccess])
def list_calibrations(setting: str, runtime: RuntimeDep) -> CalibrationsPublic:
    """Every recorded calibration, newest first; `active` marks the one verdicts use."""
    live = runtime.service.usable_calibration(setting)
    return CalibrationsPublic(calibrations=[
        CalibrationSummary.of(c, active=live is not None and c.id == live.id) for c in runtime.service.calibrations(setting)
    ])


@router.post("/v1/settings/{setting}/calibrations/{calibration_id}/activate", dependencies=[AdminAccess])
def activate_calibration(setting: str, calibration_id: str, runtime: RuntimeDep) -> CalibrationPublic:
    """Make a recorded calibration the one verdicts use (409 if it was made on other vectors)."""
    result = runtime.service.activate_calibration(setting, calibration_id)
    return CalibrationPublic.of(result.calibration, active=True, held_back=None, replaced=result.replaced)


def _latest(runtime, setting: str) -> Calibration:
    calibration = runtime.service.usable_calibration(setting)
    if calibration is None:
        raise ApiError(404, ["path", "setting"], f"setting {setting!r} has no calibration that verdicts use", "not_calibrated")
    return calibration


@router.get("/v1/settings/{setting}/calibrations/latest", dependencies=[ReadAccess])
def latest_calibration(setting: str, runtime: RuntimeDep) -> CalibrationPublic:
    """The calibration verdicts use now."""
    return CalibrationPublic.of(_latest(runtime, setting), active=True)


@router.get(
    "/v1/settings/{setting}/calibrations/latest/pr_curve.png",
    dependencies=[ReadAccess],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PR curve with the chosen threshold marked."}},
)
def latest_pr_curve(setting: str, runtime: RuntimeDep) -> Response:
    return Response(calibration_pr_png(_latest(runtime, setting)), media_type="image/png")
