"""`JobQueue.close`: a process going away leaves no job queued or running for ever."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from indexing.jobs import JobProgress, StoreJobBoard, new_job
from indexing.runner import JobQueue
from indexing.store.edge import EdgeStore


def test_close_cancels_the_running_job_and_the_queued_ones(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "store")
    board = StoreJobBoard(store)
    jobs = JobQueue(board)
    reported = threading.Event()

    def waits_for_batches_that_never_come(progress: JobProgress) -> dict:
        progress.start(total=10)
        while True:  # a heartbeat, as the Celery embedder gives while no batch comes back
            progress("embedding", 0, 10)
            reported.set()
            time.sleep(0.05)

    try:
        running = jobs.submit(new_job("reindex", "line-1"), waits_for_batches_that_never_come)
        queued = jobs.submit(new_job("index", "line-1"), lambda progress: {"indexed": 1})
        assert reported.wait(10)
        closer = threading.Thread(target=jobs.close)
        closer.start()
        closer.join(timeout=10)
        assert not closer.is_alive(), "close waited for a job that never ends"
        assert board.get(running.id).state == "cancelled"
        assert board.get(queued.id).state == "cancelled"  # not left "queued" for ever
    finally:
        store.close()


def test_close_leaves_finished_jobs_as_they_ended(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "store")
    board = StoreJobBoard(store)
    jobs = JobQueue(board)
    try:
        job = jobs.submit(new_job("index", "line-1"), lambda progress: {"indexed": 3})
        deadline = time.monotonic() + 10
        while not board.get(job.id).finished and time.monotonic() < deadline:
            time.sleep(0.02)
        jobs.close()
        jobs.close()  # idempotent
        done = board.get(job.id)
        assert done.state == "succeeded" and done.result == {"indexed": 3} and not done.cancel_requested
    finally:
        store.close()
