"""Operator labels: what one does (feedback), and the review queue that asks for them.

One path for every label, whichever edge it comes from (POST .../feedback with an
image, POST .../review/{id} on a recorded inspection, `nominal review`, the page):

- **PASS** (a false alarm): the image joins the nominal set, through an index job.
- **FAIL** (a missed or confirmed defect): the image is kept with the label, and the
  next calibration (`NominalService.calibrate`, `use_feedback`) scores it as a FAIL.

The review queue (`indexing.history`: near-threshold and FAIL verdicts sampled under a
rate cap) hands the operator recorded verdicts whose image is still kept; `review`
labels one of them (or skips it) through the same `give_feedback`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from indexing.errors import AlreadyReviewed, ImageNotKept, UnknownInspection
from indexing.history import REVIEW_LABELS, History, Inspection
from indexing.image_store import ImageRef, ImageStore
from indexing.images import ImageInput
from indexing.jobs import Job, JobRunner

if TYPE_CHECKING:
    from indexing.service import NominalService

FALSE_ALARM = "false alarm noted: the image joins the nominal set when the job finishes"
MISSED_DEFECT = "missed defect noted: the image is used as a FAIL example in the next calibration and training"


@dataclass(frozen=True)
class Feedback:
    """A label given: the kept image's reference and, for PASS, the job adding it to the nominal set."""

    label: str
    ref: ImageRef
    job: Job | None
    message: str


@dataclass(frozen=True)
class Reviewed:
    """A review answer: the inspection as it now stands, and the feedback given (None when skipped)."""

    inspection: Inspection
    feedback: Feedback | None


def give_feedback(
    service: "NominalService", images: ImageStore, runner: JobRunner, setting: str, image: ImageInput, label: str
) -> Feedback:
    """Label an image of a setting PASS or FAIL (module docstring): keep it, record the label, index a PASS."""
    ref = images.put(image)
    service.record_label(setting, ref.to_dict(), label)
    if label == "PASS":
        return Feedback(label=label, ref=ref, job=runner.submit_index(setting, [ref]), message=FALSE_ALARM)
    return Feedback(label=label, ref=ref, job=None, message=MISSED_DEFECT)


def review(
    history: History,
    service: "NominalService",
    images: ImageStore,
    runner: JobRunner,
    setting: str,
    inspection_id: int,
    label: str,
) -> Reviewed:
    """Answer one recorded inspection: PASS or FAIL feed calibration (`give_feedback`), skip only takes it off the queue.

    Any inspection that still keeps its image can be labelled, queued or not; each is answered once.

    Raises:
        ValueError: a label other than PASS, FAIL or skip.
        UnknownSetting, UnknownInspection: no such setting or inspection.
        AlreadyReviewed: it was answered before (the first answer stands).
        ImageNotKept: PASS or FAIL for an inspection whose image retention deleted.
    """
    if label not in REVIEW_LABELS:
        raise ValueError(f"label must be one of {', '.join(REVIEW_LABELS)}, got {label!r}")
    service.get_setting(setting)
    item = history.get(setting, inspection_id)
    if item is None:
        raise UnknownInspection(setting, inspection_id)
    if item.review not in (None, "queued"):
        raise AlreadyReviewed(setting, inspection_id, item.review)
    feedback = None
    if label != "skip":
        path = history.image_path(item)
        if path is None:
            raise ImageNotKept(setting, inspection_id)
        feedback = give_feedback(service, images, runner, setting, ImageInput(data=path.read_bytes(), source=item.source),
                                 label)
    if not history.set_review(setting, inspection_id, label):
        # Another operator answered in between; a PASS or FAIL given twice only repeats the same label.
        raise AlreadyReviewed(setting, inspection_id, (history.get(setting, inspection_id) or item).review or "?")
    return Reviewed(inspection=history.get(setting, inspection_id) or item, feedback=feedback)
