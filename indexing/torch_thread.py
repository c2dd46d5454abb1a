"""Where torch runs: on the calling thread, or, in a server, always on the process's main thread.

Why: on CPU, torch's OpenMP runtime keeps a team of worker threads per calling
thread, and on our 2-core machines a forward pass called from any thread but
the main one ran at half speed (EfficientNet-Lite0, batch 1: 12 ms on the main
thread, 28 ms on a worker thread); once a second thread has run torch, even the
main thread slows down. A CLI or a Celery worker calls torch from its main
thread anyway. A server cannot: its request handlers and jobs run on other
threads. So `nominal serve` runs uvicorn on a thread and hands its main thread
to `serve_torch_calls`; every `run_on_torch_thread` call from any thread is
then executed there, one at a time, in arrival order (batch by batch, so an
inspection waits for at most one batch of a running re-index).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None] | None = None


def run_on_torch_thread(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` where torch should run: here, unless the main thread serves torch calls."""
    calls = _calls
    if calls is None or threading.current_thread() is threading.main_thread():
        return function(*args, **kwargs)
    return submit_to_torch_thread(function, *args, **kwargs).result()


def torch_calls_served() -> bool:
    """Whether the main thread is serving torch calls (`serve_torch_calls` is running)."""
    return _calls is not None


def submit_to_torch_thread(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
    """Queue a call for the main thread's `serve_torch_calls`, for callers that must not block (an event loop).

    Raises:
        RuntimeError: the main thread is not serving torch calls (check `torch_calls_served`).
    """
    calls = _calls
    if calls is None:
        raise RuntimeError("no thread serves torch calls: call the function directly")
    done: Future[T] = Future()
    calls.put((done, function, args, kwargs))
    return done


def serve_torch_calls(
    until: Callable[[], bool], *, on_ready: Callable[[], None] | None = None, poll_s: float = 0.1
) -> None:
    """Run torch calls from other threads on this, the main, thread until `until()` is true.

    Args:
        until: checked between calls; serving stops once it is true.
        on_ready: called once calls are being served; start the threads that make them
            here, so that none of their calls (a model load at start-up) runs elsewhere.
        poll_s: how often `until` is checked while no call arrives.

    Raises:
        RuntimeError: not called on the main thread.
    """
    global _calls
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve_torch_calls must run on the main thread")
    _calls = queue.SimpleQueue()
    try:
        if on_ready is not None:
            on_ready()
        while not until():
            try:
                item = _calls.get(timeout=poll_s)
            except queue.Empty:
                continue
            if item is None:
                break
            _run(item)
    finally:
        calls, _calls = _calls, None
        # Calls that arrived after the loop stopped run here too instead of waiting forever.
        while True:
            try:
                item = calls.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _run(item)


def _run(item: tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> None:
    done, function, args, kwargs = item
    if done.set_running_or_notify_cancel():
        try:
            done.set_result(function(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - handed to the caller, who re-raises it
            done.set_exception(error)
