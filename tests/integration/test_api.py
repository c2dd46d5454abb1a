"""The HTTP API against the real embedded store, real weights and real images, through TestClient."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.main import create_app
from app.config import Config

pytestmark = pytest.mark.slow


def files_of(paths: list[Path], field: str = "files") -> list[tuple[str, tuple[str, bytes]]]:
    return [(field, (p.name, p.read_bytes())) for p in paths]


def jpgs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def wait_job(client: TestClient, job_id: str, headers: dict[str, str] | None = None) -> dict:
    for _ in range(600):
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def make_client(tmp_path: Path, **env: str | int) -> TestClient:
    return TestClient(create_app(Config(NOMINAL_DATA=tmp_path / "data", **env)))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


@pytest.fixture
def filled(client: TestClient, hazelnut: Path) -> TestClient:
    """A setting `hz` holding the 28 Hazelnut Toy training images."""
    assert client.put("/v1/settings/hz", json={"k": 1, "description": "hazelnuts"}).status_code == 201
    accepted = client.post("/v1/settings/hz/images", files=files_of(jpgs(hazelnut / "train" / "good")))
    assert accepted.status_code == 202
    job = wait_job(client, accepted.json()["job_id"])
    assert job["state"] == "succeeded" and job["done"] == job["total"] == 28
    return client


def calibrate(client: TestClient, hazelnut: Path, **data: str) -> dict:
    response = client.post(
        "/v1/settings/hz/calibrations",
        files=files_of(jpgs(hazelnut / "test" / "good"), "pass") + files_of(jpgs(hazelnut / "test" / "colour"), "fail"),
        data=data,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_line_camera_gets_verdicts_with_their_evidence(filled: TestClient, hazelnut: Path) -> None:
    client = filled
    good, bad = hazelnut / "test" / "good" / "04.jpg", hazelnut / "test" / "colour" / "00.jpg"
    first = client.post("/v1/settings/hz/inspect", files=files_of([bad])).json()["results"][0]
    assert first["verdict"] == "UNCALIBRATED" and first["threshold"] is None and first["score"] > 0

    calibration = calibrate(client, hazelnut)
    assert calibration["roc_auc"] > 0.9 and calibration["n_pass"] == 6 and calibration["n_fail"] == 17
    assert set(calibration["confusion"]) == {"tp", "fp", "tn", "fn"} and calibration["pr_curve"]

    results = client.post("/v1/settings/hz/inspect", files=files_of([bad, good]), data={"k": "3"}).json()["results"]
    assert [r["source"] for r in results] == ["00.jpg", "04.jpg"], "one result per file, in order"
    assert [r["verdict"] for r in results] == ["FAIL", "PASS"]
    assert all(r["threshold"] == calibration["threshold"] and r["calibration_id"] == calibration["id"] for r in results)
    neighbour = results[1]["neighbors"][0]
    assert len(results[1]["neighbors"]) == 3 and neighbour["source"].endswith(".jpg")

    original = client.get(neighbour["url"])
    assert original.status_code == 200 and original.headers["content-type"] == "image/jpeg"
    assert original.content in {p.read_bytes() for p in jpgs(hazelnut / "train" / "good")}
    thumbnail = client.get(neighbour["url"], params={"size": 64})
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 64

    # A new setting scores fused: its verdict names the nominal images holding the patches nearest the worst one,
    # and where in them; /neighbors answers the nearest whole images, nearest first.
    assert results[1]["scorer"].startswith("fused:") and all({"row", "col"} <= set(n["payload"]) for n in results[1]["neighbors"])
    near = client.post("/v1/settings/hz/neighbors", files=files_of([good]), data={"k": "2"}).json()["results"][0]
    distances = [n["distance"] for n in near["neighbors"]]
    assert len(distances) == 2 and distances == sorted(distances) and "row" not in near["neighbors"][0]["payload"]

    summary = client.get("/v1/settings/hz").json()
    assert (summary["images"], summary["active_version"], summary["calibration"]["id"]) == (28, 1, calibration["id"])
    assert client.get("/v1/settings/hz/calibrations/latest").json() == calibration
    png = client.get("/v1/settings/hz/calibrations/latest/pr_curve.png")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")


def test_feedback_grows_the_nominal_set_and_the_next_calibration(filled: TestClient, hazelnut: Path) -> None:
    client = filled
    extra_pass = hazelnut / "test" / "good" / "05.jpg"
    missed = hazelnut / "test" / "colour" / "01.jpg"
    answer = client.post("/v1/settings/hz/feedback", data={"label": "PASS"}, files=files_of([extra_pass])).json()
    assert wait_job(client, answer["job_id"])["state"] == "succeeded"
    assert client.get("/v1/settings/hz").json()["images"] == 29
    assert client.post("/v1/settings/hz/feedback", data={"label": "FAIL"}, files=files_of([missed])).status_code == 200
    calibration = client.post("/v1/settings/hz/calibrations", data={"policy": "f1"}).json()
    assert calibration["n_fail"] == 1 and calibration["n_pass"] == 29, "the nominal set, leave-one-out, plus the labelled FAIL"
    without = client.post("/v1/settings/hz/calibrations", data={"policy": "quantile:0.05", "use_feedback": "false"}).json()
    assert without["n_fail"] == 0


def test_nominal_images_can_be_dropped_and_settings_deleted(filled: TestClient, hazelnut: Path) -> None:
    client = filled
    neighbour = client.post("/v1/settings/hz/neighbors", files=files_of([hazelnut / "test" / "good" / "04.jpg"])).json()
    image_id = neighbour["results"][0]["neighbors"][0]["id"]
    assert client.delete(f"/v1/settings/hz/images/{image_id}").status_code == 204
    assert client.delete(f"/v1/settings/hz/images/{image_id}").status_code == 404
    assert client.get("/v1/settings/hz").json()["images"] == 27
    other = client.put("/v1/settings/hz", json={"backbone": "mobilenet_v2"})
    assert other.status_code == 409, other.text
    [error] = other.json()["detail"]
    assert error["loc"] == ["body", "backbone"] and error["type"] == "backbone_change_needs_reindex"
    assert "a change of backbone is a re-index" in error["msg"] and "/v1/settings/hz/reindex" in error["msg"]
    assert client.get("/v1/settings/hz").json()["backbone"] == "efficientnet_lite0"
    assert client.delete("/v1/settings/hz").status_code == 204
    assert client.get("/v1/settings/hz").status_code == 404
    assert client.get("/v1/settings").json() == {"settings": []}


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("not_an_image", 415, "not an image"),
        ("truncated", 422, "truncated"),
        ("one_pixel", 422, "too small"),
        ("bomb", 413, "pixels"),
    ],
)
def test_bad_uploads_are_refused_by_field_and_change_nothing(
    client: TestClient, hazelnut: Path, bad_images: dict[str, Path], name: str, status: int, reason: str
) -> None:
    client.put("/v1/settings/hz", json={})
    upload = files_of(jpgs(hazelnut / "train" / "good")[:2]) + files_of([bad_images[name]])
    response = client.post("/v1/settings/hz/images", files=upload)
    assert response.status_code == status
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["body", "files", 2] and reason in detail["msg"] and bad_images[name].name in detail["msg"]
    assert client.get("/v1/jobs").json() == {"jobs": []} and client.get("/v1/settings/hz").json()["images"] == 0


def test_limits_and_malformed_requests_answer_4xx_naming_the_field(tmp_path: Path, hazelnut: Path) -> None:
    image = hazelnut / "train" / "good" / "00.jpg"
    size = image.stat().st_size
    with make_client(tmp_path, NOMINAL_MAX_IMAGE_BYTES=size - 1, NOMINAL_MAX_REQUEST_BYTES=3 * size) as client:
        client.put("/v1/settings/hz", json={})
        one = client.post("/v1/settings/hz/images", files=files_of([image]))
        assert one.status_code == 413 and one.json()["detail"][0]["loc"] == ["body", "files", 0]
        many = client.post("/v1/settings/hz/images", files=files_of([image] * 4))
        assert many.status_code == 413 and "request body" in many.json()["detail"][0]["msg"]
        none = client.post("/v1/settings/hz/inspect")
        assert none.status_code == 422 and none.json()["detail"][0]["loc"] == ["body", "files"]
        metadata = client.post("/v1/settings/hz/images", files=files_of([image]), data={"metadata": "[1"})
        assert metadata.status_code in (413, 422)
        assert client.put("/v1/settings/hz", json={"k": 0}).status_code == 422
        assert client.put("/v1/settings/hz", json={"backbone": "resnet5000"}).status_code == 422
        assert client.put("/v1/settings/bad name", json={}).status_code == 422
        bad_policy = client.post("/v1/settings/hz/calibrations", data={"policy": "precision>=7"})
        assert bad_policy.status_code == 422 and bad_policy.json()["detail"][0]["loc"] == ["body", "policy"]
        assert client.post("/v1/settings/hz/inspect", files=files_of([image])).status_code in (409, 413)
        for method, url in [("get", "/v1/settings/nope"), ("delete", "/v1/settings/nope"), ("get", "/v1/jobs/nope"),
                            ("get", "/v1/settings/nope/calibrations/latest"), ("get", "/v1/settings/hz/images/x")]:
            assert getattr(client, method)(url).status_code == 404, url


def test_api_keys_separate_readers_from_admins(tmp_path: Path, hazelnut: Path) -> None:
    with make_client(tmp_path, NOMINAL_API_KEYS="adm1n:admin,l1ne:read") as client:
        admin, reader = {"X-API-Key": "adm1n"}, {"X-API-Key": "l1ne"}
        assert client.put("/v1/settings/hz", json={}).status_code == 401
        assert client.put("/v1/settings/hz", json={}, headers={"X-API-Key": "guess"}).status_code == 401
        assert client.put("/v1/settings/hz", json={}, headers=reader).status_code == 403
        assert client.put("/v1/settings/hz", json={}, headers=admin).status_code == 201
        assert client.get("/v1/settings/hz", headers=reader).status_code == 200
        upload = files_of(jpgs(hazelnut / "train" / "good")[:3])
        assert client.post("/v1/settings/hz/images", files=upload, headers=reader).status_code == 403
        job = client.post("/v1/settings/hz/images", files=upload, headers=admin).json()
        assert wait_job(client, job["job_id"], headers=reader)["state"] == "succeeded"
        inspect = client.post("/v1/settings/hz/inspect", files=upload[:1], headers=reader)
        assert inspect.status_code == 200 and inspect.json()["results"][0]["verdict"] == "UNCALIBRATED"
        assert client.get("/healthz").status_code == 200, "probes need no key"


def test_concurrent_inspections_are_all_answered(filled: TestClient, hazelnut: Path) -> None:
    images = jpgs(hazelnut / "test" / "good") + jpgs(hazelnut / "test" / "colour")

    def inspect(path: Path) -> tuple[int, str]:
        response = filled.post("/v1/settings/hz/inspect", files=files_of([path]))
        return response.status_code, response.json()["results"][0]["source"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(inspect, images * 2))
    assert answers == [(200, p.name) for p in images * 2]


def test_health_readiness_and_metrics(filled: TestClient, hazelnut: Path) -> None:
    assert filled.get("/healthz").json() == {"status": "ok", "checks": {}}
    assert filled.get("/readyz").json() == {"status": "ok", "checks": {"store": "ok"}}
    filled.post("/v1/settings/hz/inspect", files=files_of([hazelnut / "test" / "good" / "04.jpg"]))
    text = filled.get("/metrics").text
    assert 'nominal_verdicts_total{setting="hz",verdict="UNCALIBRATED"} 1.0' in text
    assert 'nominal_http_requests_total{method="POST",route="/v1/settings/{setting}/inspect",status="200"} 1.0' in text
    assert "nominal_inference_seconds_count" in text


def test_the_store_survives_a_restart_of_the_service(tmp_path: Path, hazelnut: Path) -> None:
    with make_client(tmp_path) as client:
        client.put("/v1/settings/hz", json={"k": 2})
        job = client.post("/v1/settings/hz/images", files=files_of(jpgs(hazelnut / "train" / "good")[:5])).json()
        wait_job(client, job["job_id"])
    with make_client(tmp_path) as client:
        assert client.get("/v1/settings/hz").json()["images"] == 5
        assert client.get(f"/v1/jobs/{job['job_id']}").json()["state"] == "succeeded"


def test_a_truncated_image_to_inspect_is_refused_with_422(filled: TestClient, bad_images: dict[str, Path]) -> None:
    response = filled.post("/v1/settings/hz/inspect", files=files_of([bad_images["truncated"]]))
    assert response.status_code == 422
    assert "truncated.jpg" in response.json()["detail"][0]["msg"] and "truncated" in response.json()["detail"][0]["msg"]


def test_a_tiled_patch_setting_maps_the_whole_image(client: TestClient, hazelnut: Path) -> None:
    created = client.put("/v1/settings/tiles", json={"scoring": "patch", "tiling": "on"}).json()
    assert created["tiling"] == "on"
    job = client.post("/v1/settings/tiles/images", files=files_of(jpgs(hazelnut / "train" / "good")[:3])).json()
    assert wait_job(client, job["job_id"])["state"] == "succeeded"
    defect = hazelnut / "test" / "colour" / "00.jpg"
    result = client.post("/v1/settings/tiles/inspect", files=files_of([defect]), data={"heatmap": "true"}).json()["results"][0]
    width, height = Image.open(defect).size
    grid = result["heatmap"]["grid"]
    assert (len(grid), len(grid[0])) == (-(-height // 8), -(-width // 8))  # 8 px cells over the whole image
    assert client.put("/v1/settings/tiles", json={"tiling": "sometimes"}).status_code == 422


def test_a_patch_setting_answers_with_a_heat_map_when_asked(client: TestClient, hazelnut: Path) -> None:
    assert client.put("/v1/settings/hzp", json={"scoring": "patch"}).json()["scoring"] == "patch"
    job = client.post("/v1/settings/hzp/images", files=files_of(jpgs(hazelnut / "train" / "good"))).json()
    assert wait_job(client, job["job_id"])["state"] == "succeeded"
    defect = hazelnut / "test" / "colour" / "00.jpg"
    plain = client.post("/v1/settings/hzp/inspect", files=files_of([defect])).json()["results"][0]
    assert plain["heatmap"] is None and plain["score"] > 0 and plain["neighbors"]
    result = client.post("/v1/settings/hzp/inspect", files=files_of([defect]), data={"heatmap": "true"}).json()["results"][0]
    heatmap = result["heatmap"]
    rows, cols = len(heatmap["grid"]), len(heatmap["grid"][0])
    assert rows == cols == 28 and 0 <= heatmap["worst"][0] < rows and 0 <= heatmap["worst"][1] < cols
    assert max(max(row) for row in heatmap["grid"]) == pytest.approx(result["score"], rel=1e-3)
    png = base64.b64decode(heatmap["png"].removeprefix("data:image/png;base64,"))
    assert Image.open(io.BytesIO(png)).size == Image.open(defect).size
