"""kNN scoring: the chunked exact search agrees with brute force; leave-one-out drops only the image itself."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.scoring import exact_knn, knn_score, leave_one_out_scores, without_self
from indexing.store.base import Neighbour, Point


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_knn_matches_brute_force_across_chunks() -> None:
    rng = np.random.default_rng(7)
    bank, queries = unit_rows(rng, 300, 16), unit_rows(rng, 50, 16)
    distances, indices = exact_knn(bank, queries, 5, chunk_size=7)
    brute = 1.0 - queries @ bank.T
    expected = np.argsort(brute, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(brute, expected, axis=1), atol=1e-6)


def test_exact_knn_clips_k_and_refuses_an_empty_bank() -> None:
    rng = np.random.default_rng(1)
    distances, _ = exact_knn(unit_rows(rng, 3, 8), unit_rows(rng, 2, 8), 10)
    assert distances.shape == (2, 3)
    with pytest.raises(ValueError, match="empty"):
        exact_knn(np.empty((0, 8), np.float32), unit_rows(rng, 2, 8), 1)


def test_knn_score_is_the_mean_of_the_k_nearest() -> None:
    assert knn_score([0.4, 0.1, 0.3, 0.2], 2) == pytest.approx(0.15)
    assert knn_score([0.4], 3) == pytest.approx(0.4)
    assert np.isnan(knn_score([], 1))
    with pytest.raises(ValueError):
        knn_score([0.1], 0)


def test_leave_one_out_drops_the_image_itself_and_keeps_k() -> None:
    hits = [Neighbour("self", 0.0), Neighbour("a", 0.1), Neighbour("b", 0.2)]
    assert [n.id for n in without_self(hits, "self", 2)] == ["a", "b"]
    assert [n.id for n in without_self(hits, "new", 2)] == ["self", "a"]


def test_leave_one_out_scores_score_each_stored_point_against_the_others_batch_by_batch() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(7, 4)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    points = [Point(id=f"p{i}", vector=row, payload={}) for i, row in enumerate(bank)]

    def nearest(vectors, ids):  # the store's search, k + 1 asked, the point itself left out
        distances, rows = exact_knn(bank, vectors, 3)
        return [without_self([Neighbour(id=f"p{r}", distance=float(d), payload={}) for d, r in zip(ds, rs)], own, 2)
                for ds, rs, own in zip(distances, rows, ids)]

    seen: list[int] = []
    scores = leave_one_out_scores(iter(points), nearest, 2, batch_size=3, done=seen.append)
    others = 1.0 - bank @ bank.T
    np.fill_diagonal(others, np.inf)
    assert list(scores) == [p.id for p in points] and seen == [3, 6, 7]
    np.testing.assert_allclose(list(scores.values()), np.sort(others, axis=1)[:, :2].mean(axis=1), rtol=1e-5)
    lonely = leave_one_out_scores([points[0]], lambda vectors, ids: [[]], 1, batch_size=8)
    assert lonely == {}  # no other point to compare with: no score
