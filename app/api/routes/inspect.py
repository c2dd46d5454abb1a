"""Verdicts and nearest nominal neighbours for uploaded images."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile

from app.api.deps import ReadAccess, RuntimeDep
from app.api.errors import ApiError, bad_image_status
from app.api.runtime import ApiRuntime, off_the_loop
from app.api.schemas import InspectPublic, NeighboursOfImage, NeighboursPublic, NeighbourPublic, VerdictPublic
from app.api.uploads import form_fields, read_images
from indexing.errors import BadImage
from indexing.images import ImageInput, decode

router = APIRouter(tags=["inspect"], dependencies=[ReadAccess])

FilesField = Annotated[list[UploadFile] | None, File(description="One or more images (JPEG, PNG, BMP, TIFF, WebP).")]
KField = Annotated[int | None, Form(ge=1, le=1000, description="Neighbours to use (default: the setting's k).")]
# `k` may come in the query string too (`?k=5`): refused there when out of range, never ignored.
KQuery = Annotated[int | None, Query(alias="k", ge=1, le=1000, description="Same as the form field `k`.")]


@router.post("/v1/settings/{setting}/inspect", dependencies=[form_fields("files", "k", "heatmap")])
async def inspect(
    setting: str,
    runtime: RuntimeDep,
    files: FilesField = None,
    k: KField = None,
    k_query: KQuery = None,
    heatmap: Annotated[bool, Form(description="Patch-scoring settings: add each image's heat map.")] = False,
) -> InspectPublic:
    """PASS, FAIL or UNCALIBRATED for each file, with score, threshold, calibration id and nearest nominal images.

    In a patch-scoring setting the neighbours hold the patches closest to the
    most anomalous region, and `heatmap=true` adds where the image differs.
    """

    def work() -> list:
        images = _checked_upload(runtime, setting, files)
        with _bad_file_named(images):
            return runtime.service.inspect(setting, images, k=k or k_query, heatmap=heatmap)

    verdicts = await off_the_loop(work)
    for verdict in verdicts:
        runtime.metrics.verdicts.labels(setting, verdict.verdict).inc()
        runtime.metrics.inference.labels(setting).observe(verdict.elapsed_ms / 1000.0)
    return InspectPublic(results=[VerdictPublic.of(setting, v) for v in verdicts])


@router.post("/v1/settings/{setting}/neighbors", dependencies=[form_fields("files", "k")])
async def neighbours(setting: str, runtime: RuntimeDep, files: FilesField = None, k: KField = None,
                     k_query: KQuery = None) -> NeighboursPublic:
    """The k nearest nominal images of each file, without a verdict."""

    def work() -> tuple[list[ImageInput], list]:
        images = _checked_upload(runtime, setting, files)
        with _bad_file_named(images):
            return images, runtime.service.neighbours(setting, images, k=k or k_query)

    images, found = await off_the_loop(work)
    return NeighboursPublic(results=[
        NeighboursOfImage(source=image.source, neighbors=[NeighbourPublic.of(setting, n) for n in near])
        for image, near in zip(images, found)
    ])


def _checked_upload(runtime: ApiRuntime, setting: str, files: list[UploadFile] | None) -> list[ImageInput]:
    runtime.service.get_setting(setting)  # 404 before decoding anything
    return read_images(files, field="files", max_image_bytes=runtime.config.max_image_bytes,
                       max_pixels=runtime.config.max_pixels, full_decode=False)


@contextmanager
def _bad_file_named(images: list[ImageInput]) -> Iterator[None]:
    """A file the header check passed but the full decode refused (truncated) gets the same `loc`,
    ["body", "files", index], as on every other route."""
    try:
        yield
    except BadImage as error:
        index = next((i for i, image in enumerate(images) if not _decodes(image)), 0)
        raise ApiError(bad_image_status(error), ["body", "files", index], f"{images[index].source}: {error.reason}",
                       "bad_image") from error


def _decodes(image: ImageInput) -> bool:
    try:
        decode(image)
    except BadImage:
        return False
    return True
