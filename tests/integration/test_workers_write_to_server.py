"""With a Qdrant server, workers upsert their batches themselves (`nominal.index_batch`).

No Qdrant server runs here, so the "server" is `ServerStore` on qdrant-client's
local mode, shared by the orchestrating service and a real Celery worker running
in a thread of this process (`celery.contrib.testing.worker.start_worker`) on
the real Redis: the worker's store and the orchestrator's are one object, as two
processes would share one server.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from qdrant_client import QdrantClient

from app.config import Config
from app.runtime import build_runner
from indexing.service import BackbonePool, NominalService
from indexing.store import ServerStore
from workers import tasks
from workers.board import RedisJobBoard
from workers.celery_app import configure

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("NOMINAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")


def test_workers_write_batches_straight_to_the_server(tmp_path: Path, pool: BackbonePool, hazelnut: Path, hazelnut_sets) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"nominal-test-{uuid.uuid4().hex[:12]}:"
    config = Config(
        _env_file=None, NOMINAL_DATA=tmp_path / "data", REDIS_URL=REDIS_URL, NOMINAL_REDIS_PREFIX=prefix,
        QDRANT_URL="http://stand-in-for-a-server:6333",  # never dialled: both sides use `server` below
    )
    server = ServerStore(QdrantClient(":memory:"))
    service = NominalService(server, backbones=pool)
    service.index("hz", hazelnut_sets["good"])
    tasks._state = tasks.WorkerState(config=config, service=service, board=RedisJobBoard(client, prefix))
    runner = build_runner(config, service)
    try:
        with start_worker(configure(config), pool="solo", perform_ping_check=False, shutdown_timeout=30):
            job = runner.submit_reindex("hz", str(hazelnut / "train" / "good"))
            deadline = time.monotonic() + 120
            while not (done := runner.board.get(job.id)).finished:
                assert time.monotonic() < deadline, done
                time.sleep(0.05)
    finally:
        runner.close()
        tasks._state = None
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
    assert done.state == "succeeded", done.message
    active = service.active_version("hz")
    assert active.version == 2 and server.count(active.collection) == 28
