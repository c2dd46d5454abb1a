"""The service end to end on real images, real weights and the embedded store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from indexing.errors import BackboneChangeNeedsReindex, BackboneMismatch, BadImage, EmptyCollection, UnknownBackbone, UnknownSetting
from indexing.images import ImageInput, content_id
from indexing.service import NominalService
from indexing.store import EdgeStore
from indexing.store.base import Point

pytestmark = pytest.mark.slow


def test_index_stores_each_image_once_with_its_payload(service: NominalService, hazelnut_sets) -> None:
    train = hazelnut_sets["train"]
    first = service.index("hazelnut", train)
    again = service.index("hazelnut", train[:5])
    assert first.indexed == len(train) and first.count == len(train)
    assert again.count == len(train), "re-uploading the same images must not duplicate them"
    point = service.nominal_image("hazelnut", train[0].id)
    assert point is not None
    assert point.payload["sha256"] == train[0].sha256
    assert point.payload["source"].endswith("train/good/00.jpg")
    assert (point.payload["width"], point.payload["height"]) == (512, 512)
    assert point.payload["setting"] == "hazelnut" and "ingested_at" in point.payload


def test_verdicts_are_uncalibrated_until_calibrated_then_separate_pass_from_fail(service, hazelnut_sets) -> None:
    service.index("hazelnut", hazelnut_sets["train"])
    before = service.inspect("hazelnut", hazelnut_sets["good"][:1])[0]
    assert before.verdict == "UNCALIBRATED" and before.threshold is None and np.isfinite(before.score)
    assert before.scorer == "fused:patch+global", "a new setting scores fused (28 images: too few to decide alignment)"

    calibration = service.calibrate("hazelnut", pass_images=hazelnut_sets["good"], fail_images=hazelnut_sets["defect"]).calibration
    assert calibration.roc_auc is not None and calibration.roc_auc > 0.9
    verdicts = service.inspect("hazelnut", hazelnut_sets["good"] + hazelnut_sets["defect"])
    outcomes = [v.verdict for v in verdicts]
    n_good = len(hazelnut_sets["good"])
    correct = sum(o == "PASS" for o in outcomes[:n_good]) + sum(o == "FAIL" for o in outcomes[n_good:])
    assert correct / len(outcomes) >= 0.9
    assert all(v.threshold == calibration.threshold and v.calibration_id == calibration.id for v in verdicts)
    assert all(len(v.neighbours) == service.get_setting("hazelnut").k for v in verdicts)


def test_a_stored_image_is_scored_leave_one_out(service, hazelnut_sets) -> None:
    train = hazelnut_sets["train"]
    service.put_setting("hazelnut", k=3, scoring="global")
    service.index("hazelnut", train)
    verdict = service.inspect("hazelnut", train[:1])[0]
    assert verdict.score > 0.0, "its own vector, at distance 0, is left out"
    assert train[0].id not in [n.id for n in verdict.neighbours] and len(verdict.neighbours) == 3


def test_pass_only_quantile_calibration_uses_the_nominal_set(service, hazelnut_sets) -> None:
    service.index("hazelnut", hazelnut_sets["train"])
    calibration = service.calibrate("hazelnut", policy="quantile:0.1").calibration
    assert calibration.n_pass == len(hazelnut_sets["train"]) and calibration.n_fail == 0
    flagged = [s >= calibration.threshold for s in service.nominal_scores("hazelnut")]
    assert sum(flagged) <= 0.1 * len(flagged) + 1
    defects = service.inspect("hazelnut", hazelnut_sets["defect"])
    assert sum(v.verdict == "FAIL" for v in defects) >= len(defects) // 2


def test_everything_survives_a_restart(tmp_path: Path, pool, hazelnut_sets) -> None:
    store = EdgeStore(tmp_path / "store")
    service = NominalService(store, backbones=pool)
    service.put_setting("hazelnut", k=2, description="line 3 hazelnuts")
    service.index("hazelnut", hazelnut_sets["train"])
    calibration = service.calibrate("hazelnut", pass_images=hazelnut_sets["good"], fail_images=hazelnut_sets["defect"]).calibration
    before = service.inspect("hazelnut", hazelnut_sets["defect"][:2])
    store.close()

    store = EdgeStore(tmp_path / "store")
    try:
        reopened = NominalService(store, backbones=pool)
        setting = reopened.get_setting("hazelnut")
        assert (setting.k, setting.description) == (2, "line 3 hazelnuts")
        assert reopened.latest_calibration("hazelnut") == calibration
        after = reopened.inspect("hazelnut", hazelnut_sets["defect"][:2])
        assert [(v.verdict, round(v.score, 5)) for v in after] == [(v.verdict, round(v.score, 5)) for v in before]
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["not_an_image", "truncated", "one_pixel", "bomb"])
def test_bad_input_is_refused_and_changes_nothing(service, hazelnut_sets, bad_images, kind: str) -> None:
    service.index("hazelnut", hazelnut_sets["train"][:4])
    batch = hazelnut_sets["train"][4:8] + [ImageInput.from_path(bad_images[kind])]
    with pytest.raises(BadImage, match="nothing was indexed"):
        service.index("hazelnut", batch)
    assert service.status("hazelnut").count == 4


def test_bad_images_can_be_skipped_and_are_reported(service, hazelnut_sets, bad_images) -> None:
    batch = hazelnut_sets["train"][:3] + [ImageInput.from_path(p) for p in bad_images.values()]
    result = service.index("hazelnut", batch, skip_bad=True)
    assert result.indexed == 3 and result.count == 3
    assert sorted(Path(s.source).name for s in result.skipped) == sorted(p.name for p in bad_images.values())
    assert all(s.reason for s in result.skipped)


def test_unknown_setting_and_backbone_are_named(service, hazelnut_sets) -> None:
    with pytest.raises(UnknownSetting, match="nowhere"):
        service.inspect("nowhere", hazelnut_sets["good"][:1])
    with pytest.raises(UnknownBackbone, match="efficientnet_lite0"):
        service.put_setting("new-line", backbone="resnet5000")
    assert service.list_settings() == []


def test_an_empty_setting_explains_what_to_do(service, hazelnut_sets) -> None:
    service.put_setting("empty")
    with pytest.raises(EmptyCollection, match="has no nominal images yet: index PASS images first"):
        service.inspect("empty", hazelnut_sets["good"][:1])


def test_backbones_are_never_mixed(service, hazelnut_sets) -> None:
    service.index("hazelnut", hazelnut_sets["train"][:3])
    with pytest.raises(BackboneMismatch, match="re-index"):
        service.put_setting("hazelnut", backbone="mobilenet_v2")
    version = service.versions.active("hazelnut")
    assert version is not None and version.backbone_identity == service.backbones.get("efficientnet_lite0").identity


def test_the_backbone_is_the_active_versions_even_when_it_holds_no_image(service, hazelnut_sets) -> None:
    """Emptying a setting does not make its backbone editable: its version embeds with the old one."""
    train = hazelnut_sets["train"][:2]
    service.index("hazelnut", train)
    for image in train:
        service.delete_image("hazelnut", image.id)
    assert service.status("hazelnut").count == 0
    with pytest.raises(BackboneChangeNeedsReindex, match="a change of backbone is a re-index"):
        service.put_setting("hazelnut", backbone="mobilenet_v2")
    service.put_setting("hazelnut", backbone="efficientnet-lite0", k=2)  # the same backbone, spelt otherwise: fine
    service.index("hazelnut", train)
    status = service.status("hazelnut")
    assert status.setting.backbone == status.active.backbone == "efficientnet_lite0" and status.setting.k == 2


def test_a_new_settings_backbone_may_change_until_it_has_a_version(service, hazelnut_sets) -> None:
    service.put_setting("fresh")
    service.put_setting("fresh", backbone="mobilenet_v2")
    service.index("fresh", hazelnut_sets["train"][:2])
    assert service.status("fresh").active.backbone == service.get_setting("fresh").backbone == "mobilenet_v2"


def test_a_bad_nominal_image_can_be_dropped(service, hazelnut_sets) -> None:
    train = hazelnut_sets["train"][:4]
    service.index("hazelnut", train)
    assert service.delete_image("hazelnut", train[0].id) is True
    assert service.delete_image("hazelnut", train[0].id) is False
    assert service.status("hazelnut").count == 3
    assert train[0].id not in {n.id for n in service.neighbours("hazelnut", train[1:2], k=3)[0]}


def test_deleting_a_setting_removes_its_data(service, hazelnut_sets) -> None:
    service.index("hazelnut", hazelnut_sets["train"][:3])
    collections_before = service.store.collections()
    service.delete_setting("hazelnut")
    assert service.list_settings() == []
    assert not set(collections_before) & set(service.store.collections())
    with pytest.raises(UnknownSetting):
        service.get_setting("hazelnut")


def test_the_nominal_sample_draws_old_and_new_images_alike_and_reads_no_further(service: NominalService) -> None:
    """Training and drift sample a large setting's nominal images: uniformly over when they were
    indexed (ids are content hashes), and without reading every vector of a million-image setting."""
    rng = np.random.default_rng(0)
    service.store.create_collection("line", 8)
    for start in range(0, 3000, 500):  # indexed over time, oldest first
        service.store.upsert("line", [
            Point(id=content_id(hashlib.sha256(f"part {i}".encode()).hexdigest()), vector=rng.normal(size=8).astype(np.float32),
                  payload={"indexed": i}) for i in range(start, start + 500)])
    read = 0
    scroll = service.store.scroll

    def counted(*args, **kwargs):
        nonlocal read
        for point in scroll(*args, **kwargs):
            read += 1
            yield point

    service.store.scroll = counted
    sample = list(service.nominal_sample("line", 300))
    assert len({p.id for p in sample}) == 300 and read == 300
    # Each third of the line's history holds about a third of the sample (100 +- 3 sd).
    thirds = np.histogram([p.payload["indexed"] for p in sample], bins=3, range=(0, 3000))[0]
    assert all(70 <= n <= 130 for n in thirds), thirds
    assert len(list(service.nominal_sample("line"))) == 3000
