"""Where model work runs: inline (the default), or on one dedicated thread per process (a server).

Why one thread: on CPU, torch's OpenMP runtime keeps a team of spinning worker
threads per calling thread. On our 2-core machines a second thread that runs
torch oversubscribes the cores: EfficientNet-Lite0 at batch 1 took 14.9 ms on the
main thread, 28.9 ms on another thread once the main thread had run torch, and
56-68 ms from a pool of four threads. On one thread that alone ever runs torch,
main or not, it took 14.5 ms. So a server, whose requests and jobs run on many
threads, hands every forward pass, patch search and coreset step to one
`ComputeThread`; a CLI or a Celery worker calls torch from its own (only) thread,
and `INLINE` runs the call where it is made.

The executor is handed to the compute layer (`BackbonePool`, which gives it to the
backbones it loads, and `PatchIndex`), never looked up from a module global; the
layers below (`indexing.patches`, `sampler`, `patch_search`) are plain computation.
Decoding, uploads and store I/O stay on the caller's thread: only the model and
search steps take the compute thread, one batch at a time, so an inspection waits
for at most one batch of a running re-index.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Compute(Protocol):
    def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`function(*args, **kwargs)` where model work runs; returns its result or raises its error."""
        ...


class Inline:
    """Runs each call on the calling thread: a process with one thread doing model work (CLI, Celery worker)."""

    def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return function(*args, **kwargs)

    def __repr__(self) -> str:
        return "Inline()"


INLINE = Inline()


class ComputeThread:
    """One thread that runs every call handed to it, in arrival order (a server's model work).

    A call made from the compute thread itself (a backbone's forward inside a patch
    step) runs at once, so nesting never deadlocks. `close` runs what is queued and
    stops the thread; calls after it run inline.
    """

    def __init__(self, name: str = "nominal-compute") -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple, dict] | None] = queue.SimpleQueue()
        self._closing = threading.Lock()  # a call is queued before the stop, or runs inline after it
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if threading.current_thread() is self._thread:
            return function(*args, **kwargs)
        done: Future[T] = Future()
        with self._closing:
            queued = not self._closed
            if queued:
                self._calls.put((done, function, args, kwargs))
        return done.result() if queued else function(*args, **kwargs)

    @property
    def ident(self) -> int | None:
        """The compute thread's id (for tests and logs)."""
        return self._thread.ident

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._calls.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            done, function, args, kwargs = item
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(function(*args, **kwargs))
                except BaseException as error:  # noqa: BLE001 - handed to the caller, who re-raises it
                    done.set_exception(error)

    def __repr__(self) -> str:
        return f"ComputeThread({self._thread.name!r})"
