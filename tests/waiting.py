"""Waiting for a submitted job to finish, whichever runner and board it went through."""

from __future__ import annotations

import time

from indexing.jobs import Job, JobBoard


def wait_for_job(board: JobBoard, job: Job, *, timeout: float = 180.0) -> Job:
    """The job's final status; AssertionError if it has not finished within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = board.get(job.id)
        if current is not None and current.finished:
            return current
        time.sleep(0.05)
    raise AssertionError(f"job {job.id} ({job.kind}) did not finish in {timeout} s")
