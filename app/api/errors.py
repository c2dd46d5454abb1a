"""Every error a request can meet becomes a 4xx (or 503) with a JSON `detail`; never a 500 for bad input.

`detail` is a list of `{"loc": [...], "msg": ..., "type": ...}`, the shape FastAPI
uses for validation errors, so clients read one format: `loc` names the field
(and the file's index), `msg` says the reason and the fix.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexing.errors import (
    AlreadyReviewed,
    BackboneMismatch,
    BadImage,
    EmptyCollection,
    ImageNotKept,
    InvalidCalibration,
    InvalidTraining,
    TrainingNotApplicable,
    InvalidName,
    NoImages,
    NominalError,
    NoPreviousVersion,
    SourceNotAllowed,
    StoreUnavailable,
    UnknownBackbone,
    UnknownCalibration,
    UnknownInspection,
    UnknownSetting,
    WeightsUnavailable,
)

# Most specific first: the first matching class decides the status.
_STATUS: tuple[tuple[type[NominalError], int], ...] = (
    (UnknownSetting, 404),
    (UnknownCalibration, 404),
    (UnknownInspection, 404),
    (AlreadyReviewed, 409),
    (ImageNotKept, 410),
    (EmptyCollection, 409),
    (BackboneMismatch, 409),
    (NoPreviousVersion, 409),
    (TrainingNotApplicable, 409),
    (SourceNotAllowed, 403),
    (InvalidName, 422),
    (UnknownBackbone, 422),
    (InvalidCalibration, 422),
    (InvalidTraining, 422),
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


# What a client gets back of a refused value: enough to recognise it, never a large input echoed whole.
MAX_ECHO = 200

_HTTP_KIND = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


def install(app: FastAPI) -> None:
    """One error body everywhere: `{"detail": [{"loc", "msg", "type"}]}`, for our errors, FastAPI's
    validation, and Starlette's own (an unknown route, a wrong method, a malformed multipart body)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(status_code=error.status, content={"detail": detail(error.loc, error.msg, error.kind)})

    @app.exception_handler(NominalError)
    async def _nominal_error(request: Request, error: NominalError) -> JSONResponse:
        if isinstance(error, BadImage):
            loc: list[str | int] = ["body", "files"]
        elif error.field:
            loc = ["path" if error.field in request.path_params else "body", error.field]
        else:
            loc = []
        name = type(error).__name__
        kind = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
        return JSONResponse(status_code=status_for(error), content={"detail": detail(loc, str(error), kind)})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own body also carries `input` (the whole refused value) and `ctx`: leave them out.
        items = [{"loc": list(e.get("loc", [])), "msg": _short(str(e.get("msg", ""))), "type": e.get("type", "invalid")}
                 for e in error.errors()]
        return JSONResponse(status_code=422, content={"detail": items})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if isinstance(error.detail, list):  # already in our shape
            content = error.detail
        else:
            msg, loc = str(error.detail), []
            if error.status_code == 404 and msg == "Not Found":
                path = request.url.path
                msg, loc = f"no such route: {request.method} {path}", ["path"]
                if path.endswith("/") and len(path) > 1:
                    msg += f" (did you mean {path.rstrip('/')}?)"
            elif error.status_code == 405:
                msg, loc = f"{request.method} is not allowed on {request.url.path}", ["path"]
            elif error.status_code == 400 and "multipart" in msg.lower():
                msg, loc = "the body is not valid multipart/form-data: send the files as form fields", ["body"]
            elif error.status_code in (401, 403):
                loc = ["header", "X-API-Key"]
            content = detail(loc, msg, _HTTP_KIND.get(error.status_code, "http_error"))
        return JSONResponse(status_code=error.status_code, content={"detail": content},
                            headers=getattr(error, "headers", None))


def _short(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "..."
