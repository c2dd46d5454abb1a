"""Model work runs inline by default, or on one dedicated thread that every caller's work goes to."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from indexing.compute import INLINE, ComputeThread
from indexing.embedder import BackbonePool


def test_inline_runs_a_call_on_its_callers_thread() -> None:
    seen = []
    worker = threading.Thread(target=lambda: seen.append(INLINE.run(threading.get_ident)))
    worker.start()
    worker.join()
    assert seen == [worker.ident]


def test_a_compute_thread_runs_every_callers_work_on_one_thread_and_hands_errors_back() -> None:
    compute = ComputeThread()
    try:
        with ThreadPoolExecutor(4) as callers:
            ran_on = set(callers.map(lambda _: compute.run(threading.get_ident), range(20)))
        assert ran_on == {compute.ident} and compute.ident != threading.get_ident()
        with pytest.raises(ZeroDivisionError):
            compute.run(lambda: 1 / 0)
        # A call made from the compute thread (a forward pass inside a patch step) runs at once: no deadlock.
        assert compute.run(lambda: compute.run(threading.get_ident)) == compute.ident
    finally:
        compute.close()
    assert compute.run(threading.get_ident) == threading.get_ident()  # closed: inline, never lost


def test_a_pool_on_a_compute_thread_loads_and_runs_its_models_there() -> None:
    """The backbones a server's pool loads run each forward pass on its compute thread, whoever asks."""
    threads: list[int] = []

    class Recording(ComputeThread):
        def run(self, function, /, *args, **kwargs):  # noqa: ANN001, ANN202
            return super().run(lambda: (threads.append(threading.get_ident()), function(*args, **kwargs))[1])

    compute = Recording()
    try:
        pool = BackbonePool(compute=compute)
        backbone = pool.get("efficientnet_lite0")
        assert backbone.compute is compute
        image = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
        with ThreadPoolExecutor(2) as callers:
            vectors = list(callers.map(lambda _: backbone.embed([image]), range(2)))
        np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)
        assert len(threads) >= 3 and set(threads) == {compute.ident}  # the load and both forwards
    finally:
        compute.close()
