"""Builds the store and service a process runs on, from its `Config`: API processes and workers alike.

The choice between the embedded store and a Qdrant server is made here and only
here; the opened store then says which it is (`store.shared`). Where jobs run
(in-process or on Celery workers) is chosen by the edge that runs them
(`app.runtime`), since that means composing `workers`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from deployment.config import Config
from indexing.backbones import load_backbone
from indexing.bank_cache import BankCache
from indexing.history import History
from indexing.image_store import ImageStore
from indexing.locks import LocalLocks, RedisLocks, SettingLocks
from indexing.compute import INLINE, Compute
from indexing.service import BackbonePool, NominalService
from indexing.store import VectorStore, open_store

log = logging.getLogger(__name__)


def open_configured_store(config: Config) -> VectorStore:
    if config.qdrant_url:
        return open_store(
            qdrant_url=config.qdrant_url, qdrant_api_key=config.qdrant_api_key,
            shard_number=config.qdrant_shards, replication_factor=config.qdrant_replicas,
            approximate_above=config.approximate_above,
        )
    return open_store(data_dir=config.data, approximate_above=config.approximate_above)


def backbone_pool(config: Config, compute: Compute = INLINE) -> BackbonePool:
    """The process's models; they run on `compute` (a server's `ComputeThread`, else inline)."""
    return BackbonePool(partial(load_backbone, device=config.device, weights_dir=config.weights_dir), compute=compute)


def setting_locks(config: Config, store: VectorStore | None) -> SettingLocks:
    """Locks in Redis when other processes write to the same store (a Qdrant server), else this process's."""
    if store is not None and store.shared:
        if config.redis_url:
            return RedisLocks.from_url(config.redis_url, config.redis_prefix)
        log.warning(
            "QDRANT_URL without REDIS_URL: setting updates are locked in this process only; "
            "run one writing process, or set REDIS_URL so several can share the server safely"
        )
    return LocalLocks()


def build_history(config: Config) -> History:
    """The inspection history (`indexing.history`): opened on first use, so building it costs nothing."""
    return History(
        config.history_root, keep_days=config.keep_inspections_days, max_bytes=config.max_inspection_bytes,
        near=config.near_threshold, embedding_window=config.drift_window, review_per_hour=config.review_per_hour,
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
        bank_cache=BankCache(max_bytes=config.max_bank_bytes),
        locks=setting_locks(config, store),
        images=ImageStore(config.image_root),
    )
    if config.record_history:
        history = history or build_history(config)
        service.on_verdicts.append(history.hook)
        service.on_delete.append(history.delete_setting)  # a deleted setting leaves no inspections behind
    return service


@contextmanager
def service_for(config: Config) -> Iterator[NominalService]:
    """A service over the configured store, closed (and its lock released) on exit."""
    store = open_configured_store(config)
    try:
        yield build_service(config, store)
    finally:
        store.close()
