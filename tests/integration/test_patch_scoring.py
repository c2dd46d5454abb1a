"""Patch scoring end to end: real weights, real Hazelnut Toy images, the embedded store."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from indexing.errors import EmptyCollection
from indexing.images import ImageInput, decode
from indexing.image_store import ImageStore
from indexing.patch_mode import PatchConfig
from indexing.runner import InProcessRunner
from indexing.service import BackbonePool, NominalService
from indexing.settings import alias_name
from indexing.store import EdgeStore
from tests.waiting import wait_for_job

pytestmark = pytest.mark.slow

SETTING = "nuts"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, pool: BackbonePool, hazelnut_sets) -> Iterator[Path]:
    """A store path holding a patch setting indexed on the Hazelnut Toy training images (built once)."""
    path = tmp_path_factory.mktemp("patch") / "store"
    store = EdgeStore(path)
    try:
        service = NominalService(store, backbones=pool)
        service.put_setting(SETTING, scoring="patch")
        service.index(SETTING, hazelnut_sets["train"])
    finally:
        store.close()
    yield path


@pytest.fixture
def patch_service(indexed: Path, pool: BackbonePool) -> Iterator[NominalService]:
    store = EdgeStore(indexed)
    try:
        yield NominalService(store, backbones=pool)
    finally:
        store.close()


def patch_collection(service: NominalService) -> str:
    collection = service.store.resolve_alias(alias_name(SETTING, kind="patch"))
    assert collection is not None
    return collection


def bank_dim(service: NominalService) -> int:
    return service.versions.patch_record(service.versions.active(SETTING))["dim"]


def test_patch_setting_keeps_a_versioned_bank_beside_the_global_collection(patch_service, hazelnut_sets) -> None:
    store = patch_service.store
    collection = patch_collection(patch_service)
    assert collection == f"nominal__{SETTING}__efficientnet_lite0__patch__v1"
    assert store.resolve_alias(alias_name(SETTING)) == f"nominal__{SETTING}__efficientnet_lite0__v1"
    assert store.count(store.resolve_alias(alias_name(SETTING))) == len(hazelnut_sets["train"])
    # 1% of 28 x 784 patches
    assert 150 <= store.count(collection) <= 300
    point = next(store.scroll(collection, with_vectors=True))
    # efficientnet_lite0's own 40 + 112 channels, each scale normalised, no seeded projection; recorded with the bank.
    recipe = patch_service.versions.patch_record(patch_service.versions.active(SETTING))["patch_config"]
    assert (recipe["projection"], recipe["dim"]) == ("balanced", 152) and len(point.vector) == 152
    vector = np.asarray(point.vector)
    assert np.linalg.norm(vector[:40]) == pytest.approx(np.linalg.norm(vector[40:]), rel=0.2)
    ids = {image.id for image in hazelnut_sets["train"]}
    assert point.payload["image_id"] in ids
    assert 0 <= point.payload["row"] < 28 and 0 <= point.payload["col"] < 28
    assert [v.kind for v in patch_service.versions.list(SETTING, kind="patch")] == ["patch"]
    assert [v.version for v in patch_service.versions.list(SETTING)] == [1]


def test_patch_scores_separate_good_from_colour_defects(patch_service, hazelnut_sets) -> None:
    good, defect = hazelnut_sets["good"], hazelnut_sets["defect"]
    scores = patch_service.scores(SETTING, good + defect)
    assert roc_auc_score([0] * len(good) + [1] * len(defect), scores) >= 0.95


def test_heat_map_peaks_inside_the_defect_mask(patch_service, hazelnut: Path, hazelnut_sets) -> None:
    defects = hazelnut_sets["defect"]
    verdicts = patch_service.inspect(SETTING, defects, heatmap=True, k=2)
    hits = 0
    for image, verdict in zip(defects, verdicts):
        heat = verdict.heatmap
        assert heat is not None and len(heat.grid) == 28 and len(heat.grid[0]) == 28
        assert Image.open(io.BytesIO(heat.png)).size == (512, 512)
        mask_path = hazelnut / "ground_truth" / "colour" / Path(image.source).with_suffix(".png").name
        with Image.open(mask_path) as mask:
            cells = np.asarray(mask.convert("L").resize((28, 28), Image.Resampling.BOX)) > 0
        # the peak cell or one of its 8 neighbours lies on the defect (the map is 8 px per cell)
        row, col = heat.worst
        hits += bool(cells[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2].any())
        assert len(verdict.neighbours) == 2 and len({n.id for n in verdict.neighbours}) == 2
        assert all("source" in n.payload and "row" in n.payload for n in verdict.neighbours)
    assert hits / len(defects) >= 0.8


def test_a_verdict_without_a_heat_map_has_the_same_score_and_neighbours(patch_service, hazelnut_sets) -> None:
    # Without a heat map only the patches that can hold the largest distance are searched in
    # full; nominal images (train) are scored leave-one-out, so their exclusions count too.
    images = hazelnut_sets["defect"] + hazelnut_sets["good"] + hazelnut_sets["train"][:4]
    quick = patch_service.inspect(SETTING, images, k=2)
    full = patch_service.inspect(SETTING, images, k=2, heatmap=True)
    assert all(v.heatmap is None for v in quick)
    np.testing.assert_allclose([v.score for v in quick], [v.score for v in full], rtol=1e-5)
    for fast, slow in zip(quick, full):
        assert slow.score == pytest.approx(max(max(row) for row in slow.heatmap.grid), rel=1e-5)  # on the score's scale
        assert [n.id for n in fast.neighbours] == [n.id for n in slow.neighbours]


def test_a_score_is_the_worst_distance_over_the_own_scores_of_the_images_nearest_it(patch_service, pool,
                                                                                    hazelnut_sets) -> None:
    # The local scale: the largest patch distance (the heat map's peak) over the mean leave-one-out
    # score of the nominal images named for the worst patch, each computed here on its own.
    record = patch_service.versions.patch_record(patch_service.versions.active(SETTING))
    config = PatchConfig.from_dict(record["patch_config"])
    assert config.local_scale > 0, "a bank built now scores relative to its nearest nominal images"
    collection, index = patch_collection(patch_service), patch_service.patches
    plain = index.nominal_scores_by_image(SETTING, collection, replace(config, local_scale=0))
    assert set(plain) == {image.id for image in hazelnut_sets["train"]}
    backbone = pool.get(record["backbone"])
    images = hazelnut_sets["defect"][:3] + hazelnut_sets["good"][:3]
    decoded = [decode(i) for i in images]
    found = index.score(SETTING, collection, config, backbone, images, decoded, neighbours=config.local_scale, grids=True)
    distances = index.score(SETTING, collection, replace(config, local_scale=0), backbone, images, decoded, grids=True)
    for result, distance in zip(found, distances):
        named = [n.id for n in result.neighbours]
        assert 0 < len(named) <= config.local_scale and len(set(named)) == len(named)
        scale = np.mean([plain[i] for i in named])
        assert result.score == pytest.approx(distance.grid.max() / scale, rel=1e-5)
        # The grid (and so the heat map) reads on the score's scale, as the calibrated threshold does.
        np.testing.assert_allclose(result.grid, distance.grid / scale, rtol=1e-5)
    # Defects stand out more against their neighbours' own scores than good parts do.
    assert roc_auc_score([1] * 3 + [0] * 3, [r.score for r in found]) == 1.0


def test_a_trained_heads_gate_weighs_it_against_the_scores_verdicts_give(patch_service, pool, hazelnut_sets) -> None:
    # The DenseHybrid gate compares a head with the unsupervised scores of new parts (`ScoredPatches.score`):
    # those must be what a verdict answers (relative, under the local scale), not the plain largest distance.
    record = patch_service.versions.patch_record(patch_service.versions.active(SETTING))
    config = PatchConfig.from_dict(record["patch_config"])
    images = hazelnut_sets["defect"][:2] + hazelnut_sets["good"][:2]
    scored = patch_service.patches.scored_patches(SETTING, patch_collection(patch_service), config,
                                                  pool.get(record["backbone"]), images, [decode(i) for i in images])
    assert not any(item.in_bank for item in scored)
    np.testing.assert_allclose([item.score for item in scored], patch_service.scores(SETTING, images), rtol=1e-5)
    largest = np.array([item.distances.max() for item in scored])
    assert not np.allclose([item.score for item in scored], largest, rtol=1e-3)


def test_bank_survives_a_store_reopen_and_the_cache_follows_the_alias(indexed, pool, hazelnut_sets) -> None:
    probe = hazelnut_sets["defect"][:2]
    with EdgeStore(indexed) as store:
        first = NominalService(store, backbones=pool).scores(SETTING, probe)
    with EdgeStore(indexed) as store:
        service = NominalService(store, backbones=pool)
        again = service.scores(SETTING, probe)
        np.testing.assert_allclose(again, first, rtol=1e-5)
        assert service.patches.cache.loaded() == {SETTING: patch_collection(service)}


def test_a_nominal_image_is_scored_without_its_own_patches(patch_service, hazelnut_sets) -> None:
    image = hazelnut_sets["train"][0]
    own = patch_service.scores(SETTING, [image])[0]
    # Same pixels, different bytes (a trailing byte after the JPEG end): not a nominal image, so
    # its own patches count as neighbours and the score drops.
    stranger = ImageInput(data=image.data + b"\0", source="copy.jpg")
    assert patch_service.scores(SETTING, [stranger])[0] < own
    nominal = patch_service.nominal_scores(SETTING)
    assert len(nominal) >= 20 and (nominal > 0).all()


def test_reindexing_the_same_images_adds_no_patches_and_new_images_extend_the_bank(
    patch_service, hazelnut_sets
) -> None:
    collection = patch_collection(patch_service)
    before = patch_service.store.count(collection)
    ids_before = {p.id for p in patch_service.store.scroll(collection)}
    patch_service.index(SETTING, hazelnut_sets["train"][:4])
    assert patch_service.store.count(collection) == before
    extra = hazelnut_sets["good"][:2]
    patch_service.index(SETTING, extra)
    try:
        ids_after = {p.id for p in patch_service.store.scroll(collection)}
        assert ids_before < ids_after, "extending keeps every patch already in the bank"
        bank = patch_service.patches.bank(SETTING, collection, bank_dim(patch_service))
        assert len(bank) == len(ids_after) and any(bank.rows_of(image.id) for image in extra)
    finally:
        for image in extra:
            patch_service.delete_image(SETTING, image.id)
    assert {p.id for p in patch_service.store.scroll(collection)} == ids_before


def test_calibrated_patch_verdicts_and_a_new_version_moves_both_aliases(patch_service, hazelnut_sets) -> None:
    good, defect = hazelnut_sets["good"], hazelnut_sets["defect"]
    calibration = patch_service.calibrate(SETTING, pass_images=good, fail_images=defect).calibration
    assert "__patch__" in calibration.collection
    verdicts = patch_service.inspect(SETTING, good + defect)
    correct = sum(v.verdict == "PASS" for v in verdicts[: len(good)]) + sum(v.verdict == "FAIL" for v in verdicts[len(good) :])
    assert correct / len(verdicts) >= 0.9
    # a global-mode calibration is never applied to patch scores, and back
    patch_service.put_setting(SETTING, scoring="global")
    try:
        assert patch_service.inspect(SETTING, good[:1])[0].verdict == "UNCALIBRATED"
    finally:
        patch_service.put_setting(SETTING, scoring="patch")

    version = patch_service.versions.begin(patch_service.get_setting(SETTING))
    patch_service.versions.fill(version, hazelnut_sets["train"][:6])
    patch_service.versions.activate(version)
    assert patch_collection(patch_service).endswith("__patch__v2")
    patch_service.scores(SETTING, good[:1])
    assert patch_service.patches.cache.loaded() == {SETTING: patch_collection(patch_service)}


def test_a_global_version_has_no_patch_bank_to_score_with(service, hazelnut_sets) -> None:
    service.put_setting("plain", scoring="global")
    service.index("plain", hazelnut_sets["train"][:3])
    service.put_setting("plain", scoring="patch")
    with pytest.raises(EmptyCollection, match="re-index"):
        service.scores("plain", hazelnut_sets["good"][:1])


def test_patch_evaluation_writes_heat_maps_and_pixel_auc(patch_service, hazelnut: Path, tmp_path: Path) -> None:
    from indexing.datasets import load_dataset

    data = load_dataset(hazelnut, "mvtec")
    result = patch_service.evaluate(data, setting=SETTING, out_dir=tmp_path / "report")
    assert result.metrics.roc_auc is not None and result.metrics.roc_auc >= 0.95
    assert result.pixel_roc_auc is not None and result.pixel_roc_auc >= 0.9
    pngs = sorted((tmp_path / "report" / "heatmaps").glob("*.png"))
    assert len(pngs) == len(data.test) and result.files["heatmaps"] == tmp_path / "report" / "heatmaps"
    assert result.pixel_pro is not None and 0.5 <= result.pixel_pro <= 1.0
    written = (tmp_path / "report" / "metrics.json").read_text()
    assert '"pixel_roc_auc"' in written and '"pixel_pro"' in written


def test_calibrate_compare_ranks_every_scorer_on_the_labelled_images_only(patch_service, hazelnut_sets) -> None:
    result = patch_service.calibrate(
        SETTING, pass_images=hazelnut_sets["good"], fail_images=hazelnut_sets["defect"], compare=True
    ).calibration
    found = result.comparison
    assert found is not None and found["current"] == "patch"
    names = [r["name"] for r in found["results"]]
    assert set(names) == {"global k=1", "global k=3", "global k=5", "patch", "patch top-3 mean", "patch top-10 mean"}
    assert names[0] == found["winner"] and found["margin"] >= 0.0
    f1s = [r["f1_mean"] for r in found["results"]]
    assert f1s == sorted(f1s, reverse=True) and all(len(r["f1_per_fold"]) == found["folds"] for r in found["results"])
    # Kept in the calibration record; the threshold is the current (patch) scorer's.
    assert patch_service.latest_calibration(SETTING).comparison == found
    assert "__patch__" in result.collection


def test_a_large_bank_grows_by_its_ivf_bounds_and_still_separates_defects(
    pool: BackbonePool, hazelnut_sets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above `EXACT_COVER_ROWS` a batch's coreset is taken against the bank's IVF bounds, not every
    row (forced here from the first bank row): the bank grows by as many patches as measuring every
    row would add, and still separates the defects."""
    import indexing.patch_mode as patch_mode
    from indexing.sampler import GreedyCoresetSampler

    measured_by: list[str] = []
    real_run = GreedyCoresetSampler.run

    def run(self, features, *, covered=None, nearest=None):
        measured_by.append("bounds" if nearest is not None else "rows" if covered is not None else "none")
        return real_run(self, features, covered=covered, nearest=nearest)

    monkeypatch.setattr(GreedyCoresetSampler, "run", run)
    train = hazelnut_sets["train"]
    good, defect = hazelnut_sets["good"], hazelnut_sets["defect"]
    found = {}
    for label, exact in (("every row", 1 << 62), ("bounds", 0)):
        monkeypatch.setattr(patch_mode, "EXACT_COVER_ROWS", exact)
        store = EdgeStore(tmp_path / label)
        try:
            service = NominalService(store, backbones=pool)
            service.put_setting(SETTING, scoring="patch")
            service.index(SETTING, train[:8])
            collection = patch_collection(service)
            bank = service.patches.bank(SETTING, collection, bank_dim(service))
            assert bank.bounds is not None and bank.bounds.size == store.count(collection)
            measured_by.clear()
            service.index(SETTING, train[8:])  # with "bounds", every later patch is measured against them
            assert set(measured_by) == {"bounds" if exact == 0 else "rows"}
            scores = service.scores(SETTING, good + defect)
            found[label] = (store.count(collection), roc_auc_score([0] * len(good) + [1] * len(defect), scores))
        finally:
            store.close()
    assert found["bounds"][0] == found["every row"][0]
    assert found["bounds"][1] >= 0.95


def test_a_bank_of_the_earlier_features_keeps_scoring_and_says_a_reindex_renews_it(
    pool: BackbonePool, hazelnut: Path, hazelnut_sets, tmp_path: Path
) -> None:
    store = EdgeStore(tmp_path / "store")
    try:
        # Built before the upgrade: 256-d patches through a seeded projection, plain distances, calibrated.
        before = NominalService(store, backbones=pool, patch_config=PatchConfig(projection="random", local_scale=0))
        before.put_setting(SETTING, scoring="patch")
        before.index(SETTING, hazelnut_sets["train"][:6])
        probes = hazelnut_sets["good"][:2] + hazelnut_sets["defect"][:2]
        expected = before.scores(SETTING, probes)
        made = before.calibrate(SETTING, pass_images=hazelnut_sets["good"], fail_images=hazelnut_sets["defect"])

        upgraded = NominalService(store, backbones=pool)  # the same store, opened by the new version
        old = upgraded.versions.patch_record(upgraded.versions.active(SETTING))
        assert (old["patch_config"]["projection"], old["dim"]) == ("random", 256)
        np.testing.assert_allclose(upgraded.scores(SETTING, probes), expected, rtol=1e-5)  # its own recipe
        status = upgraded.status(SETTING)
        note = status.reindex_note
        assert note is not None and "earlier patch features (256-d, 'random')" in note and "(152-d, 'balanced')" in note
        assert status.calibration is not None and status.calibration.id == made.calibration.id  # still its bank's

        runner = InProcessRunner(upgraded, ImageStore(tmp_path / "images"))
        try:
            job = wait_for_job(runner.board, runner.submit_reindex(SETTING, str(hazelnut / "train" / "good")))
            assert job.state == "succeeded"
        finally:
            runner.close()
        new = upgraded.versions.patch_record(upgraded.versions.active(SETTING))
        assert new["version"] == 2 and (new["patch_config"]["projection"], new["dim"]) == ("balanced", 152)
        status = upgraded.status(SETTING)
        assert status.reindex_note is None
        # Its threshold was a distance on the old bank's scores: it judges nothing on the new one.
        assert status.calibration is None and f"calibration {made.calibration.id} was made on scores of a patch bank" \
            in status.calibration_note and "calibrate again" in status.calibration_note
        assert all(v.verdict == "UNCALIBRATED" for v in upgraded.inspect(SETTING, probes))
        again = upgraded.calibrate(SETTING, pass_images=hazelnut_sets["good"], fail_images=hazelnut_sets["defect"])
        assert upgraded.status(SETTING).calibration.id == again.calibration.id
        assert again.calibration.patch_recipe == new["patch_config"]
    finally:
        store.close()
