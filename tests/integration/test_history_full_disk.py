"""A full disk under the history never turns a verdict into an error: the API answers, the record is dropped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Config
from tests.disks import fill, tiny_disk as mount_tiny_disk

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_disk(tmp_path: Path):
    with mount_tiny_disk(tmp_path / "tiny", "1m") as mount:
        yield mount


def files_of(paths: list[Path], field: str = "files") -> list[tuple[str, tuple[str, bytes]]]:
    return [(field, (p.name, p.read_bytes())) for p in paths]


def test_verdicts_are_answered_while_the_history_disk_is_full(tmp_path: Path, tiny_disk: Path, hazelnut: Path) -> None:
    config = Config(NOMINAL_DATA=tmp_path / "data", NOMINAL_HISTORY=tiny_disk / "history")
    defects = sorted((hazelnut / "test" / "colour").glob("*.jpg"))
    with TestClient(create_app(config)) as client:
        client.put("/v1/settings/hz", json={"k": 1})
        job = client.post("/v1/settings/hz/images", files=files_of(sorted((hazelnut / "train" / "good").glob("*.jpg"))))
        for _ in range(1200):
            if client.get(f"/v1/jobs/{job.json()['job_id']}").json()["state"] in ("succeeded", "failed"):
                break
            time.sleep(0.1)
        assert client.post("/v1/settings/hz/calibrations", data={"policy": "quantile:0.1"}).status_code == 200
        assert client.post("/v1/settings/hz/inspect", files=files_of(defects[:1])).status_code == 200
        before = len(client.get("/v1/settings/hz/inspections").json()["inspections"])
        assert before == 1

        filler = fill(tiny_disk)
        full = client.post("/v1/settings/hz/inspect", files=files_of(defects[1:9]))
        assert full.status_code == 200, full.text
        assert [r["verdict"] for r in full.json()["results"]] == ["FAIL"] * 8
        filler.unlink()
        after = client.get("/v1/settings/hz/inspections", params={"limit": 1000}).json()["inspections"]
        assert before <= len(after) < before + 8, "a full disk drops records rather than failing verdicts"
        assert client.post("/v1/settings/hz/inspect", files=files_of(defects[9:10])).status_code == 200
        assert len(client.get("/v1/settings/hz/inspections", params={"limit": 1000}).json()["inspections"]) == len(after) + 1
