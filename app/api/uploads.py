"""Reading uploaded files: size limits, format and decodability checked per file, field named on refusal.

A request is checked whole before anything is kept or enqueued, so a refused
request changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import UploadFile

from app.api.errors import ApiError, bad_image_status
from indexing.errors import BadImage
from indexing.images import ImageInput, decode


def read_images(
    files: list[UploadFile] | None,
    *,
    field: str,
    max_image_bytes: int,
    max_pixels: int,
    metadata: dict[str, Any] | None = None,
    required: bool = True,
) -> list[ImageInput]:
    """The uploaded files of one form field as checked `ImageInput`s.

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
            decode(image, max_pixels=max_pixels)
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
