"""Torch calls run on the caller's thread, or, while the main thread serves them, on the main thread."""

from __future__ import annotations

import threading

import pytest

from indexing.torch_thread import run_on_torch_thread, serve_torch_calls, torch_calls_served


def test_without_a_server_a_call_runs_on_its_callers_thread() -> None:
    assert not torch_calls_served()
    seen = []
    worker = threading.Thread(target=lambda: seen.append(run_on_torch_thread(threading.get_ident)))
    worker.start()
    worker.join()
    assert seen == [worker.ident]


def test_while_served_calls_from_other_threads_run_on_the_main_thread_and_errors_come_back() -> None:
    results: dict[str, object] = {}

    def client() -> None:
        results["ran_on"] = run_on_torch_thread(threading.get_ident)
        with pytest.raises(ZeroDivisionError):
            run_on_torch_thread(lambda: 1 / 0)
        results["done"] = True

    worker = threading.Thread(target=client)
    serve_torch_calls(until=lambda: not worker.is_alive(), on_ready=worker.start, poll_s=0.01)
    worker.join()
    assert results == {"ran_on": threading.main_thread().ident, "done": True}
    assert not torch_calls_served()
