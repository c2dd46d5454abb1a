"""What one API process holds for its lifetime: config, store, service, image store, job runner, metrics."""

from __future__ import annotations

from dataclasses import dataclass

from app.api.metrics import Metrics
from app.config import Config
from indexing.image_store import ImageStore
from indexing.jobs import JobRunner
from indexing.service import NominalService
from indexing.store import VectorStore


@dataclass
class ApiRuntime:
    config: Config
    store: VectorStore
    service: NominalService
    images: ImageStore
    runner: JobRunner
    metrics: Metrics
    key_roles: dict[str, str]
