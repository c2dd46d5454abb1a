"""`/readyz` answers ready only when the store and, with REDIS_URL, the broker answer."""

from __future__ import annotations

import socket
from pathlib import Path

from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Config


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ready_names_the_broker_when_redis_answers(tmp_path: Path, redis_space) -> None:
    config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data", REDIS_URL=redis_space.url,
                    NOMINAL_REDIS_PREFIX=redis_space.prefix)
    with TestClient(create_app(config)) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 200, answer.text
    assert answer.json()["checks"] == {"store": "ok", "broker": "ok"}


def test_not_ready_while_the_broker_is_down(tmp_path: Path) -> None:
    port = closed_port()
    config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data", REDIS_URL=f"redis://127.0.0.1:{port}/0")
    with TestClient(create_app(config)) as client:
        answer = client.get("/readyz")
        assert client.get("/healthz").status_code == 200  # alive, just not ready
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["status"] == "unavailable" and body["checks"]["store"] == "ok"
    assert body["checks"]["broker"].startswith("unavailable: broker redis://127.0.0.1:") and str(port) in body["checks"]["broker"]


def test_without_redis_ready_means_the_store_answers(tmp_path: Path) -> None:
    with TestClient(create_app(Config(_env_file=None, NOMINAL_DATA=tmp_path / "data"))) as client:
        assert client.get("/readyz").json() == {"status": "ok", "checks": {"store": "ok"}}


def test_a_job_id_that_cannot_exist_is_not_found(tmp_path: Path) -> None:
    """An id no job could have (not a valid key) is 404, like any unknown id, on read and on cancel."""
    with TestClient(create_app(Config(_env_file=None, NOMINAL_DATA=tmp_path / "data"))) as client:
        for job_id in ("-leading-dash", "a" * 300, "0123456789abcdef0123456789abcdef"):
            for method in ("get", "delete"):
                answer = getattr(client, method)(f"/v1/jobs/{job_id}")
                assert answer.status_code == 404, (job_id, method, answer.text)
                assert answer.json()["detail"][0]["loc"] == ["path", "job_id"]
