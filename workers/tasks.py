"""Celery tasks, named `nominal.<verb>`: each takes references and makes one call into `indexing/`.

- `nominal.embed_batch`: read, decode and embed a batch of image paths; returns the
  points (vectors as base64) for the process that owns an embedded store to upsert.
- `nominal.index_batch`: the same, written straight to the Qdrant server (QDRANT_URL).
- `nominal.index`, `nominal.reindex`: a whole job on one worker,
  status on the Redis job board (Qdrant server deployments only: an embedded store
  belongs to the process that opened it).

Models are built in each worker process after the fork (`worker_process_init`):
a torch model built in the parent hangs prefork children (shared NOTES). On CPU,
each child gets its share of the cores in torch threads (one when there are as
many children as cores); on CUDA, batches are larger.

Retries: only `StoreUnavailable` (the Qdrant server or Redis briefly away) is
retried; every other error is the job's answer. Batch tasks are idempotent
(content-derived point ids), which is what makes late acks safe.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.signals import worker_process_init

from deployment.config import Config
from deployment.services import backbone_pool, build_service, open_configured_store
from indexing.errors import NotConfigured, StoreUnavailable
from indexing.image_store import ImageRef, ImageStore
from indexing.ingest import index_refs, train_refs
from indexing.jobs import Job
from indexing.reindex import SourceItem, batch_to_dict, embed_items, reindex
from indexing.runner import run_job
from indexing.embedder import Embedder
from indexing.service import NominalService
from indexing.settings import CollectionVersion
from workers.board import RedisJobBoard
from workers.celery_app import app, current_config

log = logging.getLogger(__name__)

# Images per forward pass on a GPU worker; CPU workers use NOMINAL_BATCH_SIZE.
CUDA_BATCH_SIZE = 128

_RETRY = {"autoretry_for": (StoreUnavailable,), "retry_backoff": True, "retry_backoff_max": 60, "max_retries": 8}


@dataclass
class WorkerState:
    """What one worker process builds once, after the fork.

    `embedder` always (batches are embedded here); `service` only with a Qdrant server
    (QDRANT_URL), where workers write: an embedded store belongs to the process that opened it.
    """

    config: Config
    embedder: Embedder
    service: NominalService | None
    board: RedisJobBoard


_state: WorkerState | None = None


@worker_process_init.connect
def _build_after_fork(**kwargs: Any) -> None:
    # Here, in the child, after the fork: a model built in the parent hangs prefork children.
    try:
        state = worker_state()
        state.embedder.backbones.get(state.config.backbone)  # the usual model, loaded before the first task
    except Exception:  # noqa: BLE001 - a child that dies here is re-forked forever; the task reports it instead
        log.exception("worker process %d could not load its model; tasks will say why", os.getpid())


def worker_state() -> WorkerState:
    """This process's service (store only with QDRANT_URL) and job board, built on first use."""
    global _state
    if _state is None:
        import torch

        config = current_config()
        on_cuda = torch.cuda.is_available() and (config.device or "cuda").startswith("cuda")
        if not on_cuda:
            children = app.conf.worker_concurrency or os.cpu_count() or 1
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // children))
        batch_size = max(config.batch_size, CUDA_BATCH_SIZE) if on_cuda else config.batch_size
        # A worker owns no embedded store (the process that opened it does); it writes only to a server.
        service = None
        if config.qdrant_url:
            service = build_service(config, open_configured_store(config), backbone_pool(config))
            service.batch_size = batch_size
            embedder = service.embedder
        else:
            embedder = Embedder(backbone_pool(config), max_pixels=config.max_pixels, batch_size=batch_size)
        _state = WorkerState(
            config=config, embedder=embedder, service=service,
            board=RedisJobBoard.from_url(config.redis_url or "", config.redis_prefix),
        )
        log.info("nominal worker process %d ready (torch threads %d, cuda %s)", os.getpid(), torch.get_num_threads(), on_cuda)
    return _state


@app.task(name="nominal.embed_batch", **_RETRY)
def embed_batch(version: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """Points for a batch of image paths, embedded with the version's backbone; nothing stored."""
    embedder = worker_state().embedder
    return batch_to_dict(embed_items(embedder, CollectionVersion.from_dict(version), [SourceItem.from_dict(i) for i in items]))


@app.task(name="nominal.index_batch", **_RETRY)
def index_batch(version: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """Embed a batch and upsert it into the version's collection on the Qdrant server; returns ids and skips."""
    service = _server_service()
    target = CollectionVersion.from_dict(version)
    batch = embed_items(service.embedder, target, [SourceItem.from_dict(i) for i in items])
    if batch.points:
        service.add_points(target, batch.points)
    return {"ids": [p.id for p in batch.points], "skipped": [{"source": s.source, "reason": s.reason} for s in batch.skipped]}


class _JobTask(Task):
    # A whole job runs for minutes or hours, longer than the visibility timeout: acknowledged on
    # receipt so Redis does not hand it to a second worker while the first still runs it. A worker
    # dying mid-job leaves the alias where it was, and its job reads as interrupted once the
    # heartbeat `run_job` keeps on the board lapses (`RedisJobBoard.heartbeat`).
    acks_late = False


@app.task(name="nominal.reindex", base=_JobTask)
def reindex_job(
    job: dict[str, Any], setting: str, source: str, backbone: str | None = None, roots: list[str] | None = None
) -> dict[str, Any]:
    state = worker_state()
    service = _server_service()
    body = lambda progress: reindex(  # noqa: E731
        service, progress, setting=setting, source=source, backbone=backbone, keep=state.config.keep_versions,
        roots=roots,
    )
    return run_job(state.board, Job.from_dict(job), body).to_dict()


@app.task(name="nominal.index", base=_JobTask)
def index_job(job: dict[str, Any], setting: str, refs: list[dict[str, Any]]) -> dict[str, Any]:
    state = worker_state()
    service = _server_service()
    images = ImageStore(state.config.image_root)
    body = lambda progress: index_refs(  # noqa: E731
        service, images, progress, setting=setting, refs=[ImageRef.from_dict(r) for r in refs]
    )
    return run_job(state.board, Job.from_dict(job), body).to_dict()


@app.task(name="nominal.train", base=_JobTask)
def train_job(
    job: dict[str, Any], setting: str, fail: list[dict[str, Any]], passed: list[dict[str, Any]], use_feedback: bool = True
) -> dict[str, Any]:
    state = worker_state()
    service = _server_service()
    images = ImageStore(state.config.image_root)
    body = lambda progress: train_refs(  # noqa: E731
        service, images, progress, setting=setting, fail=[ImageRef.from_dict(r) for r in fail],
        passed=[ImageRef.from_dict(r) for r in passed], use_feedback=use_feedback,
    )
    return run_job(state.board, Job.from_dict(job), body).to_dict()


def _server_service() -> NominalService:
    state = worker_state()
    if state.service is None:
        raise NotConfigured(
            "this worker has no store to write to: set QDRANT_URL on workers, or let the process that owns "
            "the embedded store write (it sends nominal.embed_batch)"
        )
    return state.service
