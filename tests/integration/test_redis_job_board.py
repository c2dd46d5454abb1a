"""The Redis job board: what every process reads job status from when REDIS_URL is set."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from indexing.jobs import new_job, request_cancel
from workers.board import RedisJobBoard

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def board(redis_space) -> RedisJobBoard:
    return RedisJobBoard(redis_space.client, redis_space.prefix)


def test_jobs_are_listed_newest_first_and_read_back_whole(board: RedisJobBoard) -> None:
    first, second = new_job("index", "a", total=3), new_job("reindex", "b", total=5)
    board.put(first)
    board.put(replace(second, created_at=first.created_at + 1, errors=[{"source": "x.png", "reason": "truncated"}]))
    assert [j.id for j in board.list()] == [second.id, first.id]
    assert board.get(second.id).errors == [{"source": "x.png", "reason": "truncated"}]
    assert board.get("no-such-job") is None


def test_a_cancel_request_survives_a_racing_progress_update(board: RedisJobBoard) -> None:
    job = replace(new_job("reindex", "a", total=10), state="running")
    with board.heartbeat(job.id):  # as the process running it holds
        board.put(job)
        request_cancel(board, job.id)
        board.put(replace(job, done=4))  # written by a process that had not seen the cancel yet
        assert board.get(job.id).cancel_requested and board.get(job.id).done == 4


def test_a_job_whose_process_died_reads_as_interrupted_once_its_heartbeat_lapses(board: RedisJobBoard, redis_space) -> None:
    """A real process runs a job and is SIGKILLed: readers see it running while it lives, failed soon after it dies."""
    job = new_job("reindex", "line-3", total=10)
    board.put(job)
    runner = subprocess.Popen([sys.executable, "-c", _RUNS_A_JOB_FOR_EVER, redis_space.url, redis_space.prefix, job.id],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while board.get(job.id).state != "running":
            assert runner.poll() is None and time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        time.sleep(2.5)  # over twice its liveness (1 s): only the heartbeat keeps it running
        assert board.get(job.id).state == "running"
    finally:
        runner.kill()
        runner.wait(timeout=30)
    time.sleep(1.5)
    ended = board.get(job.id)
    assert ended.state == "failed" and ended.message.startswith("interrupted") and ended.finished_at is not None
    assert [j.state for j in board.list()] == ["failed"]  # written back: every reader sees it ended


# Runs one job on the real board and `run_job`, with a 1 s liveness, until it is killed.
_RUNS_A_JOB_FOR_EVER = """
import sys, time
from indexing.runner import run_job
from workers.board import RedisJobBoard
url, prefix, job_id = sys.argv[1:]
board = RedisJobBoard.from_url(url, prefix, liveness_s=1.0)

def body(progress):
    progress.start(10)
    while True:
        time.sleep(0.1)

run_job(board, board.get(job_id), body)
"""
