"""What an index job does, whoever runs it: load referenced images, embed, add to the active version.

The same function is the body of the in-process job and of the Celery task, so
the embedded default and a deployment with workers behave alike.
"""

from __future__ import annotations

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
    loaded: list[ImageInput] = []
    errors: list[dict[str, str]] = []
    for ref in refs:
        try:
            loaded.append(images.load(ref))
        except BadImage as error:
            errors.append({"source": error.source, "reason": error.reason})
    if not loaded:
        progress.report_errors(errors)
        raise BadImage(setting, f"none of the {len(refs)} images could be read; nothing was indexed")
    result = service.index(setting, loaded, skip_bad=True, progress=progress)
    errors.extend({"source": s.source, "reason": s.reason} for s in result.skipped)
    progress.report_errors(errors)
    if result.indexed == 0:
        raise BadImage(setting, f"none of the {len(refs)} images is usable; nothing was indexed")
    return {"indexed": result.indexed, "skipped": len(errors), "count": result.count, "collection": result.collection}
