"""Every verdict carries a conformal p-value from the calibration in use, on real images and weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexing.conformal import REFERENCE_KIND
from indexing.service import NominalService
from indexing.store import EdgeStore

pytestmark = pytest.mark.slow


def _expected(reference, score: float) -> float:
    reference = np.asarray(reference)
    return (1 + int(np.sum(reference >= score))) / (reference.size + 1)


def test_uncalibrated_verdicts_carry_p_values_among_the_nominal_leave_one_out_scores(service, hazelnut_sets) -> None:
    service.index("hazelnut", hazelnut_sets["train"])
    loo = service.nominal_scores("hazelnut")
    verdicts = service.inspect("hazelnut", hazelnut_sets["good"][:2] + hazelnut_sets["defect"][:2])
    for v in verdicts:
        assert v.verdict == "UNCALIBRATED"
        assert v.p_value == pytest.approx(_expected(loo, v.score))
    # A defect scores above every nominal image: the smallest p-value 28 references allow.
    assert verdicts[-1].p_value == pytest.approx(1 / (len(loo) + 1))


def test_p_values_come_from_the_stored_reference_of_the_calibration_in_use(tmp_path: Path, pool, hazelnut_sets, monkeypatch) -> None:
    store = EdgeStore(tmp_path / "store")
    service = NominalService(store, backbones=pool)
    service.index("hazelnut", hazelnut_sets["train"])
    loo = service.nominal_scores("hazelnut")
    made = service.calibrate("hazelnut", policy="quantile:0.1")
    assert made.active
    good, defects = hazelnut_sets["good"], hazelnut_sets["defect"]
    verdicts = service.inspect("hazelnut", good + defects)
    for v in verdicts:
        assert v.calibration_id == made.calibration.id
        assert v.p_value == pytest.approx(_expected(loo, v.score))
        # The threshold is the 0.9 quantile of the same scores: FAIL exactly where few good parts score as high.
        assert (v.verdict == "FAIL") == (v.score >= made.calibration.threshold)
        if v.verdict == "FAIL":
            assert v.p_value <= 0.1 + 2 / (len(loo) + 1)
    assert max(v.p_value for v in verdicts[len(good):]) < min(v.p_value for v in verdicts[: len(good)])
    store.close()

    # After a restart the reference is read from the store: verdicts never recompute the nominal scores.
    store = EdgeStore(tmp_path / "store")
    try:
        reopened = NominalService(store, backbones=pool)
        assert store.list_records(REFERENCE_KIND)[0]["calibration_id"] == made.calibration.id

        def refuse(*args, **kwargs):
            raise AssertionError("a verdict recomputed the nominal scores")

        monkeypatch.setattr(reopened, "nominal_scores", refuse)
        again = reopened.inspect("hazelnut", good + defects)
        assert [v.p_value for v in again] == pytest.approx([v.p_value for v in verdicts])
    finally:
        store.close()


def test_a_calibration_from_given_pass_images_uses_their_scores_and_the_api_returns_p_value(service, hazelnut_sets) -> None:
    service.index("hazelnut", hazelnut_sets["train"])
    good, defects = hazelnut_sets["good"], hazelnut_sets["defect"]
    service.calibrate("hazelnut", pass_images=good, fail_images=defects)
    held_out = service.scores("hazelnut", good)
    verdict = service.inspect("hazelnut", defects[:1])[0]
    assert verdict.p_value == pytest.approx(_expected(held_out, verdict.score)) == pytest.approx(1 / (len(good) + 1))

    from app.api.schemas import VerdictPublic

    assert VerdictPublic.of("hazelnut", verdict).model_dump()["p_value"] == verdict.p_value


def test_deleting_a_setting_removes_its_reference_scores(service, hazelnut_sets) -> None:
    service.index("hazelnut", hazelnut_sets["train"][:6])
    service.calibrate("hazelnut", policy="quantile:0.2")
    assert service.store.list_records(REFERENCE_KIND)
    service.delete_setting("hazelnut")
    assert service.store.list_records(REFERENCE_KIND) == []


def test_verdicts_taking_turns_between_uncalibrated_settings_score_each_nominal_set_once(
        service, hazelnut_sets, monkeypatch) -> None:
    for name in ("line-1", "line-2"):
        service.put_setting(name, scoring="global")
        service.index(name, hazelnut_sets["train"][:8])
    worked_out: list[str] = []
    original = NominalService.nominal_scores
    monkeypatch.setattr(NominalService, "nominal_scores",
                        lambda self, name, **kw: worked_out.append(name) or original(self, name, **kw))
    image = hazelnut_sets["defect"][:1]
    first = {name: service.inspect(name, image)[0].p_value for name in ("line-1", "line-2")}
    for _ in range(3):  # the two lines' verdicts take turns, as one API serving two cameras
        for name in ("line-1", "line-2"):
            assert service.inspect(name, image)[0].p_value == first[name]
    assert worked_out == ["line-1", "line-2"]
    service.index("line-1", hazelnut_sets["train"][8:10])  # a grown nominal set is scored again
    service.inspect("line-1", image)
    assert worked_out == ["line-1", "line-2", "line-1"]
