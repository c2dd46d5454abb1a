"""What an index job and a training job do, whoever runs them: load the referenced images, then index
them into the active version (`index_refs`) or train a scorer on them (`train_refs`, `NominalService.train`).

Each function is the body of the in-process job and of the Celery task, so
the embedded default and a deployment with workers behave alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from indexing.errors import BadImage
from indexing.image_store import ImageRef, ImageStore
from indexing.images import ImageInput
from indexing.jobs import JobProgress
from indexing.service import NominalService


def index_refs(
    service: NominalService,
    images: ImageStore,
    progress: JobProgress,
    *,
    setting: str,
    refs: Sequence[ImageRef],
) -> dict[str, Any]:
    """Index referenced PASS images into `setting`; unusable ones are reported on the job, the rest kept.

    Returns:
        The job's result: {"indexed", "skipped", "count", "collection"}.

    Raises:
        BadImage: not one of the images could be used (the job fails, nothing written).
    """
    progress.start(len(refs))
    errors: list[dict[str, str]] = []
    loaded = _loaded(images, refs, errors)
    if not loaded:
        progress.report_errors(errors)
        raise BadImage(setting, f"none of the {len(refs)} images could be read; nothing was indexed")
    result = service.index(setting, loaded, skip_bad=True, progress=progress)
    errors.extend({"source": s.source, "reason": s.reason} for s in result.skipped)
    progress.report_errors(errors)
    if result.indexed == 0:
        raise BadImage(setting, f"none of the {len(refs)} images is usable; nothing was indexed")
    return {"indexed": result.indexed, "skipped": len(errors), "count": result.count, "collection": result.collection}


def train_refs(
    service: NominalService,
    images: ImageStore,
    progress: JobProgress,
    *,
    setting: str,
    fail: Sequence[ImageRef],
    passed: Sequence[ImageRef] = (),
    use_feedback: bool = True,
) -> dict[str, Any]:
    """The training job: load the referenced images and train (`NominalService.train`); the job's result."""
    started = time.perf_counter()
    progress.start(len(fail) + len(passed))
    errors: list[dict[str, str]] = []
    loaded_fail, loaded_pass = _loaded(images, fail, errors), _loaded(images, passed, errors)
    progress.report_errors(errors)
    result = service.train(setting, fail_images=loaded_fail, pass_images=loaded_pass, use_feedback=use_feedback,
                           progress=progress)
    return {**result.to_dict(), "seconds": round(time.perf_counter() - started, 2)}


def _loaded(images: ImageStore, refs: Sequence[ImageRef], errors: list[dict[str, str]]) -> list[ImageInput]:
    """The referenced images this process can read; each one it cannot is added to `errors` with the reason."""
    loaded = []
    for ref in refs:
        try:
            loaded.append(images.load(ref))
        except BadImage as error:
            errors.append({"source": error.source, "reason": error.reason})
    return loaded
