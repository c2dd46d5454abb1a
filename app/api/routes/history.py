"""The inspection history of a setting: every verdict, newest first, paged by cursor; kept images."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from app.api.deps import ReadAccess, RuntimeDep
from app.api.errors import ApiError
from app.api.schemas import InspectionPublic, InspectionsPublic
from indexing.history import BadCursor, History

router = APIRouter(tags=["history"], dependencies=[ReadAccess])


def epoch(value: datetime | None) -> float | None:
    """A query time as seconds since the epoch; a time without a zone is UTC."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def require_history(runtime) -> History:
    if runtime.history is None:
        raise ApiError(404, ["path"], "this server keeps no inspection history", "not_found")
    return runtime.history


@router.get("/v1/settings/{setting}/inspections")
def inspections(
    setting: str,
    runtime: RuntimeDep,
    since: Annotated[datetime | None, Query(description="ISO 8601; verdicts at or after it (no zone: UTC).")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; verdicts before it.")] = None,
    verdict: Annotated[Literal["PASS", "FAIL", "UNCALIBRATED"] | None, Query(description="Only this verdict.")] = None,
    cursor: Annotated[str | None, Query(max_length=64, description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Verdicts per page.")] = 100,
) -> InspectionsPublic:
    """Every recorded verdict of a setting, newest first: time, verdict, score, threshold, p-value,
    calibration, version, image hash, latency, and the kept image for FAIL and near-threshold verdicts."""
    runtime.service.get_setting(setting)
    history = require_history(runtime)
    if since is not None and until is not None and epoch(since) >= epoch(until):
        raise ApiError(422, ["query", "until"], "until must be later than since", "value_error")

    try:
        page = history.query(setting, since=epoch(since), until=epoch(until), verdict=verdict, cursor=cursor, limit=limit)
    except BadCursor as error:
        raise ApiError(422, ["query", "cursor"], str(error), "bad_cursor") from None
    return InspectionsPublic(
        setting=setting, next_cursor=page.next_cursor,
        inspections=[InspectionPublic.of(setting, item, image_kept=history.image_path(item) is not None)
                     for item in page.items],
    )


@router.get("/v1/settings/{setting}/inspections/{inspection_id}/image", response_class=FileResponse)
def inspection_image(setting: str, inspection_id: int, runtime: RuntimeDep) -> FileResponse:
    """The image of a recorded verdict, when it was kept (FAIL and near-threshold verdicts, within retention)."""
    runtime.service.get_setting(setting)
    history = require_history(runtime)
    item = history.get(setting, inspection_id)
    if item is None:
        raise ApiError(404, ["path", "inspection_id"], f"no inspection {inspection_id} in setting {setting!r}", "not_found")
    path = history.image_path(item)
    if path is None:
        raise ApiError(404, ["path", "inspection_id"],
                       f"inspection {inspection_id} kept no image (PASS far from the threshold, or past retention)",
                       "not_found")
    return FileResponse(path)
