"""Builds the store and service a process runs on, from its `Config`.

The choice between the embedded store and a Qdrant server is made here and
only here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from app.config import Config
from indexing.backbones import load_backbone
from indexing.image_store import ImageStore
from indexing.jobs import JobRunner
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


def build_service(config: Config, store: VectorStore, pool: BackbonePool | None = None) -> NominalService:
    return NominalService(
        store,
        backbones=pool or backbone_pool(config),
        default_backbone=config.backbone,
        max_pixels=config.max_pixels,
        batch_size=config.batch_size,
    )


def build_runner(config: Config, service: NominalService) -> JobRunner:
    """Where long work runs: in this process (the embedded default)."""
    return InProcessRunner(service, ImageStore(config.image_root))


@contextmanager
def service_for(config: Config) -> Iterator[NominalService]:
    """A service over the configured store, closed (and its lock released) on exit."""
    store = open_configured_store(config)
    try:
        yield build_service(config, store)
    finally:
        store.close()
