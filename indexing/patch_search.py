"""Nearest-patch search over a memory bank, and the PatchCore image score built on it.

Search and scoring are kept apart (PatchCore's `FaissNN` / `NearestNeighbourScorer`):
a backend answers "which bank rows are nearest to these queries" with a few verbs
(`fit`, `add`, `run`, `reconstruct`, `reset`); `PatchScorer` turns the answers into
an image score and a patch-distance grid and is handed the backend it searches with.

Backends, all exact, all Euclidean (not squared) distances:

- `TorchNN`: one matrix product per block of queries (||q||^2 + ||b||^2 - 2 q.b)
  then a min/top-k. The CPU default: on the 2-core machines, 784 queries (one
  224 px image) against 8,000 x 128-d bank rows take about 20-40 ms, faiss
  `IndexFlatL2` 150-210 ms with 1 or 2 OpenMP threads (benchmarks/quality.py
  `--search` prints the comparison).
- `FaissNN`: faiss `IndexFlatL2`; the default when faiss sees a GPU.
- `NumpyNN`: float64 numpy, chunked; the reference the others are tested against.

`default_nn()` makes that choice in one place.

A verdict needs only the largest nearest-row distance, not all of them, and
`PatchScorer` finds it exactly while searching the whole bank for few patches:
`UpperBounds` (a faiss IVF index probed in one cell) gives each patch the distance
to some bank row, never less than the distance to the nearest one, and only
patches whose bound beats the largest exact distance found so far are searched
in full. On ELPV (8,393 x 256-d bank, 784 patches) that is about 37 patches and
5 ms per image instead of 37 ms, with the same answer. Heat maps need every
patch's distance and take the full search.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from indexing.errors import EmptyCollection

# Bank rows' nearest neighbours the PatchCore re-weighting looks at (anomalib uses 9).
DEFAULT_REWEIGHT_K = 0
# UpperBounds' IVF cells: about BOUND_ROWS_PER_CELL bank rows each, at most
# BOUND_MAX_CELLS (k-means training time grows with cells x rows), one cell probed.
# Measured on ELPV combined (efficientnet_lite0, 8,393 rows, 131 cells): 1.8 ms for
# the bounds of 784 patches, then about 37 patches searched in full.
BOUND_ROWS_PER_CELL = 64
BOUND_MAX_CELLS = 256
# Query x row products per cell from which a bound scan uses BLAS rather than einsum.
_BLAS_FROM = 1 << 18
# Patches searched in full per step of the pruned search, most promising first.
PRUNED_STEP = 32


class NearestNeighbours(Protocol):
    def fit(self, bank: np.ndarray) -> None: ...

    def add(self, rows: np.ndarray, *, bank: np.ndarray | None = None) -> None:
        """Append `rows`. `bank`: the caller's array of every row so far, `rows` at its end, never
        changed in place; a backend that searches host memory keeps a reference to it instead of a
        copy of its own, so a bank is held once (`PatchBank`)."""
        ...

    def run(
        self, queries: np.ndarray, k: int, *, exclude: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def reconstruct(self, row: int) -> np.ndarray: ...

    def reset(self) -> None: ...

    @property
    def size(self) -> int: ...


def _empty() -> EmptyCollection:
    return EmptyCollection("the patch memory bank is empty: index PASS images into a setting with scoring=patch first")


class FaissNN:
    """Exact L2 nearest neighbours with faiss (`IndexFlatL2`), on the GPU when faiss has one.

    Args:
        threads: OpenMP threads faiss may use; None leaves the setting alone. It is
            process-wide and shared with torch (faiss and torch load one OpenMP
            runtime): setting 1 here made a torch matmul 1.8x slower on 2 cores.
        gpu: use a GPU index; None means "when faiss sees a GPU".
    """

    def __init__(self, *, threads: int | None = None, gpu: bool | None = None) -> None:
        import faiss

        self._faiss = faiss
        if threads is not None:
            faiss.omp_set_num_threads(threads)
        self._gpu = faiss.get_num_gpus() > 0 if gpu is None else gpu
        self._index = None
        self._dim = 0

    def fit(self, bank: np.ndarray) -> None:
        """Replace the index with `bank` (m, d) float32 rows."""
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.reset()
        self._dim = bank.shape[1]
        index = self._faiss.IndexFlatL2(self._dim)
        if self._gpu:
            index = self._faiss.index_cpu_to_gpu(self._faiss.StandardGpuResources(), 0, index)
        self._index = index
        self.add(bank)

    def add(self, rows: np.ndarray, *, bank: np.ndarray | None = None) -> None:
        """Append rows; they get the next row numbers. faiss keeps its own copy (on the GPU, its only one)."""
        if self._index is None:
            self.fit(rows)
            return
        self._index.add(np.ascontiguousarray(rows, dtype=np.float32))

    def run(self, queries: np.ndarray, k: int, *, exclude: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest bank rows of each query.

        Args:
            queries: (n, d) float32.
            k: neighbours per query (clipped to the searchable rows).
            exclude: bank rows to ignore (leave-one-out: the query image's own patches).

        Returns:
            (distances (n, k) float32 Euclidean, indices (n, k) int64), nearest first.

        Raises:
            EmptyCollection: the bank is empty, or every row is excluded.
        """
        excluded = 0 if exclude is None else len(exclude)
        if self.size - excluded <= 0:
            raise _empty()
        k = min(k, self.size - excluded)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if excluded and not self._gpu:
            selector = self._faiss.IDSelectorNot(self._faiss.IDSelectorBatch(np.asarray(exclude, dtype=np.int64)))
            sq, idx = self._index.search(queries, k, params=self._faiss.SearchParameters(sel=selector))
        elif excluded:
            # GPU indexes take no selector: over-fetch and drop the excluded rows.
            sq, idx = self._index.search(queries, min(self.size, k + excluded))
            sq, idx = _drop(sq, idx, exclude, k)
        else:
            sq, idx = self._index.search(queries, k)
        return np.sqrt(np.maximum(sq, 0.0)), idx

    def reconstruct(self, row: int) -> np.ndarray:
        """Bank row `row` as stored, (d,) float32."""
        return self._index.reconstruct(int(row))

    def reset(self) -> None:
        if self._index is not None:
            self._index.reset()
        self._index = None

    @property
    def size(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)


class TorchNN:
    """Exact L2 nearest neighbours as blocked float32 matrix products (torch's BLAS).

    Args:
        block: bank rows x queries per product is kept under this many floats (memory bound).
    """

    def __init__(self, *, block: int = 1 << 24) -> None:
        # (bank rows, their squared norms), swapped as one tuple so a search running
        # while `add` extends the bank sees the old bank or the new one, never a mix.
        self._state = (torch.empty((0, 0)), torch.empty(0))
        self._block = block

    def fit(self, bank: np.ndarray) -> None:
        """Search `bank`; a contiguous float32 array is used in place (not copied): never change it after."""
        rows = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
        self._state = (rows, (rows * rows).sum(dim=1))

    def add(self, rows: np.ndarray, *, bank: np.ndarray | None = None) -> None:
        held, norms = self._state
        extra = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        if bank is not None and len(bank) == self.size + len(extra):
            rows_now = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))  # the caller's: no copy
        else:
            rows_now = extra.clone() if self.size == 0 else torch.cat([held, extra])
        extra_norms = (extra * extra).sum(dim=1)
        self._state = (rows_now, extra_norms if self.size == 0 else torch.cat([norms, extra_norms]))

    def run(self, queries: np.ndarray, k: int, *, exclude: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as `FaissNN.run`."""
        bank, norms = self._state
        size = int(bank.shape[0])
        banned = torch.as_tensor(np.unique(np.asarray(list(exclude or ()), dtype=np.int64)))
        if size - banned.numel() <= 0:
            raise _empty()
        k = min(k, size - banned.numel())
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        step = max(1, self._block // max(size, 1))
        out_d = torch.empty((len(q), k))
        out_i = torch.empty((len(q), k), dtype=torch.int64)
        with torch.inference_mode():
            for start in range(0, len(q), step):
                part = q[start : start + step]
                sq = torch.addmm(norms[None, :], part, bank.T, alpha=-2.0)
                sq += (part * part).sum(dim=1, keepdim=True)
                if banned.numel():
                    sq[:, banned] = float("inf")
                if k == 1:
                    d, i = sq.min(dim=1, keepdim=True)
                else:
                    d, i = sq.topk(k, dim=1, largest=False)
                out_d[start : start + step] = d
                out_i[start : start + step] = i
        return out_d.clamp_(min=0.0).sqrt_().numpy(), out_i.numpy()

    def reconstruct(self, row: int) -> np.ndarray:
        return self._state[0][int(row)].numpy().copy()

    def reset(self) -> None:
        self._state = (torch.empty((0, 0)), torch.empty(0))

    @property
    def size(self) -> int:
        return int(self._state[0].shape[0])


def default_nn() -> NearestNeighbours:
    """faiss on a GPU when faiss sees one, else `TorchNN` (measured faster than faiss on CPU here)."""
    try:
        import faiss
    except ImportError:
        return TorchNN()
    return FaissNN() if faiss.get_num_gpus() > 0 else TorchNN()


class UpperBounds:
    """Upper bounds on each query's nearest-bank-row distance: the nearest row of the query's IVF cell.

    The distance to a real bank row is never less than the distance to the nearest
    one: an upper bound, usually a tight one, for a few milliseconds per image. The
    cells are k-means centroids, retrained whenever the bank has doubled since they
    were trained; rows added in between go to their nearest cell (the bounds stay
    valid, only less tight).

    The bounds hold the centroids and each row's cell, not the rows: the rows are
    read from the bank's own array (`add(..., bank=...)`), so on a CPU a bank is in
    memory once (an IVF index of its own held a second copy). Without `bank` they
    keep their own copy (tests, benchmarks).

    Args:
        rows_per_cell: bank rows per IVF cell, on average.
        max_cells: the most cells.
    """

    def __init__(self, *, rows_per_cell: int = BOUND_ROWS_PER_CELL, max_cells: int = BOUND_MAX_CELLS) -> None:
        import faiss

        self._faiss = faiss
        self._rows_per_cell = rows_per_cell
        self._max_cells = max_cells
        self._trained_on = 0
        # One immutable snapshot, swapped whole: rows, their squared norms, rows sorted by cell,
        # each cell's start in that order, and the centroids' index. A search uses one snapshot.
        self._state: _BoundState | None = None
        self._lock = threading.Lock()  # one `add` at a time

    @property
    def size(self) -> int:
        state = self._state
        return 0 if state is None else len(state.rows)

    def add(self, rows: np.ndarray, *, bank: np.ndarray | None = None) -> None:
        """Append rows just appended to the bank, in bank order (row numbers must match the bank's).

        `bank`: the bank's array of every row, `rows` at its end, never changed in place.
        """
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        with self._lock:
            state = self._state
            if bank is not None and len(bank) == self.size + len(rows):
                every = np.ascontiguousarray(bank, dtype=np.float32)
            else:
                every = rows.copy() if state is None else np.concatenate([state.rows, rows])
            new_norms = (rows.astype(np.float32) ** 2).sum(axis=1)
            norms = new_norms if state is None else np.concatenate([state.norms, new_norms])
            if state is None or len(every) >= 2 * self._trained_on:
                quantizer = self._train(every)
                _, cells = quantizer.search(every, 1)
                cells = cells[:, 0].astype(np.int32)
            else:
                quantizer = state.quantizer
                _, fresh = quantizer.search(rows, 1)
                cells = np.concatenate([state.cells, fresh[:, 0].astype(np.int32)])
            self._state = _BoundState.build(every, norms, cells, quantizer)

    def _train(self, rows: np.ndarray):  # noqa: ANN202 - a faiss index
        faiss = self._faiss
        cells = int(np.clip(len(rows) // self._rows_per_cell, 1, self._max_cells))
        # A rough clustering is enough for bounds: few iterations on a small sample, fixed seed.
        kmeans = faiss.Kmeans(
            rows.shape[1], cells, niter=10, seed=1234,
            max_points_per_centroid=self._rows_per_cell, min_points_per_centroid=1,
        )
        kmeans.train(rows)
        quantizer = faiss.IndexFlatL2(rows.shape[1])
        quantizer.add(kmeans.centroids)
        self._trained_on = len(rows)
        return quantizer

    def run(self, queries: np.ndarray, *, exclude: Sequence[int] | None = None, probes: int = 1) -> np.ndarray:
        """(n,) upper bounds on each query's distance to its nearest bank row; inf where the probed cells have none.

        Args:
            queries: (n, d) float32.
            exclude: bank rows the caller's search leaves out (they bound nothing).
            probes: cells searched per query, nearest centroid first; more probes, tighter bounds.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        found = np.full(len(queries), np.inf, dtype=np.float32)
        state = self._state
        if state is None or not len(queries):
            return found
        banned = None
        if exclude is not None and len(exclude):
            banned = np.zeros(len(state.rows), dtype=bool)
            banned[np.asarray(exclude, dtype=np.int64)] = True
        _, probed = state.quantizer.search(queries, min(probes, state.quantizer.ntotal))
        for column in probed.T:
            self._scan(state, queries, found, banned, column)
        found += (queries * queries).sum(axis=1)
        return np.sqrt(np.maximum(found, 0.0)).astype(np.float32)

    @staticmethod
    def _scan(state: "_BoundState", queries: np.ndarray, found: np.ndarray, banned: np.ndarray | None, probed: np.ndarray) -> None:
        by_cell = np.argsort(probed, kind="stable")
        cells, firsts = np.unique(probed[by_cell], return_index=True)
        ends = np.append(firsts[1:], len(by_cell))
        for cell, first, end in zip(cells.tolist(), firsts.tolist(), ends.tolist()):
            members = state.order[state.starts[cell] : state.starts[cell + 1]]
            if banned is not None:
                members = members[~banned[members]]
            if not len(members):
                continue  # nothing left in the probed cell
            which = by_cell[first:end]
            # min over the cell's rows of ||r||^2 - 2 q.r (+ ||q||^2 after the loop). einsum for a verdict's
            # tiny products (BLAS threads on a busy machine made those 10x slower), BLAS for large ones
            # (an indexing batch's coreset measures thousands of patches a cell).
            if len(which) * len(members) >= _BLAS_FROM:
                products = queries[which] @ state.rows[members].T
            else:
                products = np.einsum("ij,kj->ik", queries[which], state.rows[members])
            products *= -2.0
            products += state.norms[members]
            found[which] = np.minimum(found[which], products.min(axis=1))


@dataclass(frozen=True)
class _BoundState:
    rows: np.ndarray  # (m, d) float32: the bank's own array when it was given
    norms: np.ndarray  # (m,) float32 squared norms
    cells: np.ndarray  # (m,) int32 cell of each row
    order: np.ndarray  # (m,) int32 rows sorted by cell
    starts: np.ndarray  # (cells + 1,) start of each cell in `order`
    quantizer: object  # faiss IndexFlatL2 over the centroids

    @classmethod
    def build(cls, rows: np.ndarray, norms: np.ndarray, cells: np.ndarray, quantizer: object) -> "_BoundState":
        order = np.argsort(cells, kind="stable").astype(np.int32)
        starts = np.searchsorted(cells[order], np.arange(quantizer.ntotal + 1)).astype(np.int64)
        return cls(rows=rows, norms=norms, cells=cells, order=order, starts=starts, quantizer=quantizer)


def default_bounds() -> UpperBounds | None:
    """`UpperBounds` on CPU; None when faiss sees a GPU, where the full search costs less than the pruning's steps."""
    import faiss

    return None if faiss.get_num_gpus() > 0 else UpperBounds()


class NumpyNN:
    """Exact L2 nearest neighbours with numpy, in chunks: the reference `FaissNN` is checked against."""

    def __init__(self, *, chunk_size: int = 1024) -> None:
        self._bank = np.empty((0, 0), dtype=np.float32)
        self._chunk = chunk_size

    def fit(self, bank: np.ndarray) -> None:
        self._bank = np.ascontiguousarray(bank, dtype=np.float32)

    def add(self, rows: np.ndarray, *, bank: np.ndarray | None = None) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if bank is not None and len(bank) == self.size + len(rows):
            self._bank = np.ascontiguousarray(bank, dtype=np.float32)
            return
        self._bank = rows if self._bank.size == 0 else np.concatenate([self._bank, rows])

    def run(self, queries: np.ndarray, k: int, *, exclude: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        excluded = np.zeros(self.size, dtype=bool)
        if exclude is not None and len(exclude):
            excluded[np.asarray(exclude, dtype=np.int64)] = True
        if self.size - excluded.sum() <= 0:
            raise _empty()
        k = min(k, int(self.size - excluded.sum()))
        queries = np.asarray(queries, dtype=np.float32)
        bank_sq = (self._bank.astype(np.float64) ** 2).sum(axis=1)
        out_d = np.empty((len(queries), k), dtype=np.float32)
        out_i = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), self._chunk):
            q = queries[start : start + self._chunk].astype(np.float64)
            sq = (q**2).sum(axis=1)[:, None] - 2.0 * q @ self._bank.T.astype(np.float64) + bank_sq[None, :]
            sq[:, excluded] = np.inf
            part = np.argpartition(sq, k - 1, axis=1)[:, :k]
            part_sq = np.take_along_axis(sq, part, axis=1)
            order = np.argsort(part_sq, axis=1, kind="stable")
            out_i[start : start + len(q)] = np.take_along_axis(part, order, axis=1)
            out_d[start : start + len(q)] = np.sqrt(np.maximum(np.take_along_axis(part_sq, order, axis=1), 0.0))
        return out_d, out_i

    def reconstruct(self, row: int) -> np.ndarray:
        return self._bank[int(row)].copy()

    def reset(self) -> None:
        self._bank = np.empty((0, 0), dtype=np.float32)

    @property
    def size(self) -> int:
        return int(self._bank.shape[0])


def _drop(sq: np.ndarray, idx: np.ndarray, exclude: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    banned = set(int(i) for i in exclude)
    keep = ~np.isin(idx, list(banned))
    out_sq = np.empty((len(sq), k), dtype=np.float32)
    out_idx = np.empty((len(sq), k), dtype=np.int64)
    for row in range(len(sq)):
        out_sq[row] = sq[row][keep[row]][:k]
        out_idx[row] = idx[row][keep[row]][:k]
    return out_sq, out_idx


@dataclass(frozen=True)
class PatchScore:
    """The patch-level answer for one image.

    Attributes:
        score: the image score (max patch distance, re-weighted if enabled).
        worst: index of the patch with the largest distance.
        nearest_row: the bank row nearest to the worst patch.
        distances: (rows * cols,) float32 nearest-bank distance of every patch;
            None when only the score was asked for.
    """

    score: float
    worst: int
    nearest_row: int
    distances: np.ndarray | None = None


def top_mean(distances: np.ndarray, k: int) -> float:
    """Mean of the k largest values (all of them when fewer)."""
    if k <= 1:
        return float(distances.max())
    k = min(k, len(distances))
    return float(np.partition(distances, len(distances) - k)[-k:].mean())


class PatchScorer:
    """Image score = the largest distance from a patch to its nearest bank patch.

    With `reweight_k` > 0 the PatchCore re-weighting is applied: the worst patch's
    distance s* is scaled by 1 - softmax(d)[0], where d holds its distances to its
    nearest bank patch m* and to m*'s `reweight_k` nearest bank neighbours. A worst
    patch whose bank neighbourhood is sparse (rare but nominal) is damped.

    Args:
        nn: the search backend, fitted on the bank by the caller.
        reweight_k: neighbours of m* for the re-weighting; 0 turns it off.
        bounds: the bank's `UpperBounds`; with them, a score asked for without
            the distance grid searches the whole bank only for the patches that can
            hold the largest distances (the result is the same).
        top_k: the image score is the mean of the `top_k` largest patch distances
            (1: the largest alone); the re-weighting scales that mean.
    """

    def __init__(
        self,
        nn: NearestNeighbours,
        *,
        reweight_k: int = DEFAULT_REWEIGHT_K,
        bounds: UpperBounds | None = None,
        top_k: int = 1,
    ) -> None:
        if reweight_k < 0:
            raise ValueError(f"reweight_k must be >= 0, got {reweight_k}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.nn = nn
        self.reweight_k = reweight_k
        self.bounds = bounds
        self.top_k = top_k

    def run(self, patches: np.ndarray, *, exclude: Sequence[int] | None = None, grid: bool = True) -> PatchScore:
        """Score one image.

        Args:
            patches: (P, d) patch vectors of the image.
            exclude: bank rows to ignore (the image's own patches, for leave-one-out).
            grid: also return every patch's distance (heat maps need it; a verdict does not).

        Returns:
            Its `PatchScore`.
        """
        distances = None
        if grid or self.bounds is None:
            found, indices = self.nn.run(patches, 1, exclude=exclude)
            distances = found[:, 0]
            worst = int(np.argmax(distances))
            score, nearest_row = top_mean(distances, self.top_k), int(indices[worst, 0])
        else:
            worst, score, nearest_row = self._largest(patches, exclude)
        if self.reweight_k > 0:
            score *= self._weight(patches[worst], nearest_row, exclude)
        return PatchScore(score=score, worst=worst, nearest_row=nearest_row, distances=distances)

    def _largest(self, patches: np.ndarray, exclude: Sequence[int] | None) -> tuple[int, float, int]:
        """(patch, score, its nearest row) of the patch farthest from the bank, searching few patches in full.

        Patches are taken in decreasing order of their upper bound; once a bound is
        no larger than the `top_k`-th largest exact distance found, no later patch
        can enter the top k. The score is the mean of those k exact distances.
        """
        assert self.bounds is not None
        bounds = self.bounds.run(patches, exclude=exclude)
        order = np.argsort(-bounds, kind="stable")
        k = min(self.top_k, len(patches))
        worst, largest, nearest_row = int(order[0]), -1.0, -1
        exact: list[np.ndarray] = []
        kth = -1.0
        for start in range(0, len(order), PRUNED_STEP):
            if bounds[order[start]] <= kth:
                break
            step = order[start : start + PRUNED_STEP]
            found, indices = self.nn.run(patches[step], 1, exclude=exclude)
            exact.append(found[:, 0])
            best = int(np.argmax(found[:, 0]))
            if found[best, 0] > largest:
                worst, largest, nearest_row = int(step[best]), float(found[best, 0]), int(indices[best, 0])
            seen = np.concatenate(exact)
            if len(seen) >= k:
                kth = float(np.partition(seen, len(seen) - k)[len(seen) - k])
        return worst, top_mean(np.concatenate(exact), k), nearest_row

    def _weight(self, patch: np.ndarray, nearest_row: int, exclude: Sequence[int] | None) -> float:
        bank_row = self._bank_row(nearest_row)
        _, support = self.nn.run(bank_row[None, :], self.reweight_k + 1, exclude=exclude)
        rows = np.stack([self._bank_row(int(i)) for i in support[0]])
        d = np.sqrt(((rows - patch[None, :]) ** 2).sum(axis=1))
        # softmax over the distances; support[0][0] is m* itself (distance 0 to its own row).
        e = np.exp(d - d.max())
        return float(1.0 - e[0] / e.sum())

    def _bank_row(self, row: int) -> np.ndarray:
        return self.nn.reconstruct(row)


class HybridScorer:
    """A `PatchScorer` whose patch scores are DenseHybrid's (`metric_learning.HybridHead.combine`): every patch's
    distance is searched (no pruning), combined with the head's log-odds, and the image score is the largest."""

    def __init__(self, inner: PatchScorer, head: "HybridCombiner") -> None:
        self.inner = inner
        self.head = head

    def run(self, patches: np.ndarray, *, exclude: Sequence[int] | None = None, grid: bool = True) -> PatchScore:
        found = self.inner.run(patches, exclude=exclude, grid=True)
        assert found.distances is not None
        combined = self.head.combine(found.distances, patches)
        worst = int(np.argmax(combined))
        return PatchScore(score=float(combined[worst]), worst=worst, nearest_row=found.nearest_row,
                          distances=combined if grid else None)


class HybridCombiner(Protocol):
    def combine(self, distances: np.ndarray, patches: np.ndarray) -> np.ndarray: ...
