"""Positional statistics: merged batch by batch, they are the statistics of all the images at once."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.positional import RIDGE, PositionalStatistics


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
    np.testing.assert_allclose(merged.distances(test), _mahalanobis(test, train.mean(axis=0), covariance), rtol=1e-8)


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
    np.testing.assert_allclose(kept.distances(test), _mahalanobis(test, kept.mean, covariance), rtol=1e-8)


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
