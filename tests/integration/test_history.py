"""Inspection history through the API and the CLI, on the real store, weights and images."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.cli.main import main
from app.config import Config

pytestmark = pytest.mark.slow


def files_of(paths: list[Path], field: str = "files") -> list[tuple[str, tuple[str, bytes]]]:
    return [(field, (p.name, p.read_bytes())) for p in paths]


def wait_job(client: TestClient, job_id: str) -> dict:
    import time

    for _ in range(1200):
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_every_verdict_is_recorded_and_paged_through_the_api_and_the_cli(tmp_path: Path, hazelnut: Path, capsys) -> None:
    data = tmp_path / "data"
    good = sorted((hazelnut / "test" / "good").glob("*.jpg"))
    defects = sorted((hazelnut / "test" / "colour").glob("*.jpg"))
    with TestClient(create_app(Config(NOMINAL_DATA=data))) as client:
        client.put("/v1/settings/hz", json={"k": 1})
        job = client.post("/v1/settings/hz/images", files=files_of(sorted((hazelnut / "train" / "good").glob("*.jpg"))))
        assert wait_job(client, job.json()["job_id"])["state"] == "succeeded"
        first = client.post("/v1/settings/hz/inspect", files=files_of(good[:2])).json()["results"]
        calibration = client.post("/v1/settings/hz/calibrations", files=files_of(good, "pass") + files_of(defects, "fail"))
        assert calibration.status_code == 200 and calibration.json()["active"]
        later = client.post("/v1/settings/hz/inspect", files=files_of(good[2:4] + defects[:3])).json()["results"]
        answered = first + later

        page = client.get("/v1/settings/hz/inspections").json()
        recorded = page["inspections"]
        assert page["next_cursor"] is None and len(recorded) == len(answered)
        for row, verdict in zip(recorded, reversed(answered)):  # newest first
            assert (row["verdict"], row["score"], row["threshold"], row["p_value"], row["calibration_id"]) == (
                verdict["verdict"], verdict["score"], verdict["threshold"], verdict["p_value"], verdict["calibration_id"])
            assert row["version"] == 1 and row["source"] == verdict["source"] and row["latency_ms"] > 0
        assert [r["verdict"] for r in recorded[-2:]] == ["UNCALIBRATED"] * 2
        by_name = {r["source"]: r for r in recorded}
        assert by_name[defects[0].name]["sha256"] == __import__("hashlib").sha256(defects[0].read_bytes()).hexdigest()

        fails = client.get("/v1/settings/hz/inspections", params={"verdict": "FAIL"}).json()["inspections"]
        assert len(fails) == 3 and all(r["image_url"] for r in fails)
        kept = client.get(fails[-1]["image_url"])
        assert kept.status_code == 200 and kept.content == defects[0].read_bytes()

        pages, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            body = client.get("/v1/settings/hz/inspections", params=params).json()
            pages.append([r["id"] for r in body["inspections"]])
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert [i for p in pages for i in p] == [r["id"] for r in recorded] and len(pages) == 3

        assert client.get("/v1/settings/hz/inspections", params={"since": "2999-01-01T00:00:00Z"}).json()["inspections"] == []
        assert len(client.get("/v1/settings/hz/inspections", params={"until": "2999-01-01T00:00:00"}).json()["inspections"]) == len(recorded)

        for params, loc in [({"cursor": "nonsense"}, ["query", "cursor"]), ({"since": "yesterday"}, ["query", "since"]),
                            ({"verdict": "MAYBE"}, ["query", "verdict"]),
                            ({"since": "2026-11-30T10:00:00Z", "until": "2026-11-30T09:00:00Z"}, ["query", "until"])]:
            refused = client.get("/v1/settings/hz/inspections", params=params)
            assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == loc, (params, refused.text)
        missing = client.get("/v1/settings/nowhere/inspections")
        assert missing.status_code == 404 and missing.json()["detail"][0]["msg"]
        assert client.get("/v1/settings/hz/inspections/999999/image").status_code == 404

    # The CLI reads the same history, in the API's vocabulary.
    assert main(["--data", str(data), "history", "hz", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli == page
    assert main(["--data", str(data), "history", "hz", "--csv", "--verdict", "FAIL"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["id"] for r in rows] == [str(r["id"]) for r in fails] and rows[0]["verdict"] == "FAIL"
    assert main(["--data", str(data), "history", "hz", "--since", "not-a-time"]) == 1
    assert "--since" in capsys.readouterr().err
    assert main(["--data", str(data), "history", "nowhere"]) == 1
    assert "unknown machine setting" in capsys.readouterr().err


def test_recording_can_be_turned_off(tmp_path: Path, hazelnut: Path) -> None:
    config = Config(NOMINAL_DATA=tmp_path / "data", NOMINAL_RECORD_HISTORY=False)
    with TestClient(create_app(config)) as client:
        client.put("/v1/settings/hz", json={"k": 1})
        job = client.post("/v1/settings/hz/images", files=files_of(sorted((hazelnut / "train" / "good").glob("*.jpg"))[:4]))
        assert wait_job(client, job.json()["job_id"])["state"] == "succeeded"
        assert client.post("/v1/settings/hz/inspect", files=files_of(sorted((hazelnut / "test" / "good").glob("*.jpg"))[:1])).status_code == 200
        assert client.get("/v1/settings/hz/inspections").json()["inspections"] == []


def test_deleting_a_setting_deletes_its_history_and_kept_images(tmp_path: Path, hazelnut: Path) -> None:
    config = Config(NOMINAL_DATA=tmp_path / "data")
    train = sorted((hazelnut / "train" / "good").glob("*.jpg"))[:4]
    good = sorted((hazelnut / "test" / "good").glob("*.jpg"))
    all_defects = sorted((hazelnut / "test" / "colour").glob("*.jpg"))
    defects = all_defects[:2]
    with TestClient(create_app(config)) as client:
        for name in ("hz", "other"):
            client.put(f"/v1/settings/{name}", json={"k": 1})
            job = client.post(f"/v1/settings/{name}/images", files=files_of(train))
            assert wait_job(client, job.json()["job_id"])["state"] == "succeeded"
            # Calibrated, so that the defects are FAIL verdicts, whose images history keeps.
            made = client.post(f"/v1/settings/{name}/calibrations",
                               files=files_of(good, "pass") + files_of(all_defects[2:], "fail"))
            assert made.status_code == 200 and made.json()["active"]
            assert client.post(f"/v1/settings/{name}/inspect", files=files_of(defects)).status_code == 200
        history = client.app.state.runtime.history
        kept = [history.image_path(i) for i in history.recent("hz")]
        assert any(path is not None and path.exists() for path in kept), "no image was kept to be deleted"
        assert len(history.recent("hz")) == 2 and len(history.recent("other")) == 2

        assert client.delete("/v1/settings/hz").status_code == 204
        assert history.recent("hz") == []
        assert not [path for path in kept if path is not None and path.exists()]
        assert len(history.recent("other")) == 2  # another setting's history is left alone
        client.put("/v1/settings/hz", json={"k": 1})  # the name used again starts with no history
        assert client.get("/v1/settings/hz/inspections").json()["inspections"] == []
