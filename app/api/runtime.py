"""What one API process holds for its lifetime: config, store, service, image store, job runner, metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool

from app.api.metrics import Metrics
from app.config import Config
from indexing.history import History
from indexing.image_store import ImageStore
from indexing.jobs import JobRunner
from indexing.service import NominalService
from indexing.store import VectorStore

T = TypeVar("T")


@dataclass
class ApiRuntime:
    config: Config
    store: VectorStore
    service: NominalService
    images: ImageStore
    runner: JobRunner
    metrics: Metrics
    key_roles: dict[str, str]
    history: History | None = None


async def off_the_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a handler's blocking work (upload checks, decoding, store I/O, inference) off the event loop.

    It runs on FastAPI's thread pool: only the forward passes and searches inside it
    hop to the process's compute thread (`indexing.compute`), so one request's decoding
    and store round trips do not hold up another's model time.
    """
    return await run_in_threadpool(function, *args, **kwargs)
