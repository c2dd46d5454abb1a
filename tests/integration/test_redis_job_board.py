"""The Redis job board: what every process reads job status from when REDIS_URL is set."""

from __future__ import annotations

from dataclasses import replace

import pytest

from indexing.jobs import new_job, request_cancel
from workers.board import RedisJobBoard


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
    board.put(job)
    request_cancel(board, job.id)
    board.put(replace(job, done=4))  # written by a process that had not seen the cancel yet
    assert board.get(job.id).cancel_requested and board.get(job.id).done == 4
