"""Verdicts and nearest nominal neighbours for uploaded images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from app.api.deps import ReadAccess, RuntimeDep
from app.api.runtime import ApiRuntime, off_the_loop
from app.api.schemas import InspectPublic, NeighboursOfImage, NeighboursPublic, NeighbourPublic, VerdictPublic
from app.api.uploads import read_images
from indexing.images import ImageInput

router = APIRouter(tags=["inspect"], dependencies=[ReadAccess])

FilesField = Annotated[list[UploadFile] | None, File(description="One or more images (JPEG, PNG, BMP, TIFF, WebP).")]
KField = Annotated[int | None, Form(ge=1, le=1000, description="Neighbours to use (default: the setting's k).")]


@router.post("/v1/settings/{setting}/inspect")
async def inspect(
    setting: str,
    runtime: RuntimeDep,
    files: FilesField = None,
    k: KField = None,
    heatmap: Annotated[bool, Form(description="Patch-scoring settings: add each image's heat map.")] = False,
) -> InspectPublic:
    """PASS, FAIL or UNCALIBRATED for each file, with score, threshold, calibration id and nearest nominal images.

    In a patch-scoring setting the neighbours hold the patches closest to the
    most anomalous region, and `heatmap=true` adds where the image differs.
    """

    def work() -> list:
        return runtime.service.inspect(setting, _checked_upload(runtime, setting, files), k=k, heatmap=heatmap)

    verdicts = await off_the_loop(work)
    for verdict in verdicts:
        runtime.metrics.verdicts.labels(setting, verdict.verdict).inc()
        runtime.metrics.inference.labels(setting).observe(verdict.elapsed_ms / 1000.0)
    return InspectPublic(results=[VerdictPublic.of(setting, v) for v in verdicts])


@router.post("/v1/settings/{setting}/neighbors")
async def neighbours(setting: str, runtime: RuntimeDep, files: FilesField = None, k: KField = None) -> NeighboursPublic:
    """The k nearest nominal images of each file, without a verdict."""

    def work() -> tuple[list[ImageInput], list]:
        images = _checked_upload(runtime, setting, files)
        return images, runtime.service.neighbours(setting, images, k=k)

    images, found = await off_the_loop(work)
    return NeighboursPublic(results=[
        NeighboursOfImage(source=image.source, neighbors=[NeighbourPublic.of(setting, n) for n in near])
        for image, near in zip(images, found)
    ])


def _checked_upload(runtime: ApiRuntime, setting: str, files: list[UploadFile] | None) -> list[ImageInput]:
    runtime.service.get_setting(setting)  # 404 before decoding anything
    return read_images(files, field="files", max_image_bytes=runtime.config.max_image_bytes,
                       max_pixels=runtime.config.max_pixels, full_decode=False)
