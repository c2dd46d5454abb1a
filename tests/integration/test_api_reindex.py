"""Re-index and rollback over HTTP, in-process runner (no REDIS_URL): 202 + a job, then a switch."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Config

pytestmark = pytest.mark.slow


def test_reindex_then_rollback_over_http(tmp_path: Path, hazelnut: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(hazelnut / "train" / "good", source)
    config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data", NOMINAL_SOURCE_ROOTS=f"{tmp_path}:{hazelnut}")
    with TestClient(create_app(config)) as client:
        assert client.put("/v1/settings/hz", json={"k": 1}).status_code == 201
        empty = client.post("/v1/settings/hz/reindex", json={"source": str(tmp_path / "nothing")})
        assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "source"]
        for folder in (hazelnut / "test" / "good", source):
            accepted = client.post("/v1/settings/hz/reindex", json={"source": str(folder)})
            assert accepted.status_code == 202, accepted.text
            deadline = time.monotonic() + 120
            while (job := client.get(accepted.json()["url"]).json())["state"] not in ("succeeded", "failed", "cancelled"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert job["state"] == "succeeded", job["message"]
        assert client.get("/v1/settings/hz").json()["images"] == 28
        back = client.post("/v1/settings/hz/rollback")
        assert back.status_code == 200 and (back.json()["images"], back.json()["active_version"]) == (6, 1)
        assert client.post("/v1/settings/hz/rollback").status_code == 409


def test_reindex_over_http_reads_only_inside_the_source_roots(tmp_path: Path, hazelnut: Path) -> None:
    inside = tmp_path / "sources" / "line-3"
    shutil.copytree(hazelnut / "train" / "good", inside)
    for roots, source, status, says in (
        ("", inside, 403, "NOMINAL_SOURCE_ROOTS"),  # off unless configured
        (str(tmp_path / "sources"), hazelnut / "train" / "good", 403, "outside"),
        (str(tmp_path / "sources"), "/etc/*", 403, "outside"),
        (str(tmp_path / "sources"), inside, 202, ""),
    ):
        config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data", NOMINAL_SOURCE_ROOTS=roots)
        with TestClient(create_app(config)) as client:
            client.put("/v1/settings/hz", json={"k": 1})
            answer = client.post("/v1/settings/hz/reindex", json={"source": str(source)})
            assert answer.status_code == status, answer.text
            if status == 403:
                error = answer.json()["detail"][0]
                assert error["loc"] == ["body", "source"] and says in error["msg"]
                assert client.get("/v1/jobs").json()["jobs"] == []  # nothing was queued
            else:
                deadline = time.monotonic() + 120
                while client.get(answer.json()["url"]).json()["state"] not in ("succeeded", "failed", "cancelled"):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
