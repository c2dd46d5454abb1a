"""What a client of the API relies on, beyond the happy path: a live threshold never moves by
surprise, and every refusal has one shape, `{"detail": [{"loc", "msg", "type"}]}`, with `loc`
naming the field at fault. Real embedded store, real weights, real Hazelnut Toy images."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.integration.test_api import files_of, jpgs, make_client, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture
def live(tmp_path: Path, hazelnut: Path) -> TestClient:
    """Setting `hz` with the 28 training images and a live calibration from labelled test images."""
    with make_client(tmp_path) as client:
        assert client.put("/v1/settings/hz", json={"k": 1}).status_code == 201
        accepted = client.post("/v1/settings/hz/images", files=files_of(jpgs(hazelnut / "train" / "good")))
        assert wait_job(client, accepted.json()["job_id"])["state"] == "succeeded"
        first = client.post("/v1/settings/hz/calibrations", files=labelled(hazelnut))
        assert first.status_code == 200 and first.json()["active"] and first.json()["replaced"] is None
        yield client


def labelled(hazelnut: Path) -> list:
    return files_of(jpgs(hazelnut / "test" / "good"), "pass") + files_of(jpgs(hazelnut / "test" / "colour"), "fail")


def live_threshold(client: TestClient) -> tuple[str, float]:
    calibration = client.get("/v1/settings/hz").json()["calibration"]
    return calibration["id"], calibration["threshold"]


def only_error(response) -> dict:
    body = response.json()
    assert set(body) == {"detail"} and len(body["detail"]) == 1, body
    error = body["detail"][0]
    assert set(error) == {"loc", "msg", "type"}, error
    return error


def test_requests_that_mean_something_else_never_move_the_live_threshold(live: TestClient, hazelnut: Path) -> None:
    before = live_threshold(live)
    image = jpgs(hazelnut / "test" / "good")[:1]

    wrong_field = live.post("/v1/settings/hz/calibrations", files=files_of(image, "files"))
    assert wrong_field.status_code == 422 and only_error(wrong_field)["loc"] == ["body", "files"]
    as_json = live.post("/v1/settings/hz/calibrations", json={"policy": "f1"})
    assert as_json.status_code == 422 and only_error(as_json)["loc"] == ["body"]
    empty = live.post("/v1/settings/hz/calibrations", data={})
    assert empty.status_code == 422 and "at least one" in only_error(empty)["msg"]

    needs_fail = live.post("/v1/settings/hz/calibrations", data={"policy": "precision>=0.99", "use_feedback": "false"})
    error = only_error(needs_fail)
    assert needs_fail.status_code == 422 and error["loc"] == ["body", "policy"] and "quantile:ALPHA" in error["msg"]
    pass_only = live.post("/v1/settings/hz/calibrations", files=files_of(image, "pass"), data={"policy": "f1"})
    assert pass_only.status_code == 422 and only_error(pass_only)["loc"] == ["body", "policy"]

    assert live_threshold(live) == before
    assert len(live.get("/v1/settings/hz/calibrations").json()["calibrations"]) == 1, "a refused request records nothing"


def test_a_degenerate_calibration_is_recorded_but_held_back_until_activated(live: TestClient, hazelnut: Path) -> None:
    before = live_threshold(live)
    # Labels swapped: the defects given as PASS, the good parts as FAIL. Max F1 then flags every PASS image.
    swapped = files_of(jpgs(hazelnut / "test" / "colour"), "pass") + files_of(jpgs(hazelnut / "test" / "good"), "fail")
    held = live.post("/v1/settings/hz/calibrations", files=swapped).json()
    assert held["active"] is False and "PASS images" in held["held_back"]
    assert live_threshold(live) == before

    setting = live.get("/v1/settings/hz").json()
    assert setting["calibration"]["id"] == before[0]
    assert setting["candidate_calibration"]["id"] == held["id"] and setting["candidate_calibration"]["active"] is False
    listed = live.get("/v1/settings/hz/calibrations").json()["calibrations"]
    assert [(c["id"], c["active"]) for c in listed] == [(held["id"], False), (before[0], True)]

    activated = live.post(f"/v1/settings/hz/calibrations/{held['id']}/activate").json()
    assert activated["active"] and activated["replaced"]["id"] == before[0]
    assert live_threshold(live) == (held["id"], held["threshold"])
    missing = live.post("/v1/settings/hz/calibrations/nope/activate")
    assert missing.status_code == 404 and only_error(missing)["loc"] == ["path", "calibration_id"]


def test_a_calibration_recorded_without_activation_leaves_verdicts_alone(live: TestClient, hazelnut: Path) -> None:
    before = live_threshold(live)
    quiet = live.post("/v1/settings/hz/calibrations", data={"policy": "quantile:0.05", "activate": "false"}).json()
    assert quiet["active"] is False and quiet["held_back"] == "not activated on request"
    verdict = live.post("/v1/settings/hz/inspect", files=files_of(jpgs(hazelnut / "test" / "good")[:1])).json()
    assert verdict["results"][0]["calibration_id"] == before[0]


def test_operator_fail_labels_join_a_calibration_unless_left_out(live: TestClient, hazelnut: Path) -> None:
    missed = jpgs(hazelnut / "test" / "colour")[:1]
    assert live.post("/v1/settings/hz/feedback", files=files_of(missed), data={"label": "FAIL"}).status_code == 200
    good = files_of(jpgs(hazelnut / "test" / "good"), "pass")
    assert live.post("/v1/settings/hz/calibrations", files=good).json()["n_fail"] == 1
    without = live.post("/v1/settings/hz/calibrations", files=good, data={"use_feedback": "false"}).json()
    assert without["n_fail"] == 0 and without["policy"] == "quantile:0.01"


def test_after_a_reindex_to_another_backbone_the_setting_shows_only_what_verdicts_use(
    tmp_path: Path, hazelnut: Path
) -> None:
    roots = tmp_path / "sources"
    (roots / "pass").mkdir(parents=True)
    for path in jpgs(hazelnut / "train" / "good")[:8]:
        (roots / "pass" / path.name).write_bytes(path.read_bytes())
    with make_client(tmp_path, NOMINAL_SOURCE_ROOTS=str(roots)) as client:
        client.put("/v1/settings/hz", json={"k": 1})
        wait_job(client, client.post("/v1/settings/hz/images", files=files_of(jpgs(roots / "pass"))).json()["job_id"])
        made = client.post("/v1/settings/hz/calibrations", data={"policy": "quantile:0.1"}).json()
        unknown = client.post("/v1/settings/hz/reindex", json={"source": str(roots / "pass"), "backbone": "resnet5000"})
        assert unknown.status_code == 422 and only_error(unknown)["loc"] == ["body", "backbone"]
        job = client.post("/v1/settings/hz/reindex", json={"source": str(roots / "pass"), "backbone": "mobilenet_v2"})
        assert wait_job(client, job.json()["job_id"])["state"] == "succeeded"

        setting = client.get("/v1/settings/hz").json()
        assert setting["calibration"] is None
        assert made["id"] in setting["calibration_note"] and "calibrate again" in setting["calibration_note"]
        verdict = client.post("/v1/settings/hz/inspect", files=files_of(jpgs(roots / "pass")[:1])).json()
        assert verdict["results"][0]["verdict"] == "UNCALIBRATED"


def test_every_refusal_has_one_shape_and_names_its_field(live: TestClient, hazelnut: Path) -> None:
    for response, status, loc in [
        (live.get("/v1/no-such-thing"), 404, ["path"]),
        (live.put("/v1/settings/a%2Fb", json={}), 404, ["path"]),
        (live.delete("/v1/backbones"), 405, ["path"]),
        (live.get("/v1/jobs/"), 404, ["path"]),
        (live.post("/v1/settings/hz/inspect", content=b"--x--",
                   headers={"content-type": "multipart/form-data; boundary=y"}), 400, ["body"]),
        (live.get("/v1/settings/nope"), 404, ["path", "setting"]),
        (live.post("/v1/settings/hz/neighbors?k=-1", files=files_of(jpgs(hazelnut / "test" / "good")[:1])),
         422, ["query", "k"]),
    ]:
        assert response.status_code == status, response.text
        assert only_error(response)["loc"] == loc
    assert "did you mean /v1/jobs?" in only_error(live.get("/v1/jobs/"))["msg"]

    huge = live.put("/v1/settings/hz", json={"description": "x" * 100_000})
    assert huge.status_code == 422 and len(huge.content) < 1_000, "a refused value is not echoed back"

    good = (hazelnut / "test" / "good" / "04.jpg").read_bytes()
    truncated = [("files", ("ok.jpg", good)), ("files", ("cut.jpg", good[: len(good) // 3]))]
    for route in ("inspect", "images"):
        refused = live.post(f"/v1/settings/hz/{route}", files=truncated)
        assert refused.status_code == 422 and only_error(refused)["loc"] == ["body", "files", 1], route

    big = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(big, format="PNG")
    too_many = live.post("/v1/settings/hz/inspect", files=[("files", ("big.png", big.getvalue()))])
    assert too_many.status_code == 413 and "above the limit of 50,000,000" in only_error(too_many)["msg"]

    for response in (live.get("/v1/settings/nope"), live.get("/v1/jobs/0123456789abcdef0123456789abcdef")):
        assert "`nominal" not in only_error(response)["msg"], "an API client is not told to run CLI commands"


def test_one_vocabulary_for_times(live: TestClient, hazelnut: Path) -> None:
    job = live.get("/v1/jobs").json()["jobs"][0]
    setting = live.get("/v1/settings/hz").json()
    for text in (job["created_at"], job["finished_at"], setting["created_at"], setting["calibration"]["created_at"]):
        assert isinstance(text, str) and text[:4].isdigit() and text[10] == "T" and text.endswith("+00:00"), text
