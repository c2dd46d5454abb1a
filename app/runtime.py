"""Builds the store and service a process runs on, from its `Config`.

The choice between the embedded store and a Qdrant server is made here and
only here; so is the choice between running jobs in-process and on Celery
workers (REDIS_URL).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from app.config import Config
from indexing.backbones import load_backbone
from indexing.errors import NotConfigured
from indexing.history import History
from indexing.image_store import ImageStore
from indexing.jobs import JobBoard, JobRunner, StoreJobBoard, fail_interrupted_jobs
from indexing.runner import InProcessRunner
from indexing.service import BackbonePool, NominalService
from indexing.store import VectorStore, open_store


def open_configured_store(config: Config) -> VectorStore:
    if config.qdrant_url:
        return open_store(
            qdrant_url=config.qdrant_url, qdrant_api_key=config.qdrant_api_key,
            shard_number=config.qdrant_shards, replication_factor=config.qdrant_replicas,
        )
    return open_store(data_dir=config.data)


def backbone_pool(config: Config) -> BackbonePool:
    return BackbonePool(partial(load_backbone, device=config.device, weights_dir=config.weights_dir))


def build_history(config: Config) -> History:
    """The inspection history (`indexing.history`): opened on first use, so building it costs nothing."""
    return History(
        config.history_root, keep_days=config.keep_inspections_days, max_bytes=config.max_inspection_bytes,
        near=config.near_threshold,
    )


def build_service(
    config: Config, store: VectorStore, pool: BackbonePool | None = None, *, history: History | None = None
) -> NominalService:
    """The service; unless NOMINAL_RECORD_HISTORY is off, every verdict it makes is recorded in `history`."""
    service = NominalService(
        store,
        backbones=pool or backbone_pool(config),
        default_backbone=config.backbone,
        max_pixels=config.max_pixels,
        batch_size=config.batch_size,
        images=ImageStore(config.image_root),
    )
    if config.record_history:
        service.on_verdicts.append((history or build_history(config)).hook)
    return service


@contextmanager
def service_for(config: Config) -> Iterator[NominalService]:
    """A service over the configured store, closed (and its lock released) on exit."""
    store = open_configured_store(config)
    try:
        yield build_service(config, store)
    finally:
        store.close()


def job_board(config: Config, store: VectorStore | None = None) -> JobBoard:
    """Where job status lives: Redis with REDIS_URL (every process sees it), else the store's records.

    On the embedded store, jobs a dead process left unfinished are marked interrupted first:
    build one board per process, before any job of its own is submitted.
    """
    if config.redis_url:
        from workers.board import RedisJobBoard

        return RedisJobBoard.from_url(config.redis_url, config.redis_prefix)
    if store is None:
        raise NotConfigured("job status without REDIS_URL lives in the store: open it first")
    board = StoreJobBoard(store)
    if not config.qdrant_url:
        # This process owns the embedded store, so jobs it records as unfinished were a dead process's.
        # Here, not on every store open: it reads every job record, and only job readers and runners need it.
        fail_interrupted_jobs(board)
    return board


def build_runner(config: Config, service: NominalService) -> JobRunner:
    """Where long work runs: Celery workers when REDIS_URL is set, else a thread of this process (embedded default)."""
    if not config.redis_url:
        return InProcessRunner(
            service, ImageStore(config.image_root), job_board(config, service.store), keep_versions=config.keep_versions
        )
    from workers.celery_app import make_app
    from workers.runner import CeleryRunner

    return CeleryRunner(
        service,
        ImageStore(config.image_root),
        job_board(config),
        make_app(config),
        workers_write=config.qdrant_url is not None,
        keep_versions=config.keep_versions,
    )
