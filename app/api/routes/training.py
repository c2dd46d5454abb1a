"""Training a scorer on a setting's labelled defects (a job), and the scorers trained so far.

A trained scorer answers verdicts only where the gate says it measurably helps; the
calibration it is put in use with names it, so the setting's `scorer`, each verdict's
`scorer` and `GET .../calibrations` all say which scorer answers (see indexing/training.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from app.api.deps import AdminAccess, ReadAccess, RuntimeDep
from app.api.schemas import GatePublic, JobAccepted, TrainedListPublic, TrainedPublic
from app.api.uploads import form_fields, read_images

router = APIRouter(tags=["training"])


@router.post("/v1/settings/{setting}/train", status_code=202,
             dependencies=[AdminAccess, form_fields("fail", "pass", "use_feedback")])
def train(
    setting: str,
    runtime: RuntimeDep,
    fail_files: Annotated[list[UploadFile] | None, File(alias="fail", description="Labelled FAIL images (defects).")] = None,
    pass_files: Annotated[list[UploadFile] | None, File(alias="pass", description="PASS images: synthetic (CutPaste) defects are made from them (none: from the nominal set's stored uploads); a patch setting needs at least 10 that are not in its nominal set, which its gate scores as new parts.")] = None,
    use_feedback: Annotated[bool, Form(description="Add the images operators marked FAIL through feedback.")] = True,
) -> JobAccepted:
    """Train a scorer on the setting's labelled defects, as a job; it answers verdicts only if it measurably helps.

    The job's result says whether the trained scorer passed its gate (cross-validated AP on the
    labelled images against the unsupervised scorer) and, if it did, the calibration that put it
    in use. At least 5 distinct labelled FAIL images are needed (given here or marked FAIL by operators).
    A global setting learns a metric projection of its embeddings; a patch setting a DenseHybrid
    head (a per-patch defect score added to the patch distance).
    """
    limits = {"max_image_bytes": runtime.config.max_image_bytes, "max_pixels": runtime.config.max_pixels}
    fail_images = read_images(fail_files, field="fail", required=False, **limits)
    pass_images = read_images(pass_files, field="pass", required=False, **limits)
    runtime.service.check_trainable(setting, fail_given=len({i.sha256 for i in fail_images}), use_feedback=use_feedback)
    fail_refs = [runtime.images.put(image) for image in fail_images]
    pass_refs = [runtime.images.put(image) for image in pass_images]
    job = runtime.runner.submit_train(setting, fail_refs, pass_refs, use_feedback=use_feedback)
    return JobAccepted(job_id=job.id, state=job.state, total=job.total, url=f"/v1/jobs/{job.id}")


@router.get("/v1/settings/{setting}/trained", dependencies=[ReadAccess])
def trained(setting: str, runtime: RuntimeDep) -> TrainedListPublic:
    """The setting's trained scorers, newest first, each with its gate; `in_use` marks the one verdicts use."""
    scorers = runtime.service.trained_scorers(setting)
    in_use = runtime.service.status(setting).scorer
    return TrainedListPublic(trained=[
        TrainedPublic(**{**s.summary(), "gate": GatePublic(**s.gate)}, in_use=s.scoring == in_use) for s in scorers
    ])
