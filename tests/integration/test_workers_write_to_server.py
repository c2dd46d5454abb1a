"""With a Qdrant server, workers upsert their batches themselves (`nominal.index_batch`).

No Qdrant server runs here, so the "server" is `ServerStore` on qdrant-client's
local mode, shared by the orchestrating service and a real Celery worker running
in a thread of this process (`celery.contrib.testing.worker.start_worker`) on
the real Redis: the worker's store and the orchestrator's are one object, as two
processes would share one server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from qdrant_client import QdrantClient

from app.config import Config
from app.runtime import build_runner
from indexing.service import BackbonePool, NominalService
from indexing.store import EdgeStore, ServerStore
from workers import tasks
from workers.board import RedisJobBoard
from tests.waiting import wait_for_job
from workers.celery_app import configure

pytestmark = pytest.mark.slow

def test_workers_write_batches_straight_to_the_server(
    tmp_path: Path, pool: BackbonePool, hazelnut: Path, hazelnut_sets, redis_space
) -> None:
    config = Config(
        _env_file=None, NOMINAL_DATA=tmp_path / "data", REDIS_URL=redis_space.url, NOMINAL_REDIS_PREFIX=redis_space.prefix,
        QDRANT_URL="http://stand-in-for-a-server:6333",  # never dialled: both sides use `server` below
    )
    server = ServerStore(QdrantClient(":memory:"))
    service = NominalService(server, backbones=pool)
    service.index("hz", hazelnut_sets["good"])
    tasks._state = tasks.WorkerState(config=config, embedder=service.embedder, service=service, board=RedisJobBoard(redis_space.client, redis_space.prefix))
    runner = build_runner(config, service)
    try:
        assert runner.can_detach  # workers write to the server: a job may be handed over whole
        with start_worker(configure(config), pool="solo", perform_ping_check=False, shutdown_timeout=30):
            job = runner.submit_reindex("hz", str(hazelnut / "train" / "good"))
            done = wait_for_job(runner.board, job, timeout=120)
            detached = runner.submit_reindex("hz", str(hazelnut / "test" / "good"), detach=True)
            handed = wait_for_job(runner.board, detached, timeout=120)
    finally:
        runner.close()
        tasks._state = None
    assert done.state == "succeeded", done.message
    assert handed.state == "succeeded" and handed.result["version"] == 3, handed.message
    active = service.versions.active("hz")
    assert active.version == 3 and server.count(active.collection) == 6


def test_a_runner_that_cannot_hand_a_job_over_says_so(tmp_path: Path, pool: BackbonePool, redis_space) -> None:
    from indexing.errors import NotConfigured

    config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data", REDIS_URL=redis_space.url,
                    NOMINAL_REDIS_PREFIX=redis_space.prefix)
    with EdgeStore(tmp_path / "store") as store:
        service = NominalService(store, backbones=pool)
        for runner in (build_runner(config, service), build_runner(Config(_env_file=None, NOMINAL_DATA=tmp_path), service)):
            try:
                assert not runner.can_detach
                with pytest.raises(NotConfigured, match="Qdrant server"):
                    runner.submit_reindex("hz", str(tmp_path), detach=True)
            finally:
                runner.close()
