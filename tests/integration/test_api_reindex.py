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
    with TestClient(create_app(Config(_env_file=None, NOMINAL_DATA=tmp_path / "data"))) as client:
        assert client.put("/v1/settings/hz", json={"k": 1}).status_code == 200
        assert client.post("/v1/settings/hz/reindex", json={"source": str(tmp_path / "nothing")}).status_code == 422
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
