"""Reading uploaded files: size limits, format and decodability checked per file, field named on refusal.

A request is checked whole before anything is kept or enqueued, so a refused
request changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Depends, Request, UploadFile
from fastapi.params import Depends as DependsParam

from app.api.errors import ApiError, bad_image_status
from indexing.errors import BadImage
from indexing.images import ImageInput, check_header, decode


def read_images(
    files: list[UploadFile] | None,
    *,
    field: str,
    max_image_bytes: int,
    max_pixels: int,
    metadata: dict[str, Any] | None = None,
    required: bool = True,
    full_decode: bool = True,
) -> list[ImageInput]:
    """The uploaded files of one form field as checked `ImageInput`s.

    `full_decode=False` checks only what the header tells (format, pixels, size):
    for requests that write nothing (inspect), where the service's own decode
    still refuses a truncated file, and decoding twice would cost latency.

    Raises:
        ApiError: 422 no file given (when required); 413 a file over the byte or
            pixel limit; 415 not an accepted image format; 422 truncated or too small.
            `loc` is ["body", field, index].
    """
    files = files or []
    if required and not files:
        raise ApiError(422, ["body", field], f"no file given: send one or more image files in the field {field!r}", "missing")
    images = []
    for index, upload in enumerate(files):
        loc: list[str | int] = ["body", field, index]
        name = upload.filename or f"{field}[{index}]"
        if upload.size is not None and upload.size > max_image_bytes:
            raise ApiError(413, loc, f"{name}: {upload.size:,} bytes is above the limit of {max_image_bytes:,} per image", "too_large")
        data = upload.file.read(max_image_bytes + 1)
        if len(data) > max_image_bytes:
            raise ApiError(413, loc, f"{name}: above the limit of {max_image_bytes:,} bytes per image", "too_large")
        image = ImageInput(data=data, source=name, metadata=dict(metadata or {}))
        try:
            (decode if full_decode else check_header)(image, max_pixels=max_pixels)
        except BadImage as error:
            raise ApiError(bad_image_status(error), loc, f"{name}: {error.reason}", "bad_image") from error
        images.append(image)
    return images


def parse_metadata(text: str | None, *, field: str = "metadata") -> dict[str, Any]:
    """A form field holding a JSON object (user metadata for every uploaded file)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(422, ["body", field], f"not valid JSON ({error.msg}): send a JSON object", "json_invalid") from error
    if not isinstance(value, dict):
        raise ApiError(422, ["body", field], "must be a JSON object, e.g. {\"lot\": \"A17\"}", "json_invalid")
    return value


def form_fields(*names: str, at_least_one: bool = False) -> DependsParam:
    """A route dependency: the body is a form holding only `names`; with `at_least_one`, not empty.

    A misspelt field (`files` for `pass`) or a JSON body is refused (422, `loc` naming it)
    instead of being ignored: a request that means something else must not quietly do less.
    """
    listed = ", ".join(repr(name) for name in names)

    async def check(request: Request) -> None:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind and at_least_one:
            raise ApiError(422, ["body"], f"nothing to do: give at least one of the fields {listed}", "missing")
        if kind and kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise ApiError(422, ["body"], f"send multipart/form-data with the fields {listed}, not {kind}", "form_expected")
        if not kind:
            return
        form = await request.form()  # parsed once: FastAPI reads the fields from the same cache
        unknown = [key for key in dict.fromkeys(form.keys()) if key not in names]
        if unknown:
            raise ApiError(422, ["body", unknown[0]], f"unknown field {unknown[0]!r}: this operation takes {listed}",
                           "unknown_field")
        if at_least_one and not any(form.getlist(name) for name in names):
            raise ApiError(422, ["body"], f"nothing to do: give at least one of the fields {listed}", "missing")

    return Depends(check)
