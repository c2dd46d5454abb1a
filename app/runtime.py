"""Where a process's jobs run and are recorded, from its `Config`; the store and service come from `deployment`.

Jobs run in-process without REDIS_URL (status in the store's records) and on Celery
workers with it (status on the Redis job board): composing `workers` is this edge's
business, so it is chosen here, not in `deployment`.
"""

from __future__ import annotations

from deployment.config import Config
from deployment.services import (  # noqa: F401 - re-exported: the edges' one import for building a process
    backbone_pool,
    build_history,
    build_service,
    open_configured_store,
    service_for,
    setting_locks,
)
from indexing.errors import NotConfigured
from indexing.image_store import ImageStore
from indexing.jobs import JobBoard, JobRunner, StoreJobBoard, fail_interrupted_jobs
from indexing.runner import InProcessRunner
from indexing.service import NominalService
from indexing.store import VectorStore


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
    if not store.shared:
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
        workers_write=service.store.shared,
        keep_versions=config.keep_versions,
    )
