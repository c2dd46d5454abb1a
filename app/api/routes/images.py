"""Nominal images of a setting: upload (as a job), read back (or a thumbnail), drop."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from PIL import Image

from app.api.deps import AdminAccess, ReadAccess, RuntimeDep
from app.api.errors import ApiError
from app.api.schemas import JobAccepted
from app.api.uploads import form_fields, parse_metadata, read_images
from indexing.images import ImageInput, decode

router = APIRouter(tags=["images"])


@router.post("/v1/settings/{setting}/images", status_code=202, dependencies=[AdminAccess, form_fields("files", "metadata")])
def upload_images(
    setting: str,
    runtime: RuntimeDep,
    files: Annotated[list[UploadFile] | None, File(description="PASS images (JPEG, PNG, BMP, TIFF, WebP).")] = None,
    metadata: Annotated[str | None, Form(description="JSON object stored with every image, e.g. {\"lot\": \"A17\"}.")] = None,
) -> JobAccepted:
    """Add PASS images to the setting's nominal set. Every file is checked first; the embedding runs as a job."""
    runtime.service.get_setting(setting)  # 404 before reading megabytes
    images = read_images(
        files, field="files", max_image_bytes=runtime.config.max_image_bytes,
        max_pixels=runtime.config.max_pixels, metadata=parse_metadata(metadata),
    )
    refs = [runtime.images.put(image) for image in images]
    job = runtime.runner.submit_index(setting, refs)
    return JobAccepted(job_id=job.id, state=job.state, total=job.total, url=f"/v1/jobs/{job.id}")


@router.get(
    "/v1/settings/{setting}/images/{image_id}",
    dependencies=[ReadAccess],
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "The stored nominal image, or a JPEG thumbnail."}},
)
def get_image(
    setting: str,
    image_id: str,
    runtime: RuntimeDep,
    size: Annotated[int | None, Query(ge=16, le=4096, description="Longest side of a JPEG thumbnail.")] = None,
) -> Response:
    """The stored nominal image, so a verdict's neighbours can be shown to a person."""
    point = runtime.service.nominal_image(setting, image_id)
    if point is None:
        raise ApiError(404, ["path", "image_id"], f"no nominal image {image_id!r} in setting {setting!r}", "not_found")
    image = _stored_bytes(runtime, point.payload)
    if image is None:
        raise ApiError(
            404, ["path", "image_id"],
            f"image {image_id} is indexed but its file is not kept here (indexed from {point.payload.get('source')!r} "
            "by another machine): upload it through the API to keep a copy", "file_missing",
        )
    if size is None:
        return Response(image.data, media_type=_media_type(image.data))
    thumbnail = decode(image, max_pixels=runtime.config.max_pixels)
    thumbnail.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=85)
    return Response(buffer.getvalue(), media_type="image/jpeg")


@router.delete("/v1/settings/{setting}/images/{image_id}", status_code=204, dependencies=[AdminAccess])
def delete_image(setting: str, image_id: str, runtime: RuntimeDep) -> Response:
    """Drop a nominal image found to be bad; later verdicts no longer compare against it."""
    if not runtime.service.delete_image(setting, image_id):
        raise ApiError(404, ["path", "image_id"], f"no nominal image {image_id!r} in setting {setting!r}", "not_found")
    return Response(status_code=204)


def _stored_bytes(runtime, payload: dict) -> ImageInput | None:
    sha256 = payload.get("sha256", "")
    if runtime.images.has(sha256):
        return ImageInput(data=runtime.images.path(sha256).read_bytes(), source=payload.get("source", sha256))
    source = Path(str(payload.get("source", "")))
    # Indexed from a local path by the CLI: serve that file if it is still the same content.
    if source.is_file():
        image = ImageInput.from_path(source)
        if image.sha256 == sha256:
            return image
    return None


def _media_type(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as opened:
        return Image.MIME.get(opened.format or "", "application/octet-stream")
