"""Positional statistics: merged batch by batch, they are the statistics of all the images at once."""

from __future__ import annotations

import numpy as np
import pytest

from indexing import positional
from indexing.positional import (
    ALIGNED_SHARE, GENERATION_KIND, POSITIONAL_KIND, RIDGE, PositionalMemory, PositionalStatistics, aligned_share,
    arrays_collection,
)
from indexing.store import EdgeStore


def _vectors(n: int, positions: int = 6, dim: int = 12, seed: int = 0) -> np.ndarray:
    """n images' patch vectors; each position has its own mean and correlated spread, as a real part's patches
    have, the same for every `n` (the images differ by `seed`)."""
    shape = np.random.default_rng(0)
    mixing = shape.normal(size=(positions, dim, dim)) * 0.1
    centres = shape.normal(size=(positions, dim))
    return centres + np.einsum("npd,pde->npe", np.random.default_rng(seed + 1).normal(size=(n, positions, dim)), mixing)


def _mahalanobis(vectors: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    precision = np.linalg.inv(covariance + RIDGE * np.eye(covariance.shape[-1]))
    centred = vectors - mean
    return np.sqrt(np.einsum("npi,pij,npj->np", centred, precision, centred))


def test_statistics_merged_in_batches_give_every_position_its_exact_mean_and_covariance() -> None:
    train, test = _vectors(70), _vectors(9, seed=1)
    merged = PositionalStatistics.of(train, rank=12, batch=8)  # rank = dim: nothing is dropped
    centred = train - train.mean(axis=0)
    covariance = np.einsum("npi,npj->pij", centred, centred) / (len(train) - 1)
    assert merged.count == 70
    np.testing.assert_allclose(merged.mean, train.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(np.sort(merged.variances, axis=1), np.linalg.eigvalsh(covariance), rtol=1e-9, atol=1e-12)
    # Distances are worked out in float32, as verdicts take them.
    np.testing.assert_allclose(merged.distances(test), _mahalanobis(test, train.mean(axis=0), covariance), rtol=1e-5)


def test_a_kept_rank_scores_by_its_directions_and_the_mean_variance_of_the_rest() -> None:
    train, test = _vectors(50), _vectors(5, seed=2)
    kept = PositionalStatistics.of(train, rank=3, batch=50)  # one batch: the top 3 directions exactly
    centred = train - train.mean(axis=0)
    spectrum = np.linalg.eigvalsh(np.einsum("npi,npj->pij", centred, centred) / 49)[:, ::-1]
    assert kept.basis.shape == (6, 3, 12)
    np.testing.assert_allclose(kept.variances, spectrum[:, :3], rtol=1e-9)
    np.testing.assert_allclose(kept.residual, spectrum[:, 3:].mean(axis=1), rtol=1e-9)
    directions = kept.basis / np.linalg.norm(kept.basis, axis=-1, keepdims=True)
    projector = np.einsum("pkd,pke->pde", directions, directions)
    covariance = (np.einsum("pkd,pk,pke->pde", directions, kept.variances, directions)
                  + kept.residual[:, None, None] * (np.eye(12) - projector))
    np.testing.assert_allclose(kept.distances(test), _mahalanobis(test, kept.mean, covariance), rtol=1e-5)  # float32


def test_a_patch_unlike_its_position_scores_high_there_and_only_there() -> None:
    images = _vectors(61)
    train, part = images[:60], images[60:]  # a good part the statistics have not seen
    statistics = PositionalStatistics.of(train)
    moved = part.copy()
    moved[0, 4] = train[:, 1].mean(axis=0)  # position 1's usual patch, found at position 4
    before, after = statistics.distances(part)[0], statistics.distances(moved)[0]
    assert after[4] > 2 * before.max()
    np.testing.assert_array_equal(np.delete(after, 4), np.delete(before, 4))


def test_patch_vectors_of_another_shape_are_refused_with_both_shapes() -> None:
    statistics = PositionalStatistics.of(_vectors(10))
    with pytest.raises(ValueError, match=r"\(7, 12\).*\(6, 12\)"):
        statistics.add(_vectors(4, positions=7))
    with pytest.raises(ValueError, match="at least one image"):
        PositionalStatistics.of(np.zeros((0, 6, 12)))


def _crops(offsets: list[tuple[int, int]], side: int = 20, dim: int = 8, seed: int = 0, noise: float = 0.2) -> np.ndarray:
    """Patch maps of one part seen through a side x side window, at each (rows, columns) offset from the middle of
    the scene, flattened to (images, side * side, dim), each with noise of its own (`noise` x the part's spread)."""
    scene = np.random.default_rng(0).normal(size=(side + 8, side + 8, dim))
    rng = np.random.default_rng(seed + 1)
    maps = [scene[4 + r : 4 + r + side, 4 + c : 4 + c + side] + noise * rng.normal(size=(side, side, dim))
            for r, c in offsets]
    return np.stack(maps).reshape(len(offsets), side * side, dim)


def test_each_image_registers_onto_the_mean_map_by_the_shift_its_part_moved() -> None:
    statistics = PositionalStatistics.of(_crops([(0, 0)] * 30))
    offsets = [(0, 0), (2, -3), (-4, 1), (1, 1)]
    np.testing.assert_array_equal(statistics.shifts(_crops(offsets, seed=1)), offsets)


def test_an_image_held_in_the_statistics_is_registered_against_the_others_alone() -> None:
    # One image of four moved by (3, 2), each with noise twice the part's spread: in the mean of all four, the moved
    # image's own patches (a quarter of it, at no shift) outweigh the three others' (at its shift).
    images = _crops([(0, 0)] * 3 + [(3, 2)], noise=2.0)
    statistics = PositionalStatistics.of(images)
    assert statistics.shifts(images)[3].tolist() == [0, 0]
    np.testing.assert_array_equal(statistics.shifts(images, held_in=True), [(0, 0)] * 3 + [(3, 2)])
    with pytest.raises(ValueError, match="at least two images"):
        PositionalStatistics.of(images[:1]).shifts(images[:1], held_in=True)


def test_aligned_parts_pass_the_share_and_moving_parts_do_not() -> None:
    aligned = _crops([(0, 0)] * 20 + [(1, 0)] * 5)
    moving = _crops([(r, c) for r in (-3, 0, 3) for c in (-4, -1, 2, 4)] * 2)
    aligned_shifts = PositionalStatistics.of(aligned).shifts(aligned, held_in=True)
    moving_shifts = PositionalStatistics.of(moving).shifts(moving, held_in=True)
    assert aligned_share(aligned_shifts) == 1.0  # a cell off is still aligned
    assert aligned_share(moving_shifts) < ALIGNED_SHARE
    with pytest.raises(ValueError, match="square grid"):
        PositionalStatistics.of(_vectors(3)).shifts(_vectors(3))  # 6 positions


def test_border_cells_alike_in_every_image_do_not_make_unaligned_parts_look_aligned() -> None:
    # No part in common, but the same outermost ring in every map, as a backbone's zero padding leaves.
    maps = np.random.default_rng(3).normal(size=(24, 20, 20, 8))
    maps[:, 0, :], maps[:, -1, :], maps[:, :, 0], maps[:, :, -1] = 3.0, 3.0, 3.0, 3.0
    vectors = maps.reshape(24, 400, 8)
    statistics = PositionalStatistics.of(vectors)
    assert aligned_share(statistics.shifts(vectors, held_in=True, margin=0)) == 1.0
    assert aligned_share(statistics.shifts(vectors, held_in=True)) < ALIGNED_SHARE


def test_statistics_kept_in_the_store_are_those_merged_and_another_process_reads_them(tmp_path) -> None:
    first, second = _crops([(0, 0)] * 10), _crops([(0, 0)] * 7, seed=1)
    with EdgeStore(tmp_path / "store") as store:
        memory = PositionalMemory(store, rank=4)
        memory.add("bank", first, [f"a{i}" for i in range(10)])
        record = memory.add("bank", second, [f"b{i}" for i in range(7)])
        assert (record.count, record.generation) == (17, 2)
        # one generation's arrays in the store: the previous one's go once the record names the new one
        assert store.collections() == [arrays_collection("bank", 2)] and len(store.list_records(GENERATION_KIND)) == 1
        read = PositionalMemory(store, rank=4).statistics(PositionalMemory(store).record("bank"))
        merged = PositionalStatistics.of(np.concatenate([first, second]), rank=4, batch=10)
        np.testing.assert_allclose(read.mean, merged.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(read.distances(second), merged.distances(second), rtol=1e-4)
        # the reference: each batch scored right after its merge
        scores = np.concatenate([PositionalStatistics.of(first, rank=4).distances(first).max(axis=1),
                                 merged.distances(second).max(axis=1)])
        np.testing.assert_allclose(record.standard, (scores.mean(), scores.std()), rtol=1e-6)
        by_image = PositionalMemory(store).scores(record)
        np.testing.assert_allclose([by_image[f"b{i}"] for i in range(7)], scores[10:], rtol=1e-9)
        memory.delete("bank")
        assert store.collections() == [] and store.list_records(GENERATION_KIND) == store.list_records(POSITIONAL_KIND) == []


def test_a_merge_that_dies_before_its_record_is_written_leaves_the_last_statistics_whole(tmp_path, monkeypatch) -> None:
    first = _crops([(0, 0)] * 6)
    with EdgeStore(tmp_path / "store") as store:
        memory = PositionalMemory(store, rank=4)
        memory.add("bank", first)
        put = store.put_record

        def dies_at_the_switch(kind, key, record):
            if kind == POSITIONAL_KIND:
                raise OSError("killed")
            put(kind, key, record)

        monkeypatch.setattr(store, "put_record", dies_at_the_switch)
        with pytest.raises(OSError):
            memory.add("bank", _crops([(2, 2)] * 6, seed=1))
        monkeypatch.undo()
        fresh = PositionalMemory(store, rank=4)
        record = fresh.record("bank")
        assert (record.count, record.generation) == (6, 1)
        np.testing.assert_allclose(fresh.statistics(record).mean, PositionalStatistics.of(first, rank=4).mean, atol=1e-6)
        # the next merge writes over what the dead one left, never beside it
        assert fresh.add("bank", _crops([(0, 0)] * 6, seed=2)).generation == 2
        assert store.collections() == [arrays_collection("bank", 2)]


@pytest.mark.parametrize("offsets, aligned", [([(0, 0)] * 9 + [(1, 0)] * 3, True),
                                              ([(r, c) for r in (-3, 3) for c in (-4, 0, 4)] * 2, False)])
def test_a_setting_decides_once_whether_its_parts_are_aligned(tmp_path, monkeypatch, offsets, aligned) -> None:
    monkeypatch.setattr(positional, "ALIGNMENT_IMAGES", 10)
    images = _crops(offsets)
    with EdgeStore(tmp_path / "store") as store:
        memory = PositionalMemory(store, rank=4)
        assert memory.add("bank", images[:6]).aligned is None  # too few images to decide
        record = memory.add("bank", images[6:])
        assert record.aligned is aligned and record.joins is aligned and record.checked == 12
        # decided once: later images, however they sit, never revise it
        later = memory.add("bank", _crops([(0, 0)] * 4 if not aligned else [(4, 4), (-4, 3), (3, -4), (-3, -3)], seed=2))
        assert later.aligned is aligned and later.checked == 12 and later.count == 16


def test_a_tiled_image_stops_the_statistics_for_good(tmp_path) -> None:
    with EdgeStore(tmp_path / "store") as store:
        memory = PositionalMemory(store, rank=4)
        memory.add("bank", _crops([(0, 0)] * 4))
        record = memory.add("bank", None, tiled=True)
        assert record.tiled and not record.joins
        assert memory.add("bank", _crops([(0, 0)] * 4, seed=1)).count == 4


def test_a_process_keeps_a_bounded_number_of_statistics_loaded_and_reads_the_others_again(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(positional, "LOADED_STATISTICS", 2)
    with EdgeStore(tmp_path / "store") as store:
        memory = PositionalMemory(store, rank=4)
        records = {name: memory.add(name, _crops([(0, 0)] * 3, seed=seed)) for seed, name in enumerate("abc")}
        assert list(memory._loaded) == ["b", "c"]  # "a" dropped: the least recently used
        reread = memory.statistics(records["a"])
        np.testing.assert_allclose(reread.mean, PositionalStatistics.of(_crops([(0, 0)] * 3), rank=4).mean, atol=1e-6)
        assert list(memory._loaded) == ["c", "a"]
