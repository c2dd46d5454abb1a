"""Every error a request can meet becomes a 4xx (or 503) with a JSON `detail`; never a 500 for bad input.

`detail` is a list of `{"loc": [...], "msg": ..., "type": ...}`, the shape FastAPI
uses for validation errors, so clients read one format: `loc` names the field
(and the file's index), `msg` says the reason and the fix.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from indexing.errors import (
    BackboneMismatch,
    BadImage,
    EmptyCollection,
    InvalidCalibration,
    InvalidName,
    NoImages,
    NominalError,
    NoPreviousVersion,
    SourceNotAllowed,
    StoreUnavailable,
    UnknownBackbone,
    UnknownSetting,
    WeightsUnavailable,
)

# Most specific first: the first matching class decides the status.
_STATUS: tuple[tuple[type[NominalError], int], ...] = (
    (UnknownSetting, 404),
    (EmptyCollection, 409),
    (BackboneMismatch, 409),
    (NoPreviousVersion, 409),
    (SourceNotAllowed, 403),
    (InvalidName, 422),
    (UnknownBackbone, 422),
    (InvalidCalibration, 422),
    (NoImages, 422),
    (WeightsUnavailable, 503),
    (StoreUnavailable, 503),
)


class ApiError(Exception):
    """An error found at the edge (a file over a limit, a malformed field), with its field named."""

    def __init__(self, status: int, loc: list[str | int], msg: str, kind: str) -> None:
        self.status = status
        self.loc = loc
        self.msg = msg
        self.kind = kind
        super().__init__(msg)


def detail(loc: list[str | int], msg: str, kind: str) -> list[dict[str, Any]]:
    return [{"loc": loc, "msg": msg, "type": kind}]


def bad_image_status(error: BadImage) -> int:
    if error.too_large:
        return 413
    if error.unsupported:
        return 415
    return 422


def status_for(error: NominalError) -> int:
    if isinstance(error, BadImage):
        return bad_image_status(error)
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 400


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(status_code=error.status, content={"detail": detail(error.loc, error.msg, error.kind)})

    @app.exception_handler(NominalError)
    async def _nominal_error(request: Request, error: NominalError) -> JSONResponse:
        loc: list[str | int] = ["body", "files"] if isinstance(error, BadImage) else []
        name = type(error).__name__
        kind = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
        return JSONResponse(status_code=status_for(error), content={"detail": detail(loc, str(error), kind)})
