"""Score drift of a setting: its recent verdicts against the calibration in use (`indexing.drift`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ReadAccess, RuntimeDep
from app.api.errors import ApiError
from app.api.schemas import DriftPublic
from indexing.drift import compute_drift

router = APIRouter(tags=["history"], dependencies=[ReadAccess])


@router.get("/v1/settings/{setting}/drift")
def drift(
    setting: str,
    runtime: RuntimeDep,
    last: Annotated[int | None, Query(ge=1, le=100_000, description="Window: the last N verdicts (default NOMINAL_DRIFT_WINDOW).")] = None,
    minutes: Annotated[float | None, Query(gt=0, le=525_600, description="Window: the verdicts of the last T minutes.")] = None,
) -> DriftPublic:
    """ok, warn or alarm: KS test and PSI of the recent scores against the calibration's reference scores,
    and the FAIL rate against the rate it predicts; with what to do when it drifts."""
    runtime.service.get_setting(setting)
    if runtime.history is None:
        raise ApiError(404, ["path"], "this server keeps no inspection history, so it cannot tell drift", "not_found")
    window_minutes = minutes if minutes is not None else (runtime.config.drift_minutes if last is None else None)
    report = compute_drift(runtime.service, runtime.history, setting,
                           last=last or runtime.config.drift_window, minutes=window_minutes)
    return DriftPublic.of(report)
