"""Patch features, coreset sampling, nearest-patch search and heat maps: shapes, invariants, oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexing.backbones.base import FeatureMaps
from indexing.errors import EmptyCollection
from indexing.heatmap import heat_map, pixel_roc_auc
from indexing.patch_search import FaissNN, NumpyNN, PatchScorer, TorchNN, UpperBounds
from indexing.patches import PatchMaker
from indexing.sampler import GreedyCoresetSampler, IdentitySampler
from indexing.scoring import exact_knn


def maps(n: int = 2, c1: int = 40, c2: int = 112, side: int = 28, seed: int = 0) -> FeatureMaps:
    generator = torch.Generator().manual_seed(seed)
    return FeatureMaps(
        torch.randn(n, c1, side, side, generator=generator), torch.randn(n, c2, side // 2, side // 2, generator=generator)
    )


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- patchify


@pytest.mark.parametrize("projection", ["pool", "random"])
@pytest.mark.parametrize("channels", [(40, 112), (32, 96)])
def test_patchify_gives_one_vector_per_stride8_cell(projection: str, channels: tuple[int, int]) -> None:
    patches = PatchMaker(dim=64, projection=projection).patchify(maps(3, *channels))
    assert patches.grid == (28, 28)
    assert patches.vectors.shape == (3, 784, 64) and patches.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(patches.vectors, axis=2), 1.0, atol=1e-5)


def test_patchify_is_deterministic_and_normalisation_optional() -> None:
    features = maps(1)
    a = PatchMaker(projection="random", seed=3).patchify(features).vectors
    b = PatchMaker(projection="random", seed=3).patchify(features).vectors
    np.testing.assert_array_equal(a, b)
    raw = PatchMaker(normalise=False).patchify(features).vectors
    assert not np.allclose(np.linalg.norm(raw, axis=2), 1.0)


def test_aggregation_averages_the_3x3_neighbourhood() -> None:
    fine = torch.zeros(1, 2, 8, 8)
    fine[0, :, 4, 4] = 9.0  # one hot cell spreads to its 8 neighbours, each 9 / 9 = 1
    coarse = torch.zeros(1, 2, 4, 4)
    vectors = PatchMaker(dim=4, normalise=False).patchify(FeatureMaps(fine, coarse)).vectors[0].reshape(8, 8, 4)
    # dim 4 pools 2 channels to 2: the fine half is the map itself.
    assert vectors[4, 4, 0] == pytest.approx(1.0) and vectors[3, 5, 0] == pytest.approx(1.0)
    assert vectors[2, 4, 0] == pytest.approx(0.0) and vectors[4, 4, 2] == pytest.approx(0.0)


@pytest.mark.parametrize("projection", ["balanced", "none"])
def test_own_channel_projections_keep_each_scales_channels_and_no_seed_moves_them(projection: str) -> None:
    features = maps(1)
    a = PatchMaker(dim=152, projection=projection, seed=0).patchify(features).vectors
    b = PatchMaker(dim=152, projection=projection, seed=5).patchify(features).vectors
    np.testing.assert_array_equal(a, b)
    raw = PatchMaker(dim=152, projection=projection, normalise=False, neighbourhood=1).patchify(features).vectors
    fine = features.stride8[0, :, 0, 0].numpy()
    expected = fine / np.linalg.norm(fine) if projection == "balanced" else fine
    np.testing.assert_allclose(raw[0, 0, :40], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="makes 152-d patches"):
        PatchMaker(dim=256, projection=projection).patchify(features)


def test_balanced_patches_weigh_both_scales_the_same_whatever_their_magnitudes() -> None:
    fine, coarse = maps(1)
    loud = FeatureMaps(fine * 100.0, coarse)  # the stride-8 map 100x larger than the stride-16 one
    vectors = PatchMaker(dim=152, projection="balanced").patchify(loud).vectors[0]
    halves = np.linalg.norm(vectors[:, :40], axis=1), np.linalg.norm(vectors[:, 40:], axis=1)
    # Each scale is a unit vector before the patch is normalised (the coarse one on its own grid, so
    # upsampling between differing neighbours shortens it a little).
    assert np.all(halves[0] >= halves[1] - 1e-6) and np.median(halves[1] / halves[0]) > 0.6
    plain = PatchMaker(dim=152, projection="none").patchify(loud).vectors[0]
    assert np.median(np.linalg.norm(plain[:, 40:], axis=1)) < 0.05  # unnormalised, the loud scale drowns the other


def test_a_recipe_records_the_backbones_own_width_or_projects_a_wider_one() -> None:
    from indexing.patch_mode import PatchConfig

    own = PatchConfig().for_backbone((40, 112))  # efficientnet_lite0
    assert (own.projection, own.dim) == ("balanced", 152)
    wide = PatchConfig().for_backbone((512, 1024))  # resnet50
    assert (wide.projection, wide.dim) == ("random", 256)
    chosen = PatchConfig(projection="pool", dim=64)
    assert chosen.for_backbone((40, 112)) == chosen
    # A record from before "none" existed was a seeded projection.
    assert PatchConfig.from_dict({"dim": 256}).projection == "random"


def test_tent_aggregation_weighs_neighbours_by_closeness_and_keeps_a_constant_map() -> None:
    fine = torch.zeros(1, 2, 8, 8)
    fine[0, :, 4, 4] = 16.0  # one hot cell: 1-2-1 in each direction over 16, so 4 at the centre, 2 beside, 1 across
    coarse = torch.zeros(1, 2, 4, 4)
    tent = PatchMaker(dim=4, normalise=False, aggregation="tent")
    vectors = tent.patchify(FeatureMaps(fine, coarse)).vectors[0].reshape(8, 8, 4)
    assert vectors[4, 4, 0] == pytest.approx(4.0) and vectors[4, 5, 0] == pytest.approx(2.0)
    assert vectors[3, 5, 0] == pytest.approx(1.0) and vectors[2, 4, 0] == pytest.approx(0.0)
    # at the border the weights of the cells that exist are renormalised: a constant map stays constant
    flat = tent.patchify(FeatureMaps(torch.full((1, 2, 8, 8), 3.0), torch.full((1, 2, 4, 4), 5.0))).vectors
    np.testing.assert_allclose(flat[0, :, 0], 3.0, rtol=1e-6)
    np.testing.assert_allclose(flat[0, :, 2], 5.0, rtol=1e-6)


def test_a_bank_recorded_before_the_local_scale_keeps_plain_distances() -> None:
    from indexing.patch_mode import PatchConfig

    assert PatchConfig().local_scale > 0  # a bank built now scores relative to its nearest nominal images
    assert PatchConfig.from_dict({"dim": 256, "projection": "balanced"}).local_scale == 0  # its threshold keeps meaning
    assert PatchConfig.from_dict(PatchConfig(local_scale=7).to_dict()).local_scale == 7
    with pytest.raises(ValueError, match="local_scale"):
        PatchConfig(local_scale=-1)


def test_a_bank_recorded_before_the_neighbourhood_was_a_field_keeps_the_3x3_box() -> None:
    from indexing.patch_mode import PatchConfig

    old = PatchConfig.from_dict({"dim": 152, "projection": "balanced", "local_scale": 20})
    assert (old.neighbourhood, old.aggregation) == (3, "box")
    assert (old.maker().neighbourhood, old.maker().aggregation) == (3, "box")  # its queries patchified as its bank was
    recorded = PatchConfig.from_dict(PatchConfig(neighbourhood=1, aggregation="tent").to_dict())
    assert (recorded.neighbourhood, recorded.aggregation) == (1, "tent")


def test_patch_maker_rejects_bad_settings() -> None:
    for bad in ({"dim": 7}, {"dim": 0}, {"projection": "pca"}, {"neighbourhood": 2},
                {"aggregation": "gauss"}):
        with pytest.raises(ValueError):
            PatchMaker(**bad)


# ---------------------------------------------------------------- samplers


def clusters(rng: np.random.Generator, sizes: tuple[int, ...], d: int = 16) -> np.ndarray:
    centres = np.eye(d, dtype=np.float32)[: len(sizes)] * 100.0
    return np.concatenate([c + rng.standard_normal((n, d)).astype(np.float32) for c, n in zip(centres, sizes)])


def test_coreset_picks_one_point_per_far_cluster_first() -> None:
    rng = np.random.default_rng(0)
    x = clusters(rng, (300, 5, 95))  # a small cluster must not be missed
    picked = GreedyCoresetSampler(3 / 400).run(x)
    assert len(picked) == 3
    assert sorted(np.digitize(picked, [300, 305])) == [0, 1, 2]


def test_coreset_starts_from_the_covered_bank() -> None:
    rng = np.random.default_rng(1)
    x = clusters(rng, (100, 100))
    covered = x[:1] + 0.01  # the bank already holds cluster 0
    picked = GreedyCoresetSampler(1 / 200).run(x, covered=covered)
    assert picked.tolist()[0] >= 100, "the first new point must come from the uncovered cluster"


def test_known_distances_to_the_bank_steer_the_coreset_like_the_bank_itself() -> None:
    """Distances to the bank given as known (a large bank's IVF bounds) pick as measuring the bank would."""
    rng = np.random.default_rng(3)
    x = clusters(rng, (100, 100, 100))
    covered = clusters(rng, (500, 500))  # the bank holds clusters 0 and 1
    bounds = UpperBounds(rows_per_cell=16)
    bounds.add(covered)
    sampler = GreedyCoresetSampler(3 / 300)
    by_bounds = sampler.run(x, nearest=bounds.run(x))
    assert len(by_bounds) == 3
    assert int(np.sort(by_bounds)[0]) >= 200, "the first points must come from the uncovered cluster"
    assert np.digitize(by_bounds, [100, 200]).tolist() == np.digitize(sampler.run(x, covered=covered), [100, 200]).tolist()
    np.testing.assert_array_equal(by_bounds, sampler.run(x, nearest=bounds.run(x)))
    with pytest.raises(ValueError, match="nearest holds 2 distances for 300 rows"):
        sampler.run(x, nearest=np.ones(2))


def test_more_probed_cells_tighten_the_bounds_down_to_the_exact_nearest_distance() -> None:
    rng = np.random.default_rng(5)
    bank, queries = unit_rows(rng, 2000, 32), unit_rows(rng, 300, 32)
    bounds = UpperBounds(rows_per_cell=50)
    bounds.add(bank)
    exact = np.sqrt(2.0 * exact_knn(bank, queries, 1)[0][:, 0])  # unit rows: euclidean from cosine distance
    one, eight, every = bounds.run(queries), bounds.run(queries, probes=8), bounds.run(queries, probes=10_000)
    assert np.all(one >= exact - 1e-5) and np.all(eight >= exact - 1e-5), "a bound is never below the nearest distance"
    assert np.all(eight <= one + 1e-6) and (eight < one - 1e-6).any(), "more cells can only tighten a bound"
    np.testing.assert_allclose(every, exact, atol=1e-5)
    # An indexing batch: thousands of patches a cell, scanned with BLAS instead of einsum; same answer.
    big = unit_rows(rng, 6000, 32)
    np.testing.assert_allclose(bounds.run(big, probes=10_000), np.sqrt(2.0 * exact_knn(bank, big, 1)[0][:, 0]), atol=1e-5)


def test_coreset_is_seeded_and_sized_and_identity_keeps_all() -> None:
    x = np.random.default_rng(2).standard_normal((1000, 256)).astype(np.float32)
    a, b = GreedyCoresetSampler(0.05, seed=4).run(x), GreedyCoresetSampler(0.05, seed=4).run(x)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 50 and len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
    assert len(GreedyCoresetSampler(1e-6).run(x)) == 1
    np.testing.assert_array_equal(IdentitySampler().run(x), np.arange(1000))
    np.testing.assert_array_equal(GreedyCoresetSampler(1.0).run(x), np.arange(1000))


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_coreset_rejects_bad_ratios(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        GreedyCoresetSampler(ratio)


# ---------------------------------------------------------------- search


@pytest.mark.parametrize("backend", [TorchNN, FaissNN, NumpyNN])
def test_nearest_patch_search_matches_the_exact_knn_oracle(backend) -> None:
    rng = np.random.default_rng(5)
    bank, queries = unit_rows(rng, 2000, 32), unit_rows(rng, 300, 32)
    nn = backend()
    nn.fit(bank[:1500])
    nn.add(bank[1500:])
    distances, indices = nn.run(queries, 4)
    cosine, expected = exact_knn(bank, queries, 4)
    np.testing.assert_array_equal(indices, expected)
    # unit rows: ||a - b|| = sqrt(2 (1 - cos))
    np.testing.assert_allclose(distances, np.sqrt(2.0 * np.maximum(cosine, 0)), atol=2e-3)


@pytest.mark.parametrize("backend", [TorchNN, FaissNN])
def test_search_excludes_rows_like_the_reference(backend) -> None:
    rng = np.random.default_rng(6)
    bank, queries = unit_rows(rng, 500, 16), unit_rows(rng, 40, 16)
    excluded = list(range(0, 500, 3))
    nn, reference = backend(), NumpyNN()
    nn.fit(bank)
    reference.fit(bank)
    got_d, got_i = nn.run(queries, 3, exclude=excluded)
    want_d, want_i = reference.run(queries, 3, exclude=excluded)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, want_d, atol=1e-4)
    assert not set(got_i.ravel()) & set(excluded)


def test_faiss_and_its_bounds_leave_torch_threads_alone() -> None:
    # faiss and torch share one OpenMP runtime: a thread count set for faiss would throttle
    # every forward pass of the process.
    before = torch.get_num_threads()
    FaissNN().fit(np.ones((4, 8), np.float32))
    UpperBounds().add(np.ones((4, 8), np.float32))
    assert torch.get_num_threads() == before


def test_an_empty_or_fully_excluded_bank_fails_loudly() -> None:
    nn = TorchNN()
    with pytest.raises(EmptyCollection, match="index PASS images"):
        nn.run(np.ones((1, 4), np.float32), 1)
    nn.fit(np.ones((2, 4), np.float32))
    with pytest.raises(EmptyCollection):
        nn.run(np.ones((1, 4), np.float32), 1, exclude=[0, 1])


def test_image_score_is_the_largest_nearest_patch_distance() -> None:
    rng = np.random.default_rng(7)
    bank = unit_rows(rng, 200, 8)
    patches = np.concatenate([bank[:9] + 0.001, -bank[:1]])  # nine nominal patches and one far one
    nn = TorchNN()
    nn.fit(bank)
    found = PatchScorer(nn).run(patches)
    assert found.worst == 9
    assert found.score == pytest.approx(float(found.distances.max()))
    assert found.distances[:9].max() < 0.01
    weighted = PatchScorer(nn, reweight_k=3).run(patches)
    assert 0 < weighted.score <= found.score


def clustered(rng: np.random.Generator, n: int, d: int, centres: int = 40) -> np.ndarray:
    """Rows around a few centres, like patches of one kind of part."""
    centre = unit_rows(rng, centres, d)[rng.integers(0, centres, n)]
    return (centre + 0.15 * rng.standard_normal((n, d))).astype(np.float32)


def test_upper_bounds_never_undercut_the_nearest_row_as_the_bank_grows() -> None:
    rng = np.random.default_rng(11)
    bank = clustered(rng, 3000, 32)
    bounds, reference = UpperBounds(rows_per_cell=16), NumpyNN()
    # Adds that retrain the cells (the bank doubles) and adds that only append.
    for part in (bank[:100], bank[100:150], bank[150:210], bank[210:1000], bank[1000:1300], bank[1300:]):
        bounds.add(part)
        reference.add(part)
        queries = np.concatenate([clustered(rng, 200, 32), reference.reconstruct(len(reference._bank) - 1)[None, :]])
        got = bounds.run(queries)
        want = reference.run(queries, 1)[0][:, 0]
        assert (got >= want - 1e-5).all()
        assert got[-1] == pytest.approx(0.0, abs=1e-3)  # a bank row is its own bound: same cell
    assert bounds.size == 3000


def test_upper_bounds_leave_excluded_rows_out() -> None:
    rng = np.random.default_rng(12)
    bank = clustered(rng, 2000, 32)
    bounds, reference = UpperBounds(rows_per_cell=16), NumpyNN()
    bounds.add(bank)
    reference.add(bank)
    own = list(range(500, 700))
    got = bounds.run(bank[own], exclude=own)  # a nominal image's own rows, left out
    want = reference.run(bank[own], 1, exclude=own)[0][:, 0]
    assert (got >= want - 1e-5).all() and (got > 0.1).all()
    assert np.isinf(UpperBounds().run(bank[:3])).all()  # nothing to bound with yet


class SubsetBounds:
    """Valid but loose bounds for the pruning logic: the nearest of every 8th bank row."""

    def __init__(self, bank: np.ndarray) -> None:
        self.nn = NumpyNN()
        self.nn.fit(bank[::8])

    def run(self, queries: np.ndarray, *, exclude=None) -> np.ndarray:
        banned = [r // 8 for r in exclude or () if r % 8 == 0]
        if len(banned) == self.nn.size:
            return np.full(len(queries), np.inf, dtype=np.float32)
        return self.nn.run(queries, 1, exclude=banned or None)[0][:, 0]


@pytest.mark.parametrize("leave_out", [False, True])
@pytest.mark.parametrize("bounds", ["ivf", "loose"])
def test_score_without_the_grid_equals_the_full_search(bounds: str, leave_out: bool) -> None:
    rng = np.random.default_rng(11)
    bank = clustered(rng, 3000, 32)
    nn = TorchNN()
    nn.fit(bank)
    if bounds == "ivf":
        found_bounds = UpperBounds()
        found_bounds.add(bank)
    else:
        found_bounds = SubsetBounds(bank)
    own = list(range(800, 1200))  # the scored image's bank rows, when it is a nominal image
    others = [r for r in range(3000) if r % 8 and not 800 <= r < 1200]
    # Most patches lie on bank rows (distance ~0; loose bounds when the row is not in the
    # subset) and outrank the defect, whose bound is tight because it sits near row 16.
    direction = unit_rows(rng, 1, 32)[0]
    parts = [(bank[16] + 0.5 * direction)[None, :]]
    if leave_out:
        parts.append(bank[800:1200:8])  # its own rows: they must not bound their own distance
    parts.append(bank[rng.choice(others, 784 - sum(len(p) for p in parts), replace=False)])
    patches = np.concatenate(parts) + 0.001 * rng.standard_normal((784, 32)).astype(np.float32)
    patches = patches[rng.permutation(784)]
    exclude = own if leave_out else None

    want = PatchScorer(nn).run(patches, exclude=exclude)
    got = PatchScorer(nn, bounds=found_bounds).run(patches, exclude=exclude, grid=False)
    assert got.distances is None
    assert got.score == pytest.approx(want.score, abs=1e-5)
    assert (got.worst, got.nearest_row) == (want.worst, want.nearest_row)


def test_score_without_the_grid_is_right_when_no_bound_is_finite() -> None:
    rng = np.random.default_rng(12)
    bank = clustered(rng, 64, 8)
    nn = TorchNN()
    nn.fit(bank)
    exclude = list(range(0, 64, 8))  # every subset row: no bound is finite
    patches = clustered(rng, 100, 8)
    want = PatchScorer(nn).run(patches, exclude=exclude)
    got = PatchScorer(nn, bounds=SubsetBounds(bank)).run(patches, exclude=exclude, grid=False)
    assert got.score == pytest.approx(want.score, abs=1e-5)


# ---------------------------------------------------------------- heat maps


def test_heat_map_is_image_sized_and_peaks_where_the_far_patch_is() -> None:
    distances = np.zeros((28, 28), np.float32)
    distances[20, 5] = 1.0
    heat = heat_map(distances, (28, 28), (224, 224))
    assert heat.shape == (224, 224) and heat.dtype == np.float32
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(row - (20 * 8 + 4)) <= 4 and abs(col - (5 * 8 + 4)) <= 4


def test_pixel_roc_auc_pools_pixels_and_needs_a_defect() -> None:
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    assert pixel_roc_auc([heat, np.zeros((4, 4))], [mask, np.zeros((4, 4), bool)]) == 1.0
    assert pixel_roc_auc([heat], [np.zeros((4, 4), bool)]) is None
