"""Drift on real images: held-out good parts are ok; the same parts darkened or blurred (a lamp
failing, a camera out of focus) raise warn or alarm, through the API and in /metrics."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageEnhance, ImageFilter

from app.api.main import create_app
from app.config import Config

pytestmark = pytest.mark.slow


def upload(paths_or_bytes: list[tuple[str, bytes]], field: str = "files") -> list[tuple[str, tuple[str, bytes]]]:
    return [(field, (name, data)) for name, data in paths_or_bytes]


def altered(path: Path, how: str) -> tuple[str, bytes]:
    image = Image.open(path).convert("RGB")
    image = ImageEnhance.Brightness(image).enhance(0.45) if how == "dark" else image.filter(ImageFilter.GaussianBlur(4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"{how}-{path.stem}.png", buffer.getvalue()


def gauge(client: TestClient, name: str, setting: str) -> float:
    text = client.get("/metrics").text
    found = re.search(rf'^{name}\{{setting="{setting}"\}} (\S+)$', text, flags=re.MULTILINE)
    assert found, f"{name} for {setting} not in /metrics"
    return float(found.group(1))


def test_darkened_or_blurred_parts_raise_drift_through_the_api_and_metrics(tmp_path: Path, hazelnut: Path) -> None:
    train = sorted((hazelnut / "train" / "good").glob("*.jpg"))
    held_out = train[20:] + sorted((hazelnut / "test" / "good").glob("*.jpg"))
    window = len(held_out)
    config = Config(NOMINAL_DATA=tmp_path / "data", NOMINAL_DRIFT_WINDOW=window)
    with TestClient(create_app(config)) as client:
        client.put("/v1/settings/hz", json={"k": 1})
        job = client.post("/v1/settings/hz/images", files=upload([(p.name, p.read_bytes()) for p in train[:20]]))
        for _ in range(1200):
            state = client.get(f"/v1/jobs/{job.json()['job_id']}").json()["state"]
            if state in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.1)
        assert state == "succeeded"
        made = client.post("/v1/settings/hz/calibrations", data={"policy": "quantile:0.05"})
        assert made.status_code == 200 and made.json()["active"], made.text

        empty = client.get("/v1/settings/hz/drift").json()
        assert empty["state"] == "ok" and not empty["enough_data"]

        good = client.post("/v1/settings/hz/inspect", files=upload([(p.name, p.read_bytes()) for p in held_out]))
        assert good.status_code == 200
        report = client.get("/v1/settings/hz/drift").json()
        assert report["enough_data"] and report["window"] == window and report["reference"] == 20
        assert report["state"] == "ok", report["reasons"]
        assert gauge(client, "nominal_drift_state", "hz") == 0
        # Held-out good parts: their mean embedding is as close to the nominal centroid as chance allows.
        assert report["embedding_window"] == window and report["embedding_shift"] < 2.0, report
        assert gauge(client, "nominal_drift_embedding_shift", "hz") == pytest.approx(report["embedding_shift"])

        for how in ("blur", "dark"):
            shifted = client.post("/v1/settings/hz/inspect", files=upload([altered(p, how) for p in held_out]))
            assert shifted.status_code == 200
            report = client.get("/v1/settings/hz/drift", params={"last": window}).json()
            assert report["state"] in ("warn", "alarm"), (how, report)
            assert report["ks_p_value"] < 0.01 and report["mean_score"] > report["reference_mean_score"]
            assert "re-index" in report["advice"] and "calibrate again" in report["advice"]
            assert gauge(client, "nominal_drift_state", "hz") >= 1
            assert gauge(client, "nominal_drift_ks_statistic", "hz") == pytest.approx(report["ks_statistic"])
            assert gauge(client, "nominal_fail_rate", "hz") == pytest.approx(report["fail_rate"])
            # The look changed: the window's mean embedding is far from the nominal centroid (blur warns, dark alarms).
            assert report["embedding_window"] == window, report
            assert report["embedding_shift"] >= (3.0 if how == "dark" else 2.0), (how, report["embedding_shift"])
            assert any("look different" in reason for reason in report["reasons"]), report["reasons"]
            assert gauge(client, "nominal_drift_embedding_shift", "hz") == pytest.approx(report["embedding_shift"])
        print({k: report[k] for k in ("state", "ks_statistic", "ks_p_value", "psi", "fail_rate", "predicted_fail_rate",
                                      "embedding_shift")})

        # The window is the recent verdicts: good parts again bring the state back to ok.
        client.post("/v1/settings/hz/inspect", files=upload([(p.name, p.read_bytes()) for p in held_out]))
        assert client.get("/v1/settings/hz/drift").json()["state"] == "ok"
        metrics = client.get("/metrics").text
        assert re.search(r'^nominal_verdicts_total\{setting="hz",verdict="FAIL"\} [1-9]', metrics, flags=re.MULTILINE)

        for params, loc in [({"last": 0}, ["query", "last"]), ({"minutes": -1}, ["query", "minutes"])]:
            refused = client.get("/v1/settings/hz/drift", params=params)
            assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == loc
        assert client.get("/v1/settings/nowhere/drift").status_code == 404
