"""`InProcessRunner`: jobs on a background thread of this process, for the embedded default.

With no broker configured, `nominal serve` and `nominal reindex` still answer
202 + a job id and report progress: the work runs here, one job at a time (the
embedded store belongs to this process anyway, and one job keeps the CPU for
the forward pass instead of splitting it). `run_job` is the wrapper every
runner uses to turn a job body's outcome into the job's final state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from indexing.errors import NominalError, NotConfigured
from indexing.image_store import ImageRef, ImageStore
from indexing.ingest import index_refs, train_refs
from indexing.jobs import Job, JobBoard, JobCancelled, JobProgress, StoreJobBoard, new_job, request_cancel
from indexing.reindex import DEFAULT_KEEP_VERSIONS, reindex
from indexing.service import NominalService

log = logging.getLogger(__name__)

JobBody = Callable[[JobProgress], dict[str, Any]]


def cancelled_message(job: Job) -> str:
    """What a cancel left behind, in the job's own terms."""
    if job.kind == "train":
        return "cancelled by request: nothing was recorded and the scorer in use is unchanged"
    if job.kind == "index":
        return (f"cancelled by request: {job.done} of {job.total} images were stored before it stopped "
                "and stay in the nominal set")
    return "cancelled by request; the half-built version was deleted and the active version is unchanged"


def run_job(board: JobBoard, job: Job, body: JobBody) -> Job:
    """Run a job body and record how it ended; never raises for the body's failures.

    A cancel request ends it `cancelled`; a `NominalError` (bad input, unknown
    setting...) ends it `failed` with that message; anything else is a bug: it
    is logged with its traceback and the job fails with a short message.
    """
    current = board.get(job.id) or job
    if current.finished:  # cancelled while queued
        return current
    progress = JobProgress(board, current)
    with board.heartbeat(job.id):
        try:
            result = body(progress)
        except JobCancelled:
            return progress.finish("cancelled", message=cancelled_message(progress.job))
        except NominalError as error:
            return progress.finish("failed", message=str(error))
        except Exception as error:  # noqa: BLE001 - a job must end in a state a user can read
            log.exception("job %s (%s) failed", job.id, job.kind)
            return progress.finish("failed", message=f"internal error: {type(error).__name__}: {error}")
        return progress.finish("succeeded", result=result)


class JobQueue:
    """This process's jobs, run one at a time on a background thread, in submission order.

    `close` asks every job it still holds to cancel before waiting for them: the
    process is going away and the work cannot outlive it, so a running job stops
    at its next batch (its half-built version deleted, the active one untouched)
    and a queued one ends `cancelled` instead of staying `queued` forever. Without
    that, a job waiting on batches that never come back (no worker left, a broker
    that lost its queue) would hold the process open for ever.
    """

    def __init__(self, board: JobBoard) -> None:
        self.board = board
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nominal-job")
        self._held: dict[str, Future[Job]] = {}
        self._lock = threading.Lock()

    def submit(self, job: Job, body: JobBody) -> Job:
        self.board.put(job)
        with self._lock:
            self._held = {i: f for i, f in self._held.items() if not f.done()}
            self._held[job.id] = self._pool.submit(run_job, self.board, job, body)
        return job

    def close(self) -> None:
        """Cancel the jobs still held, then wait for the running one to stop; idempotent."""
        with self._lock:
            held = [job_id for job_id, future in self._held.items() if not future.done()]
        for job_id in held:
            request_cancel(self.board, job_id)
        self._pool.shutdown(wait=True, cancel_futures=True)


class InProcessRunner:
    """Runs jobs one at a time on a background thread; status lives in the store's records.

    Args:
        service: the process's service (its store is the embedded one, or a server).
        images: where uploaded images were put.
        board: job status; defaults to records in the service's store.
        keep_versions: older versions a re-index keeps for rollback.
    """

    def __init__(
        self,
        service: NominalService,
        images: ImageStore,
        board: JobBoard | None = None,
        *,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
    ) -> None:
        self.service = service
        self.images = images
        self.board = board or StoreJobBoard(service.store)
        self.keep_versions = keep_versions
        self._jobs = JobQueue(self.board)

    def submit_index(self, setting: str, images: list[ImageRef]) -> Job:
        job = new_job("index", setting, total=len(images))
        return self._submit(job, lambda progress: index_refs(
            self.service, self.images, progress, setting=setting, refs=images))

    def submit_train(
        self, setting: str, fail: list[ImageRef], passed: list[ImageRef], *, use_feedback: bool = True
    ) -> Job:
        job = new_job("train", setting, total=len(fail) + len(passed))
        return self._submit(job, lambda progress: train_refs(
            self.service, self.images, progress, setting=setting, fail=fail, passed=passed, use_feedback=use_feedback))

    can_detach = False  # the job runs on this process's thread: it ends with the process

    def submit_reindex(
        self, setting: str, source: str, *, backbone: str | None = None, roots: Sequence[str] | None = None,
        detach: bool = False,
    ) -> Job:
        if detach:
            raise NotConfigured(
                "a detached re-index needs workers that write to a Qdrant server (REDIS_URL and QDRANT_URL): "
                "without them this process runs the job and must wait for it"
            )
        job = new_job("reindex", setting)
        return self._submit(job, lambda progress: reindex(
            self.service, progress, setting=setting, source=source, backbone=backbone, keep=self.keep_versions,
            roots=roots))

    def cancel(self, job_id: str) -> Job | None:
        return request_cancel(self.board, job_id)

    def ping(self) -> str | None:
        """Jobs run on a thread of this process: nothing beyond the store to check."""
        return None

    def close(self) -> None:
        """Cancel this runner's unfinished jobs and wait for them to stop (see `JobQueue`)."""
        self._jobs.close()

    def _submit(self, job: Job, body: JobBody) -> Job:
        return self._jobs.submit(job, body)
