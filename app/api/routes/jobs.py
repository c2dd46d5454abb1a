"""Long-running work: status, progress, errors, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminAccess, ReadAccess, RuntimeDep
from app.api.errors import ApiError
from app.api.schemas import JobPublic, JobsPublic

router = APIRouter(tags=["jobs"])


@router.get("/v1/jobs", dependencies=[ReadAccess])
def list_jobs(runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> JobsPublic:
    """The most recent jobs first."""
    return JobsPublic(jobs=[JobPublic.of(job) for job in runtime.runner.board.list(limit=limit)])


@router.get("/v1/jobs/{job_id}", dependencies=[ReadAccess])
def get_job(job_id: str, runtime: RuntimeDep) -> JobPublic:
    job = runtime.runner.board.get(job_id)
    if job is None:
        raise ApiError(404, ["path", "job_id"], f"no job {job_id!r}", "not_found")
    return JobPublic.of(job)


@router.delete("/v1/jobs/{job_id}", dependencies=[AdminAccess])
def cancel_job(job_id: str, runtime: RuntimeDep) -> JobPublic:
    """Cancel a job: a queued one at once, a running one at its next batch (it keeps what the store had before)."""
    job = runtime.runner.cancel(job_id)
    if job is None:
        raise ApiError(404, ["path", "job_id"], f"no job {job_id!r}", "not_found")
    return JobPublic.of(job)
