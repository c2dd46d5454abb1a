"""Long-running work (indexing uploads, re-indexing, calibrating) and its visible status.

A `Job` is what a user polls: state, done/total, rate, ETA, and one error per
bad image. A `JobBoard` is where job status lives: `StoreJobBoard` keeps it as
records in the vector store (embedded default: it survives restarts with the
data), and the workers package adds one on Redis so the API, the CLI and every
worker see the same status.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from indexing.errors import InvalidName
from indexing.image_store import ImageRef
from indexing.store.base import Records

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
JOB_KIND = "job"
# A job lists at most this many bad images; the count of the rest is kept.
MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    setting: str
    state: JobState = "queued"
    done: int = 0
    total: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    error_count: int = 0
    result: dict[str, Any] | None = None
    message: str | None = None
    cancel_requested: bool = False
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def rate(self) -> float | None:
        """Items per second since the job started."""
        if self.started_at is None or self.done == 0:
            return None
        elapsed = (self.finished_at or time.time()) - self.started_at
        return self.done / elapsed if elapsed > 0 else None

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        if self.finished or rate is None or self.total <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate, "eta_s": self.eta_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def new_job(kind: str, setting: str, total: int = 0) -> Job:
    return Job(id=uuid.uuid4().hex, kind=kind, setting=setting, total=total)


def with_errors(job: Job, errors: list[dict[str, str]]) -> Job:
    room = max(MAX_REPORTED_ERRORS - len(job.errors), 0)
    return replace(job, errors=job.errors + errors[:room], error_count=job.error_count + len(errors))


class JobBoard(Protocol):
    def put(self, job: Job) -> None:
        """Store a job's full status, replacing the previous one."""

    def get(self, job_id: str) -> Job | None:
        """The job's status; a running job whose process died reads as failed, `interrupted: ...`."""

    def list(self, *, limit: int = 50) -> list[Job]:
        """Most recent first."""

    def heartbeat(self, job_id: str) -> AbstractContextManager[None]:
        """Held by the process running the job, for as long as it runs it: how readers tell it is alive."""


class StoreJobBoard:
    """Job status as records in the vector store, so it survives a restart with the data."""

    def __init__(self, store: Records) -> None:
        self._store = store
        self._lock = threading.Lock()

    def put(self, job: Job) -> None:
        with self._lock:
            self._store.put_record(JOB_KIND, job.id, job.to_dict())

    def get(self, job_id: str) -> Job | None:
        try:
            record = self._store.get_record(JOB_KIND, job_id)
        except (InvalidName, ValueError):  # not a valid key, so no such job
            return None
        return Job.from_dict(record) if record else None

    def list(self, *, limit: int = 50) -> list[Job]:
        jobs = [Job.from_dict(r) for r in self._store.list_records(JOB_KIND)]
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)[:limit]

    def heartbeat(self, job_id: str) -> AbstractContextManager[None]:
        # Nothing to beat: only the process that owns the store runs its jobs, and a dead
        # owner's jobs are found by the next owner to read or run jobs (`fail_interrupted_jobs`).
        return nullcontext()


class JobCancelled(Exception):
    """Raised inside a job's work when a user asked to cancel it."""


class JobProgress:
    """Reports a running job's progress to its board; the service's `progress` callback.

    Checks for a cancel request at each report so the work stops between batches.
    """

    def __init__(self, board: JobBoard, job: Job) -> None:
        self.board = board
        self.job = job

    def start(self, total: int | None = None) -> None:
        self._save(state="running", started_at=time.time(), total=self.job.total if total is None else total)

    def __call__(self, stage: str, done: int, total: int) -> None:
        # What was done is recorded before a cancel is honoured: a cancelled upload says what it stored.
        self._save(done=done, total=total, message=stage)
        if self.job.cancel_requested:
            raise JobCancelled(self.job.id)

    def report_errors(self, errors: list[dict[str, str]]) -> None:
        if errors:
            self.job = with_errors(self.job, errors)
            self.board.put(self.job)

    def finish(self, state: JobState, *, result: dict[str, Any] | None = None, message: str | None = None) -> Job:
        self._save(state=state, result=result, message=message, finished_at=time.time())
        return self.job

    def _save(self, **changes: Any) -> None:
        current = self.board.get(self.job.id)
        cancel = current.cancel_requested if current is not None else self.job.cancel_requested
        self.job = replace(self.job, cancel_requested=cancel, **changes)
        self.board.put(self.job)


def request_cancel(board: JobBoard, job_id: str) -> Job | None:
    """Ask a job to stop; a queued job is cancelled at once, a running one at its next batch."""
    job = board.get(job_id)
    if job is None or job.finished:
        return job
    if job.state == "queued":
        job = replace(job, state="cancelled", cancel_requested=True, finished_at=time.time())
    else:
        job = replace(job, cancel_requested=True)
    board.put(job)
    return job


def fail_interrupted_jobs(board: JobBoard) -> list[Job]:
    """Mark the jobs a dead process left queued or running as failed, saying so; returns them.

    Call only where no other process can be running them: on the embedded store's
    board, in the process that opened the store (the only one that can, so an
    unfinished job there is a dead owner's), before it submits jobs of its own.
    A re-index's half-built version is deleted by the setting's next re-index.
    Without this, `nominal jobs` and `GET /v1/jobs/{id}` would show such a job
    `running` for ever.
    """
    ended = [interrupted(job) for job in board.list(limit=sys.maxsize) if not job.finished]
    for job in ended:
        board.put(job)
    return ended


def interrupted(job: Job) -> Job:
    """`job` as failed because the process running it died."""
    return replace(
        job, state="failed", finished_at=time.time(),
        message="interrupted: the process running it stopped before the job finished; "
        "submitting it again is safe (a re-index left the active version as it was)",
    )


class JobRunner(Protocol):
    """Where long work is sent: `InProcessRunner` (embedded default) or the Celery runner in `workers/`.

    Both write status to `board`, so `GET /v1/jobs/{id}` and `nominal jobs` read
    the same thing whichever runs the work. Submitting returns at once with the
    job queued; images travel as `ImageRef`s into an `ImageStore`, never as bytes.
    """

    board: JobBoard
    # Whether a job may be handed whole to another process (`detach=True`), so the submitting
    # process can exit: only when workers can write to the store themselves (a Qdrant server).
    can_detach: bool

    def submit_index(self, setting: str, images: list[ImageRef]) -> Job:
        """Embed and add PASS images to the setting's active version; bad images are skipped and listed."""
        ...

    def submit_train(
        self, setting: str, fail: list[ImageRef], passed: list[ImageRef], *, use_feedback: bool = True
    ) -> Job:
        """Train a scorer on labelled FAIL images (and PASS images for synthetic defects); see `NominalService.train`."""
        ...

    def submit_reindex(
        self, setting: str, source: str, *, backbone: str | None = None, roots: Sequence[str] | None = None,
        detach: bool = False,
    ) -> Job:
        """Build a new version of the setting from a source (folder, glob, manifest CSV) and switch to it.

        See `indexing.reindex.reindex`; inspections use the old version until the switch.
        `roots`: the directories every file the job reads must lie in (None: no limit);
        checked where each file is opened, not only now. `detach`: hand the whole job to
        another process (`NotConfigured` unless `can_detach`).
        """
        ...

    def cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop (see `request_cancel`); None if there is no such job."""
        ...

    def ping(self) -> str | None:
        """Check what the runner needs beyond the store (a broker) answers; for readiness.

        Returns the name of what was checked ("broker"), or None when the runner needs
        nothing else. Raises (any exception, its message saying why) when it does not answer.
        """
        ...

    def close(self) -> None:
        """Stop taking work; an in-process runner waits for the job it is running."""
        ...
