"""kNN anomaly scores: pure functions over neighbour distances.

The score of an image is the mean cosine distance to its k nearest nominal
vectors. When the image is itself one of the nominal images (same content id),
that point is dropped first: leave-one-out keeps PASS-only calibration honest,
since an image is always at distance 0 from itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from indexing.store.base import Neighbour, Point

# Chosen by benchmarks/quality.py: see the README's quality table.
DEFAULT_K = 1


def without_self(neighbours: Sequence[Neighbour], self_id: str | None, k: int) -> list[Neighbour]:
    """The k nearest neighbours once the query's own point (if stored) is removed.

    Callers ask the store for k + 1 neighbours so k remain after the removal.
    """
    kept = [n for n in neighbours if n.id != self_id]
    return kept[:k]


def knn_score(distances: Sequence[float], k: int) -> float:
    """Mean of the k smallest distances (fewer if fewer exist); NaN with none."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    values = np.sort(np.asarray(distances, dtype=np.float64))[:k]
    return float(values.mean()) if values.size else float("nan")


def leave_one_out_scores(
    points: Iterable[Point], nearest: Callable[[np.ndarray, list[str]], list[list[Neighbour]]], k: int, *,
    batch_size: int, done: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Each stored nominal point's kNN score among the others, by id in the order given.

    `nearest(vectors, ids)` answers each vector's k nearest with its own point left out (`without_self`);
    points are searched `batch_size` at a time, and `done(points so far)` is called after each batch. A point
    with no other point to compare with (NaN) is left out.
    """
    scores: dict[str, float] = {}
    batch: list[Point] = []
    seen = 0

    def flush() -> None:
        nonlocal seen
        vectors = np.stack([p.vector for p in batch]).astype(np.float32)
        for point, near in zip(batch, nearest(vectors, [p.id for p in batch])):
            score = knn_score([n.distance for n in near], k)
            if not np.isnan(score):
                scores[point.id] = score
        seen += len(batch)
        batch.clear()
        if done is not None:
            done(seen)

    for point in points:
        batch.append(point)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return scores


def exact_knn(bank: np.ndarray, queries: np.ndarray, k: int, *, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN of unit-norm rows, in chunks so memory stays bounded.

    The reference the stores and faiss paths are checked against.

    Args:
        bank: (m, d) float32 unit rows.
        queries: (n, d) float32 unit rows.
        k: neighbours per query (clipped to m).

    Returns:
        (distances, indices), each (n, min(k, m)), nearest first; distance = 1 - cosine.
    """
    if bank.shape[0] == 0:
        raise ValueError("the nominal bank is empty: index PASS images first")
    k = min(k, bank.shape[0])
    all_d = np.empty((queries.shape[0], k), dtype=np.float32)
    all_i = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk_size):
        sims = queries[start : start + chunk_size] @ bank.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_sims, axis=1, kind="stable")
        all_i[start : start + chunk_size] = np.take_along_axis(part, order, axis=1)
        all_d[start : start + chunk_size] = 1.0 - np.take_along_axis(part_sims, order, axis=1)
    return all_d, all_i
