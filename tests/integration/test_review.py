"""The review queue on real images, through the API and the CLI: sampled under the cap, labels
reach the next calibration by the feedback path, every refusal says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.cli.main import main
from app.config import Config
from indexing.history import History
from tests.integration.test_history import files_of, wait_job

pytestmark = pytest.mark.slow


def test_queued_verdicts_are_labelled_once_and_feed_the_next_calibration(tmp_path: Path, hazelnut: Path, capsys) -> None:
    data = tmp_path / "data"
    train = sorted((hazelnut / "train" / "good").glob("*.jpg"))
    good = sorted((hazelnut / "test" / "good").glob("*.jpg"))
    defects = sorted((hazelnut / "test" / "colour").glob("*.jpg"))
    config = Config(NOMINAL_DATA=data, NOMINAL_REVIEW_PER_HOUR=8)  # at most 4 an hour for each reason
    with TestClient(create_app(config)) as client:
        client.put("/v1/settings/hz", json={"k": 1, "scoring": "global"})  # the counts below are of its global scores
        assert wait_job(client, client.post("/v1/settings/hz/images", files=files_of(train)).json()["job_id"])["state"] == "succeeded"
        made = client.post("/v1/settings/hz/calibrations", files=files_of(good, "pass") + files_of(defects[:4], "fail"))
        assert made.status_code == 200 and made.json()["active"] and made.json()["n_fail"] == 4
        assert client.get("/v1/settings/hz/review").json()["items"] == []
        answered = client.post("/v1/settings/hz/inspect", files=files_of(defects[4:] + good)).json()["results"]
        fails = sum(r["verdict"] == "FAIL" for r in answered)
        assert fails >= 6, answered  # more FAILs than the cap lets through

        queue = client.get("/v1/settings/hz/review").json()
        items = queue["items"]
        assert queue["per_hour"] == 8 and queue["queued"] == len(items) and 4 <= len(items) <= 8
        reasons = [i["review_reason"] for i in items]
        assert reasons.count("fail") == 4 and reasons.count("near") <= 4  # the burst of FAILs is capped
        assert all(i["review"] == "queued" and i["image_url"] for i in items)
        assert [i["id"] for i in items] == sorted(i["id"] for i in items)  # oldest first
        by_id = {r["id"]: r for r in client.get("/v1/settings/hz/inspections", params={"limit": 1000}).json()["inspections"]}
        assert all(by_id[i["id"]]["review"] == "queued" for i in items)

        # FAIL labels: the next calibration scores those images as FAIL examples, as feedback images are.
        first, second, third = items[0], items[1], items[2]
        for item in (first, second):
            done = client.post(f"/v1/settings/hz/review/{item['id']}", data={"label": "FAIL"})
            assert done.status_code == 200, done.text
            assert done.json()["inspection"]["review"] == "FAIL" and "next calibration" in done.json()["message"]
        again = client.post("/v1/settings/hz/calibrations", data={"policy": "quantile:0.05"})
        assert again.status_code == 200 and again.json()["n_fail"] == 2, again.text
        without = client.post("/v1/settings/hz/calibrations", data={"policy": "quantile:0.05", "use_feedback": "false"})
        assert without.json()["n_fail"] == 0

        # PASS: the part was good, so its image joins the nominal set (a job), as PASS feedback does.
        count = client.get("/v1/settings/hz").json()["images"]
        passed = client.post(f"/v1/settings/hz/review/{third['id']}", data={"label": "PASS"}).json()
        assert passed["job_id"] and wait_job(client, passed["job_id"])["state"] == "succeeded"
        assert client.get("/v1/settings/hz").json()["images"] == count + 1

        left = client.get("/v1/settings/hz/review").json()
        assert left["queued"] == len(items) - 3 and first["id"] not in [i["id"] for i in left["items"]]

        # Refusals, each naming the field.
        far_pass = next(r for r in by_id.values() if r["image_url"] is None)
        for inspection, form, status, loc in [
            (first["id"], {"label": "PASS"}, 409, ["path", "inspection_id"]),  # answered already
            (999999, {"label": "FAIL"}, 404, ["path", "inspection_id"]),
            (far_pass["id"], {"label": "FAIL"}, 410, ["path", "inspection_id"]),  # no image to learn from
            (items[3]["id"], {"label": "MAYBE"}, 422, ["body", "label"]),
            (items[3]["id"], {}, 422, ["body", "label"]),
        ]:
            refused = client.post(f"/v1/settings/hz/review/{inspection}", data=form)
            assert refused.status_code == status and refused.json()["detail"][0]["loc"] == loc, (form, refused.text)
        assert "already reviewed (FAIL)" in client.post(f"/v1/settings/hz/review/{first['id']}", data={"label": "FAIL"}).text
        assert client.get("/v1/settings/nowhere/review").status_code == 404
        assert client.post("/v1/settings/nowhere/review/1", data={"label": "FAIL"}).status_code == 404
        waiting = [i["id"] for i in client.get("/v1/settings/hz/review").json()["items"]]

    # The CLI: the same queue in the API's vocabulary, and labels by id.
    assert main(["--data", str(data), "review", "hz", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [i["id"] for i in listed["items"]] == waiting
    assert main(["--data", str(data), "review", "hz"]) == 0
    assert f"nominal review hz {waiting[0]} --label" in capsys.readouterr().out
    assert main(["--data", str(data), "review", "hz", str(waiting[0]), "--label", "skip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inspection"]["review"] == "skip"
    assert main(["--data", str(data), "review", "hz", str(waiting[0]), "--label", "FAIL"]) == 1
    assert "already reviewed (skip)" in capsys.readouterr().err
    assert main(["--data", str(data), "review", "hz", str(waiting[1]), "--label", "maybe"]) == 1
    assert "--label" in capsys.readouterr().err
    assert main(["--data", str(data), "review", "hz", str(waiting[1])]) == 1
    assert "--label" in capsys.readouterr().err
    assert len(waiting) >= 3
    assert main(["--data", str(data), "review", "hz", str(waiting[2]), "--label", "PASS", "--json"]) == 0
    passed = json.loads(capsys.readouterr().out)  # this process ran the index job, and waited for it
    assert passed["job_id"] and passed["inspection"]["review"] == "PASS" and "nominal set" in passed["message"]
    # Retention deleted the images: nothing is left to show, and a label says why it cannot count.
    pruned = History(data / "history", max_bytes=0)
    pruned.prune()
    assert main(["--data", str(data), "review", "hz", str(waiting[1]), "--label", "FAIL"]) == 1
    assert "no longer keeps its image" in capsys.readouterr().err
    assert main(["--data", str(data), "review", "hz"]) == 0
    assert "nothing to review" in capsys.readouterr().out

    # Deleting the setting deletes its queue and answers with its history.
    with TestClient(create_app(config)) as client:
        assert client.delete("/v1/settings/hz").status_code in (200, 204)
        client.put("/v1/settings/hz", json={"k": 1})
        assert client.get("/v1/settings/hz/review").json() == {"setting": "hz", "queued": 0, "per_hour": 8, "items": []}
    assert History(data / "history").get("hz", first["id"]) is None
