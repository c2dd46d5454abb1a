"""A scorer trained on labelled defects, in production: the job, the gate, which scorer answers, and a trained
setting across a restart, a re-index and a rollback. Real ELPV cells, the real pretrained backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Config
from indexing.datasets import load_dataset
from indexing.image_store import ImageStore
from indexing.images import ImageInput
from indexing.runner import InProcessRunner
from indexing.service import BackbonePool, NominalService
from indexing.store.edge import EdgeStore
from tests.waiting import wait_for_job

pytestmark = pytest.mark.slow

SETTING = "poly"


@pytest.fixture(scope="module")
def poly() -> dict[str, list[ImageInput]]:
    """ELPV poly cells: nominal training cells for two versions, labelled defects, and held-out cells."""
    dataset = load_dataset("elpv", "elpv", subset="poly")
    fails = [t.image for t in dataset.test if t.is_fail]
    passes = [t.image for t in dataset.test if not t.is_fail]
    return {
        "v1": dataset.train[:120], "v2": dataset.train[120:220], "labelled": fails[:30],
        "held_out": fails[60:66] + passes[:6],
    }


def _folder(path: Path, images: list[ImageInput]) -> Path:
    path.mkdir(parents=True)
    for i, image in enumerate(images):
        (path / f"{i:04d}.png").write_bytes(image.data)
    return path


def test_a_trained_scorer_answers_verdicts_and_keeps_them_across_a_restart_a_reindex_and_a_rollback(
    tmp_path: Path, pool: BackbonePool, poly: dict[str, list[ImageInput]]
) -> None:
    store = EdgeStore(tmp_path / "store")
    service = NominalService(store, backbones=pool)
    service.put_setting(SETTING, scoring="global")  # its trained scorer is a metric projection
    service.index(SETTING, poly["v1"])
    unsupervised = service.calibrate(SETTING, policy="quantile:0.01").calibration
    before = service.inspect(SETTING, poly["held_out"])
    assert {v.scorer for v in before} == {"global"} and unsupervised.scoring == "global"

    trained = service.train(SETTING, fail_images=poly["labelled"], pass_images=poly["v1"][:60], steps=100)
    assert trained.active, trained.reason
    scorer = trained.scorer
    assert scorer.passed and scorer.n_fail == 30 and scorer.n_synthetic == 60
    calibration = trained.calibrated.calibration
    assert calibration.scoring == scorer.scoring == f"trained:{scorer.id}"
    assert service.status(SETTING).scorer == scorer.scoring
    answered = service.inspect(SETTING, poly["held_out"])
    assert {v.scorer for v in answered} == {scorer.scoring}
    assert {v.calibration_id for v in answered} == {calibration.id}
    scores = [v.score for v in answered]
    # The held-out defects score above the held-out good cells more often than not, in the trained space.
    assert np.mean(scores[:6]) > np.mean(scores[6:])

    # A restart: a new process reads the scorer and its calibration from the store.
    store.close()
    store = EdgeStore(tmp_path / "store")
    service = NominalService(store, backbones=pool)
    again = service.inspect(SETTING, poly["held_out"])
    assert [v.scorer for v in again] == [scorer.scoring] * len(again)
    assert np.allclose([v.score for v in again], scores, atol=1e-5)
    assert [v.verdict for v in again] == [v.verdict for v in answered]

    # A re-index to the same backbone keeps the scorer (it projects that backbone's embeddings) on the new nominal set;
    # a rollback returns to the first version and to exactly the verdicts it gave.
    runner = InProcessRunner(service, ImageStore(tmp_path / "images"))
    try:
        source = _folder(tmp_path / "v2", poly["v2"])
        assert wait_for_job(runner.board, runner.submit_reindex(SETTING, str(source))).state == "succeeded"
        on_v2 = service.inspect(SETTING, poly["held_out"])
        assert {v.scorer for v in on_v2} == {scorer.scoring}
        assert not np.allclose([v.score for v in on_v2], scores, atol=1e-5)  # another nominal set answered
        service.rollback(SETTING)
        back = service.inspect(SETTING, poly["held_out"])
        assert [v.scorer for v in back] == [scorer.scoring] * len(back)
        assert np.allclose([v.score for v in back], scores, atol=1e-5)
    finally:
        runner.close()

    # A new calibration is made for the scorer in use; switching the trained scorer off is activating one made
    # with the unsupervised scorer.
    assert service.calibrate(SETTING, policy="quantile:0.01", activate=False).calibration.scoring == scorer.scoring
    service.activate_calibration(SETTING, unsupervised.id)
    assert {v.scorer for v in service.inspect(SETTING, poly["held_out"][:2])} == {"global"}
    store.close()


@pytest.mark.parametrize("scoring", ["global", "patch"])
def test_a_trained_scorer_that_does_not_help_is_recorded_but_stays_off(
    service: NominalService, poly: dict[str, list[ImageInput]], scoring: str
) -> None:
    # Nominal cells, a random 30 of them labelled FAIL: nothing separates those from the others.
    cells = [poly["v1"][i] for i in np.random.default_rng(1).permutation(len(poly["v1"]))]
    service.put_setting(SETTING, scoring=scoring)
    service.index(SETTING, cells[60:])
    service.calibrate(SETTING, policy="quantile:0.01")
    before = service.status(SETTING).calibration
    refused = service.train(SETTING, fail_images=cells[:30], pass_images=cells[30:60], steps=100)
    assert refused.scorer.kind == ("hybrid" if scoring == "patch" else "metric")
    assert not refused.active and refused.calibrated is None
    assert "stays off" in refused.reason and "does not measurably beat" in refused.reason
    assert [s.id for s in service.trained_scorers(SETTING)] == [refused.scorer.id]  # recorded, with its gate
    assert service.status(SETTING).calibration == before
    assert {v.scorer for v in service.inspect(SETTING, poly["held_out"][:2])} == {scoring}


def test_training_over_http_is_a_job_and_says_which_scorer_answers(
    tmp_path: Path, poly: dict[str, list[ImageInput]]
) -> None:
    config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data")
    files = lambda field, images: [(field, (f"{i}.png", image.data)) for i, image in enumerate(images)]  # noqa: E731
    with TestClient(create_app(config)) as client:
        assert client.put(f"/v1/settings/{SETTING}", json={"k": 1, "scoring": "global"}).status_code == 201
        unindexed = client.post(f"/v1/settings/{SETTING}/train", files=files("fail", poly["labelled"][:2]))
        assert unindexed.status_code == 409, unindexed.text
        accepted = client.post(f"/v1/settings/{SETTING}/images", files=files("files", poly["v1"]))
        assert accepted.status_code == 202
        _wait(client, accepted.json()["job_id"])

        for few in (poly["labelled"][:4], poly["labelled"][:1] * 5):  # four, and one image five times
            refused = client.post(f"/v1/settings/{SETTING}/train", files=files("fail", few))
            assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "fail"], refused.text
        assert client.post("/v1/settings/nowhere/train", files=files("fail", poly["labelled"][:2])).status_code == 404

        job = client.post(f"/v1/settings/{SETTING}/train", files=files("fail", poly["labelled"]))
        assert job.status_code == 202, job.text
        done = _wait(client, job.json()["job_id"])
        assert done["state"] == "succeeded", done["message"]
        result = done["result"]
        listed = client.get(f"/v1/settings/{SETTING}/trained").json()["trained"]
        assert [t["id"] for t in listed] == [result["trained"]["id"]]
        assert listed[0]["in_use"] == result["active"] == listed[0]["gate"]["active"]
        scorer = client.get(f"/v1/settings/{SETTING}").json()["scorer"]
        verdict = client.post(f"/v1/settings/{SETTING}/inspect", files=files("files", poly["held_out"][:1])).json()
        assert verdict["results"][0]["scorer"] == scorer
        assert scorer == (f"trained:{result['trained']['id']}" if result["active"] else "global")


def _wait(client: TestClient, job_id: str) -> dict:
    import time

    deadline = time.monotonic() + 300
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def test_a_patch_setting_trains_a_dense_hybrid_scorer_that_its_verdicts_and_heat_maps_use(
    tmp_path: Path, pool: BackbonePool, poly: dict[str, list[ImageInput]]
) -> None:
    store = EdgeStore(tmp_path / "store")
    service = NominalService(store, backbones=pool)
    service.put_setting(SETTING, scoring="patch")
    service.index(SETTING, poly["v1"])
    unsupervised = service.scores(SETTING, poly["held_out"])

    trained = service.train(SETTING, fail_images=poly["labelled"], pass_images=poly["v2"][:60])
    scorer = trained.scorer
    assert scorer.kind == "hybrid" and scorer.scoring == f"hybrid:{scorer.id}" and scorer.n_synthetic == 60
    assert trained.active, trained.reason
    assert trained.calibrated.calibration.scoring == scorer.scoring
    answered = service.inspect(SETTING, poly["held_out"], heatmap=True)
    assert {v.scorer for v in answered} == {scorer.scoring}
    hybrid = np.asarray([v.score for v in answered])
    assert not np.allclose(hybrid, unsupervised)  # the head's log-odds changed the patch scores
    for verdict in answered:  # the heat map is of the hybrid patch scores: its worst cell is the verdict's score
        assert np.isclose(max(map(max, verdict.heatmap.grid)), verdict.score, atol=1e-4)

    store.close()
    store = EdgeStore(tmp_path / "store")
    again = NominalService(store, backbones=pool).inspect(SETTING, poly["held_out"])
    assert np.allclose([v.score for v in again], hybrid, atol=1e-4)
    assert {v.scorer for v in again} == {scorer.scoring}
    store.close()


def test_nominal_train_runs_the_job_and_refuses_too_few_defects_in_one_line(
    tmp_path: Path, hazelnut: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from app.cli.main import main

    data = ["--data", str(tmp_path / "data")]
    assert main([*data, "settings", "set", "hz", "--scoring", "global"]) == 0  # a metric projection: FAIL images suffice
    assert main([*data, "index", "hz", str(hazelnut / "train" / "good")]) == 0
    colour = sorted((hazelnut / "test" / "colour").iterdir())
    capsys.readouterr()
    assert main([*data, "train", "hz", "--fail", str(colour[0])]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --fail: training needs at least 5 labelled FAIL images") and "\n" not in err

    assert main([*data, "train", "hz", "--fail", str(hazelnut / "test" / "colour"), "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["kind"] == "train" and job["state"] == "succeeded"
    result = job["result"]
    assert result["trained"]["n_fail"] == len(colour) and result["trained"]["kind"] == "metric"
    assert main([*data, "inspect", "hz", str(hazelnut / "test" / "good"), "--json"]) == 0
    verdicts = json.loads(capsys.readouterr().out)["results"]
    assert {v["scorer"] for v in verdicts} == {f"trained:{result['trained']['id']}" if result["active"] else "global"}


def test_a_fused_setting_weighs_a_trained_head_against_its_fused_score(
    tmp_path: Path, pool: BackbonePool, poly: dict[str, list[ImageInput]]
) -> None:
    from sklearn.metrics import average_precision_score

    with EdgeStore(tmp_path / "store") as store:
        service = NominalService(store, backbones=pool)
        service.put_setting(SETTING, scoring="fused")
        service.index(SETTING, poly["v1"][:40])
        held = poly["v2"][:20]
        fused = service.scores(SETTING, held + poly["labelled"])  # what verdicts score now
        trained = service.train(SETTING, fail_images=poly["labelled"], pass_images=held)
        gate = trained.scorer.gate
        # the gate's unsupervised side is the fused score (images in label order: PASS, then FAIL), not the patch score
        labels = [0] * len(held) + [1] * len(poly["labelled"])
        assert gate["unsupervised_ap"] == pytest.approx(average_precision_score(labels, fused), abs=1e-6)
        assert trained.active, trained.reason  # 40 nominal cells: the head beats the fused score by far
        # it answers alone, on the patch bank, as a patch setting's head does; its calibration fits a fused setting
        answered = service.inspect(SETTING, poly["held_out"])
        assert {v.scorer for v in answered} == {trained.scorer.scoring} and all(v.parts is None for v in answered)
        assert service.status(SETTING).calibration_note is None
