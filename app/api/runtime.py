"""What one API process holds for its lifetime: config, store, service, image store, job runner, metrics."""

from __future__ import annotations

import asyncio
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
from indexing.torch_thread import submit_to_torch_thread, torch_calls_served

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
    """Run model-bound work without blocking the event loop, in one hop.

    Under `nominal serve` the main thread runs torch (see `indexing.torch_thread`):
    the whole call goes there, instead of to a pool thread that would then hand
    each forward pass to the main thread. Elsewhere (tests, uvicorn's own worker
    processes) FastAPI's thread pool runs it.
    """
    if torch_calls_served():
        return await asyncio.wrap_future(submit_to_torch_thread(function, *args, **kwargs))
    return await run_in_threadpool(function, *args, **kwargs)
