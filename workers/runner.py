"""`CeleryRunner`: jobs whose forward passes run on Celery workers; status on the Redis job board.

Who writes to the store:

- Embedded store (no QDRANT_URL): the store admits one process, so the process
  that opened it (`nominal reindex`, or the API) runs the job's orchestration on
  a thread and is the only writer. It splits the source into batches and sends
  one `nominal.embed_batch` task per batch; workers read the image files (by
  path: they must see the same files), embed them and return the vectors
  through the result backend (base64, ~220 kB per 32 images); this process
  upserts them, checks the new version and moves the alias. A worker that dies
  mid-batch has its task redelivered after the visibility timeout; the waiting
  process just waits longer.
- Qdrant server (QDRANT_URL on every process): the same fan-out, but batches go
  as `nominal.index_batch` and workers upsert straight into the server; only ids
  come back. `submit_reindex(..., detach=True)` sends the whole job as one
  `nominal.reindex` task instead, so the submitting process may exit.

Either way the alias moves once, in the orchestrating process, after the checks.
Index jobs (small uploads) are embedded by the orchestrating thread itself in
the embedded case, and sent to a worker as `nominal.index` with a server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import redis
from celery import Celery
from celery.result import AsyncResult

from indexing.errors import NotConfigured, StoreUnavailable
from indexing.image_store import ImageRef, ImageStore
from indexing.ingest import index_refs, train_refs
from indexing.jobs import Job, JobBoard, new_job, request_cancel
from indexing.reindex import DEFAULT_KEEP_VERSIONS, SourceItem, batch_from_dict, reindex
from indexing.runner import JobQueue
from indexing.service import EmbeddedBatch, NominalService, Skipped
from indexing.settings import CollectionVersion
from indexing.store.base import Point
from workers.celery_app import EMBED_QUEUE

# Workers that write to the server send back ids only.
_NO_VECTOR = np.empty(0, dtype=np.float32)
# How often the orchestrator looks for finished batches, and yields an empty batch
# (a heartbeat) so the job sees a cancel request even while no batch finishes.
POLL_S = 0.05
HEARTBEAT_S = 1.0


class CeleryEmbedder:
    """A `BatchEmbedder` that sends each batch to the `embed` queue and collects the results.

    Args:
        app: the configured Celery app.
        workers_write: True when workers upsert into a Qdrant server themselves.
    """

    def __init__(self, app: Celery, *, workers_write: bool) -> None:
        self.app = app
        self.stores_points = workers_write
        self.builds_patch_bank = False  # workers return global vectors only (indexing/reindex.py)

    def embed(self, version: CollectionVersion, batches: Sequence[Sequence[SourceItem]]) -> Iterator[EmbeddedBatch]:
        task = "nominal.index_batch" if self.stores_points else "nominal.embed_batch"
        pending: list[AsyncResult] = [
            self.app.send_task(task, args=[version.to_dict(), [item.to_dict() for item in batch]], queue=EMBED_QUEUE)
            for batch in batches
        ]
        try:
            last = time.monotonic()
            while pending:
                finished = [result for result in pending if result.ready()]
                for result in finished:
                    pending.remove(result)
                    value = result.get()  # re-raises the task's error
                    result.forget()
                    last = time.monotonic()
                    yield self._batch(value)
                if not finished:
                    if time.monotonic() - last >= HEARTBEAT_S:
                        last = time.monotonic()
                        yield EmbeddedBatch(points=[])
                    time.sleep(POLL_S)
        finally:
            for result in pending:  # abandoned: cancelled, or another batch failed
                result.revoke()
                result.forget()

    def _batch(self, value: dict[str, Any]) -> EmbeddedBatch:
        if not self.stores_points:
            return batch_from_dict(value)
        return EmbeddedBatch(
            points=[Point(id=i, vector=_NO_VECTOR) for i in value["ids"]],
            skipped=[Skipped(**s) for s in value["skipped"]],
        )


class CeleryRunner:
    """A `JobRunner` whose re-index batches run on Celery workers.

    Args:
        service: this process's service; its store is the one versions are built in.
        images: the image store uploads were put in (shared with workers for index jobs).
        board: the Redis job board every process reads.
        app: the configured Celery app.
        workers_write: True with a Qdrant server every worker can reach.
        keep_versions: older versions a re-index keeps for rollback.
    """

    def __init__(
        self,
        service: NominalService,
        images: ImageStore,
        board: JobBoard,
        app: Celery,
        *,
        workers_write: bool,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
    ) -> None:
        self.service = service
        self.images = images
        self.board = board
        self.app = app
        self.workers_write = workers_write
        self.can_detach = workers_write
        self.keep_versions = keep_versions
        self._jobs = JobQueue(board)

    def submit_reindex(
        self, setting: str, source: str, *, backbone: str | None = None, detach: bool = False,
        roots: Sequence[str] | None = None,
    ) -> Job:
        job = new_job("reindex", setting)
        listed = [str(root) for root in roots] if roots is not None else None
        if detach and not self.can_detach:
            raise NotConfigured(
                "a detached re-index needs workers that write to a Qdrant server (QDRANT_URL on every process): "
                "with the embedded store this process runs the job and must wait for it"
            )
        if detach:
            self.board.put(job)
            self.app.send_task("nominal.reindex", args=[job.to_dict(), setting, source, backbone, listed])
            return job
        embedder = CeleryEmbedder(self.app, workers_write=self.workers_write)
        return self._jobs.submit(job, lambda progress: reindex(
            self.service, progress, setting=setting, source=source, backbone=backbone,
            embedder=embedder, keep=self.keep_versions, roots=listed))

    def submit_index(self, setting: str, images: list[ImageRef]) -> Job:
        job = new_job("index", setting, total=len(images))
        if not self.workers_write:
            return self._jobs.submit(job, lambda progress: index_refs(
                self.service, self.images, progress, setting=setting, refs=images))
        self.board.put(job)
        self.app.send_task("nominal.index", args=[job.to_dict(), setting, [r.to_dict() for r in images]])
        return job

    def submit_train(
        self, setting: str, fail: list[ImageRef], passed: list[ImageRef], *, use_feedback: bool = True
    ) -> Job:
        job = new_job("train", setting, total=len(fail) + len(passed))
        if not self.workers_write:  # the embedded store is this process's: it trains here
            return self._jobs.submit(job, lambda progress: train_refs(
                self.service, self.images, progress, setting=setting, fail=fail, passed=passed,
                use_feedback=use_feedback))
        self.board.put(job)
        self.app.send_task("nominal.train", args=[
            job.to_dict(), setting, [r.to_dict() for r in fail], [r.to_dict() for r in passed], use_feedback])
        return job

    def cancel(self, job_id: str) -> Job | None:
        return request_cancel(self.board, job_id)

    def ping(self) -> str | None:
        """The broker (Redis) answers a PING within 2 s; raises `StoreUnavailable` naming it otherwise."""
        url = self.app.conf.broker_url
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        except redis.RedisError as error:
            raise StoreUnavailable(f"broker {_redacted(url)} does not answer ({error})") from error
        finally:
            client.close()
        return "broker"

    def close(self) -> None:
        """Cancel the jobs this process orchestrates and wait for them to stop (see `JobQueue`).

        Jobs handed whole to a worker (`detach`, `nominal.index` with a server) are not this process's: they go on.
        """
        self._jobs.close()
        self.app.close()



def _redacted(url: str) -> str:
    """A broker URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        host = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)
