"""Fused scoring end to end: real weights, real Hazelnut Toy images, the embedded store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from indexing import positional
from indexing.backbones.base import Backbone
from indexing.fused import Standard
from indexing.images import decode
from indexing.patch_mode import PatchConfig
from indexing.positional import GENERATION_KIND, POSITIONAL_KIND
from indexing.reindex import reindex
from indexing.service import BackbonePool, NominalService
from indexing.store import EdgeStore
from indexing.versions import BankExtension

pytestmark = pytest.mark.slow

SETTING = "nuts"


def _standardised(service: NominalService, parts: dict[str, float]) -> float:
    version = service.versions.active(SETTING)
    patch = service.versions.patch_record(version)
    standards = service.fused.standards(version, patch, service.fused.record(patch), k=1)
    return float(np.mean([standards.by_part[part](score) for part, score in parts.items()]))


def test_a_fused_verdict_is_the_mean_of_its_parts_standardised_by_the_nominal_images(service, hazelnut_sets) -> None:
    service.put_setting(SETTING, scoring="fused")
    service.index(SETTING, hazelnut_sets["train"])  # 28 images: too few to decide alignment, so no positional part
    good, defect = hazelnut_sets["good"], hazelnut_sets["defect"]
    verdicts = service.inspect(SETTING, [*good, *defect])
    assert {v.scorer for v in verdicts} == {"fused:patch+global"} and {v.verdict for v in verdicts} == {"UNCALIBRATED"}
    for verdict in verdicts:
        assert set(verdict.parts) == {"patch", "global"}
        assert verdict.score == pytest.approx(_standardised(service, verdict.parts), rel=1e-9)
        assert verdict.neighbours and verdict.p_value is not None
    # each part is the score its own mode gives the image
    service.put_setting(SETTING, scoring="patch")
    patch = service.inspect(SETTING, defect[:3])
    service.put_setting(SETTING, scoring="global")
    plain = service.inspect(SETTING, defect[:3])
    for fused, alone, kNN in zip(verdicts[len(good):], patch, plain):
        assert fused.parts["patch"] == pytest.approx(alone.score, rel=1e-5)
        assert fused.parts["global"] == pytest.approx(kNN.score, rel=1e-5)
    is_fail = [False] * len(good) + [True] * len(defect)
    assert roc_auc_score(is_fail, [v.score for v in verdicts]) > 0.95
    # a calibration without PASS images takes the nominal images' own fused scores
    service.put_setting(SETTING, scoring="fused")
    calibrated = service.calibrate(SETTING, policy="quantile:0.01").calibration
    assert calibrated.scoring == "fused:patch+global" and calibrated.n_pass == len(hazelnut_sets["train"])
    with_map = service.inspect(SETTING, defect[:1], heatmap=True)[0]
    assert with_map.verdict == "FAIL" and with_map.heatmap is not None


def test_a_fused_heat_map_is_the_mean_of_the_patch_and_positional_maps_standardised(service, hazelnut_sets) -> None:
    service.put_setting(SETTING, scoring="fused")
    service.index(SETTING, hazelnut_sets["train"])  # positional statistics kept, though too few images to join the score
    defect = hazelnut_sets["defect"][:3]
    fused = service.inspect(SETTING, defect, heatmap=True)
    assert {v.scorer for v in fused} == {"fused:patch+global"}
    version = service.versions.active(SETTING)
    patch = service.versions.patch_record(version)
    record = service.fused.record(patch)
    standards = service.fused.standards(version, patch, record, k=1)
    statistics = service.positional.statistics(record)
    config = PatchConfig.from_dict(patch["patch_config"])
    backbone = service.embedder.backbone_for(version)
    made = config.maker().patchify(backbone.feature_maps([decode(image) for image in defect]))
    positional_maps = statistics.distances(made.vectors).reshape(len(defect), *made.grid)
    service.put_setting(SETTING, scoring="patch")
    alone = service.inspect(SETTING, defect, heatmap=True)
    for verdict, patch_verdict, positional_map in zip(fused, alone, positional_maps):
        patch_map = np.array(patch_verdict.heatmap.grid)
        expected = (standards.by_part["patch"](patch_map) + Standard(*record.standard)(positional_map)) / 2
        np.testing.assert_allclose(np.array(verdict.heatmap.grid), expected, rtol=1e-4, atol=1e-4)
        assert not np.allclose(np.array(verdict.heatmap.grid), patch_map)
        # the explanation's neighbours stay those of the worst patch, and the map is drawn over the image
        assert verdict.heatmap.worst == patch_verdict.heatmap.worst and verdict.heatmap.png[:4] == b"\x89PNG"


def test_aligned_parts_add_positional_statistics_that_outlive_the_process(tmp_path, pool, hazelnut_sets,
                                                                        monkeypatch) -> None:
    monkeypatch.setattr(positional, "ALIGNMENT_IMAGES", 12)  # Hazelnut Toy's 28 images, decided after 12
    train, defect = hazelnut_sets["train"], hazelnut_sets["defect"]
    with EdgeStore(tmp_path / "store") as store:
        service = NominalService(store, backbones=pool)
        service.put_setting(SETTING, scoring="fused")
        service.index(SETTING, train[:8])
        before = service.calibrate(SETTING, policy="quantile:0.05").calibration
        assert before.scoring == "fused:patch+global"
        service.index(SETTING, train[8:])  # the setting decides: its nuts sit in one place
        status = service.status(SETTING)
        assert status.calibration is None and "calibrate again" in status.calibration_note
        verdicts = service.inspect(SETTING, defect[:4])
        assert {v.scorer for v in verdicts} == {"fused:patch+positional+global"}
        assert all(set(v.parts) == {"patch", "positional", "global"} for v in verdicts)
        record = service.fused.record(service.versions.patch_record(service.versions.active(SETTING)))
        assert record.count == len(train) and record.aligned and record.reference[0] == len(train)
    with EdgeStore(tmp_path / "store") as store:  # another process, reading what the first one wrote
        again = NominalService(store, backbones=BackbonePool())
        for first, second in zip(verdicts, again.inspect(SETTING, defect[:4])):
            assert second.parts == pytest.approx(first.parts, rel=1e-5) and second.score == pytest.approx(first.score)
        again.delete_setting(SETTING)
        assert store.list_records(POSITIONAL_KIND) == store.list_records(GENERATION_KIND) == []
        assert not [name for name in store.collections() if "__positional__" in name]


def test_a_fused_verdict_runs_the_network_once(service, hazelnut_sets, monkeypatch) -> None:
    service.put_setting(SETTING, scoring="fused")
    service.index(SETTING, hazelnut_sets["train"][:6])
    calls: list[str] = []
    for method in ("embed", "feature_maps", "embed_with_maps"):
        original = getattr(Backbone, method)
        monkeypatch.setattr(Backbone, method, lambda self, *a, _o=original, _m=method, **k: calls.append(_m) or _o(self, *a, **k))
    service.inspect(SETTING, hazelnut_sets["defect"][:2])
    assert calls == ["embed_with_maps"]


def test_indexing_a_fused_setting_runs_the_network_once_per_batch_for_the_same_bank(
        tmp_path: Path, pool: BackbonePool, hazelnut_sets, monkeypatch) -> None:
    train = hazelnut_sets["train"][:6]
    calls: list[str] = []  # forward passes over images (a backbone's check of an empty list is not one)
    for method in ("embed", "feature_maps", "embed_with_maps"):
        original = getattr(Backbone, method)
        monkeypatch.setattr(Backbone, method, lambda self, images, *a, _o=original, _m=method, **k:
                            (len(images) and calls.append(_m)) or _o(self, images, *a, **k))

    def built(folder: str) -> tuple[dict, dict]:
        with EdgeStore(tmp_path / folder) as store:
            service = NominalService(store, backbones=pool)
            service.put_setting(SETTING, scoring="fused")
            service.index(SETTING, train)
            patch = service.versions.patch_record(service.versions.active(SETTING))
            bank = {p.id: p.vector for p in store.scroll(patch["collection"], with_vectors=True)}
            statistics = service.positional.statistics(service.fused.record(patch))
            return bank, {"mean": statistics.mean, "scatter": statistics.scatter}

    one_pass, one_pass_statistics = built("one-pass")
    assert calls and set(calls) == {"embed_with_maps"}, calls  # one pass per batch: no separate embed or maps
    # The same images through two passes (the path tiled images take) make the same bank and statistics.
    monkeypatch.setattr(BankExtension, "wants_maps", lambda self, batch: False)
    calls.clear()
    two_passes, two_passes_statistics = built("two-passes")
    assert {"embed", "feature_maps"} <= set(calls) and "embed_with_maps" not in calls
    assert one_pass.keys() == two_passes.keys() and len(one_pass) > 0
    for point, vector in one_pass.items():
        np.testing.assert_allclose(vector, two_passes[point], atol=1e-5)
    for name, values in one_pass_statistics.items():
        np.testing.assert_allclose(values, two_passes_statistics[name], rtol=1e-4, atol=1e-6)


def test_a_fused_reindex_merges_positional_statistics_as_an_upload_of_the_same_images_does(
        service, hazelnut: Path, hazelnut_sets) -> None:
    class Quiet:
        def start(self, total=None) -> None: ...
        def __call__(self, stage: str, done: int, total: int) -> None: ...
        def report_errors(self, errors) -> None: ...

    def merged() -> tuple[positional.PositionalRecord, positional.PositionalStatistics]:
        record = service.fused.record(service.versions.patch_record(service.versions.active(SETTING)))
        return record, service.positional.statistics(record)

    service.put_setting(SETTING, scoring="fused")
    service.index(SETTING, hazelnut_sets["train"])
    uploaded, uploaded_statistics = merged()
    # 14 batches of 2: each merge rewrites the whole statistics, so the re-index gathers its batches as an upload does.
    reindex(service, Quiet(), setting=SETTING, source=str(hazelnut / "train" / "good"), batch_size=2)
    assert service.versions.active(SETTING).version == 2
    reindexed, reindexed_statistics = merged()
    assert reindexed.collection != uploaded.collection
    assert reindexed.generation == uploaded.generation == 1  # one merge of all 28 images
    assert reindexed.count == uploaded.count == len(hazelnut_sets["train"])
    assert reindexed.reference == pytest.approx(uploaded.reference, rel=1e-4)  # the same standards for a fused score
    np.testing.assert_allclose(reindexed_statistics.mean, uploaded_statistics.mean, atol=1e-5)
    np.testing.assert_allclose(reindexed_statistics.scatter, uploaded_statistics.scatter, rtol=1e-4)
