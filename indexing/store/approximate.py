"""Approximate candidates for large collections: an IVF-SQ8 index proposes, the store rescores exactly.

Exact search grows linearly with a collection (31 ms at 100,000 x 1280-d in the
embedded store, about 10x that at 1M); `benchmarks/store_scale.py` measured faiss
IVF-SQ8 with 50 candidates rescored exactly at recall@10 1.000 up to 1M points, 1.1 ms
at 100k and 7.4 ms at 1M on one thread. So a collection holding more than
`approximate_above` points (`NOMINAL_APPROXIMATE_ABOVE`, default 100,000) is searched
in two steps:

1. the IVF-SQ8 index (nlist = sqrt(N), nprobe 16, 8-bit codes: 1.3 kB a 1280-d point)
   proposes `candidate_count(k)` = max(50, 5k) candidates per query;
2. the store scores those candidates exactly from its own float32 vectors (the
   embedded store runs its exact search restricted to the candidates' ids), so every
   distance returned is the exact one, bit for bit what exact search returns; only a
   neighbour the candidates missed can change a result.

The float vectors for rescoring are the store's own: no second float copy is held
(faiss `IndexRefineFlat` would hold one: 4.9 GiB more at 1M x 1280-d).

`ApproximateIndex` is the faiss index plus its ids; `Switch` is one collection's
state in the embedded store: when it goes approximate, keeping the index in step with
writes, and saving and reopening it beside the collection. faiss runs on one OpenMP
thread (`one_thread`): two threads oversubscribe these 2-core machines, and the setting
is process-wide, so it is restored after each call rather than left for torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from indexing.store._common import fsync_dir, write_atomic

log = logging.getLogger(__name__)

# Above this many points a collection is searched through the approximate index (exact
# search at 100k: 31 ms; IVF-SQ8 + rescoring: about 1 ms, recall@10 1.000).
DEFAULT_APPROXIMATE_ABOVE = 100_000
NPROBE = 16
EXACT = "exact"
APPROXIMATE = "approximate"
_STATE = "approximate.json"


def candidate_count(k: int) -> int:
    """Candidates the approximate index proposes for a top-k search: max(50, 5k)."""
    return max(50, 5 * k)


def nlist_for(n: int) -> int:
    """IVF lists for an index of `n` points: sqrt(n), at least 16 (at most n, so k-means can train)."""
    return max(1, min(n, max(16, int(math.sqrt(n)))))


def training_rows(n: int) -> int:
    """Rows k-means trains on for `n` points: 39 per list (faiss' own minimum), at most n."""
    return min(n, 39 * nlist_for(n))


def train_ivf_sq8(sample: np.ndarray, n: int) -> Any:
    """An empty IVF-SQ8 inner-product index for `n` points, trained on `sample` (rows, d) of unit rows.

    The one construction the store and `benchmarks/store_scale.py` share; `nprobe` is set to NPROBE.
    """
    import faiss

    dim = sample.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist_for(n), faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.nprobe = NPROBE
    return index


@contextmanager
def one_thread() -> Iterator[None]:
    """faiss on one OpenMP thread for the duration, then the previous setting back."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return np.ascontiguousarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


class ApproximateIndex:
    """An IVF-SQ8 index over one collection's points; faiss labels are positions in `ids`.

    Thread-safe: one lock around faiss (a search must not run beside an add). A point
    written again gets a new label and its old one is removed, so an id is never
    proposed twice.
    """

    def __init__(self, index: Any, ids: list[str | None]) -> None:
        self._index = index
        self._ids = ids
        self._labels = {point_id: label for label, point_id in enumerate(ids) if point_id is not None}
        self._lock = threading.Lock()

    @classmethod
    def build(cls, count: int, batches: Iterable[tuple[list[str], np.ndarray]]) -> ApproximateIndex:
        """Train on the first `training_rows(count)` rows of `batches`, then add every row.

        `batches` yields (ids, rows); the store scrolls in id order, and ids are content
        hashes or random UUIDs, so the first rows are a fair sample.
        """
        wanted = training_rows(max(count, 1))
        held: list[tuple[list[str], np.ndarray]] = []  # rows read before the index is trained
        built: ApproximateIndex | None = None
        with one_thread():
            for ids, rows in batches:
                held.append((ids, _unit(rows)))
                if built is None and sum(len(r) for _, r in held) >= wanted:
                    built = cls(train_ivf_sq8(np.concatenate([r for _, r in held])[:wanted], count), [])
                if built is not None:
                    for held_ids, held_rows in held:
                        built._add(held_ids, held_rows)
                    held = []
            if built is None:  # fewer rows than the count promised (deleted meanwhile): train on what there is
                if not held:
                    raise ValueError("cannot build an approximate index over an empty collection")
                every = np.concatenate([r for _, r in held])
                built = cls(train_ivf_sq8(every, len(every)), [])
                for held_ids, held_rows in held:
                    built._add(held_ids, held_rows)
        return built

    def __len__(self) -> int:
        return len(self._labels)

    def add(self, ids: list[str], rows: np.ndarray) -> None:
        """Add or replace points (`rows` need not be unit length: they are normalised here)."""
        with self._lock, one_thread():
            self._add(ids, _unit(rows))

    def remove(self, ids: Iterable[str]) -> None:
        """Forget points; ids the index does not hold are ignored."""
        with self._lock, one_thread():
            self._remove(ids)

    def candidates(self, queries: np.ndarray, n: int) -> list[list[str]]:
        """Up to `n` candidate ids per query row, best first by the 8-bit codes' inner product."""
        with self._lock, one_thread():
            _, labels = self._index.search(_unit(queries), n)
        ids = self._ids
        return [[ids[label] for label in row if label >= 0 and ids[label] is not None] for row in labels]

    def _add(self, ids: list[str], rows: np.ndarray) -> None:
        # The last write of an id within one batch wins, as in the store.
        last = {point_id: position for position, point_id in enumerate(ids)}
        if len(last) < len(ids):
            keep = sorted(last.values())
            ids, rows = [ids[p] for p in keep], rows[keep]
        self._remove(ids)
        start = len(self._ids)
        labels = np.arange(start, start + len(ids), dtype=np.int64)
        self._index.add_with_ids(rows, labels)
        self._ids.extend(ids)
        self._labels.update(zip(ids, labels.tolist()))

    def _remove(self, ids: Iterable[str]) -> None:
        labels = [self._labels.pop(point_id) for point_id in ids if point_id in self._labels]
        if labels:
            self._index.remove_ids(np.asarray(labels, dtype=np.int64))
            for label in labels:
                self._ids[label] = None

    # Files

    def save(self, folder: Path) -> None:
        """Write the index and its ids under a new generation, then `approximate.json` naming it.

        The JSON is written last and atomically, so a crash mid-save leaves the previous
        state (or none): files it does not name are never read, and are swept here.
        """
        import faiss

        generation = uuid.uuid4().hex[:12]
        with self._lock:
            index_path = folder / f"approximate-{generation}.faiss"
            _replace_with(index_path, lambda temp: faiss.write_index(self._index, str(temp)))
            hexes = np.array([(i or "").replace("-", "") for i in self._ids], dtype="S32")
            _replace_with(folder / f"approximate-{generation}.ids.npy", lambda temp: np.save(temp, hexes))
            points = len(self._labels)
        write_atomic(folder / _STATE, json.dumps({"generation": generation, "clean": True, "points": points}).encode())
        _sweep(folder, keep=generation)

    @classmethod
    def load(cls, folder: Path) -> ApproximateIndex | None:
        """The index saved in `folder`, or None when none was saved or writes came after the save."""
        import faiss

        state = _read_state(folder)
        if not state or not state.get("clean"):
            return None
        generation = state["generation"]
        try:
            index = faiss.read_index(str(folder / f"approximate-{generation}.faiss"))
            hexes = np.load(folder / f"approximate-{generation}.ids.npy")
        except (FileNotFoundError, RuntimeError) as error:
            log.warning("approximate index in %s unreadable (%s): it will be rebuilt", folder, error)
            return None
        index.nprobe = NPROBE
        ids = [str(uuid.UUID(hex=h.decode())) if h else None for h in hexes.tolist()]
        return cls(index, ids)


class Switch:
    """One collection's search mode in the embedded store: exact, or approximate above a point count.

    Writers hold `lock` around writing the shard and calling `wrote`/`deleted`, and a
    build holds it while it reads the shard, so no write lands between the read and the
    index. The count is cached between writes, so an exact search below the threshold
    costs no extra call.

    On disk: the index is saved when it is built and when the store closes; the first
    write after a save marks `approximate.json` not clean, so after a crash the index is
    rebuilt from the collection (on its first search) rather than used stale.
    """

    def __init__(self, folder: Path, above: int | None) -> None:
        self.folder = folder
        self.above = above or None  # 0 or None: never approximate
        self.lock = threading.RLock()
        self.index = ApproximateIndex.load(folder) if self.above else None
        if not self.above and (_read_state(folder) or {}).get("clean"):
            # Writes while the switch is off would not reach a saved index: never trust it again.
            write_atomic(folder / _STATE, json.dumps({**(_read_state(folder) or {}), "clean": False}).encode())
        self._count: int | None = None
        self._writes = 0
        self._dirty = False

    @property
    def mode(self) -> str:
        return APPROXIMATE if self.index is not None else EXACT

    def count(self, counted: Callable[[], int]) -> int:
        """The collection's point count, from the cache or `counted()` (cached unless a write raced it)."""
        cached = self._count
        if cached is not None:
            return cached
        writes = self._writes
        value = counted()
        if writes == self._writes:
            self._count = value
        return value

    def ensure(
        self,
        counted: Callable[[], int],
        batches: Callable[[], Iterable[tuple[list[str], np.ndarray]]],
        *,
        wait: bool = True,
    ) -> ApproximateIndex | None:
        """The approximate index, built now if the collection holds more than `above` points; None: search exactly.

        With `wait=False` (a search), a build or write already under way on another thread
        is not waited for: None, and that search is answered exactly.
        """
        if self.index is not None or self.above is None or self.count(counted) <= self.above:
            return self.index
        if not self.lock.acquire(blocking=wait):
            return None
        try:
            if self.index is None:
                count = counted()
                if count > self.above:
                    started = time.perf_counter()
                    index = ApproximateIndex.build(count, batches())
                    index.save(self.folder)
                    self._dirty = False
                    self.index = index
                    log.info("%s: %d points > NOMINAL_APPROXIMATE_ABOVE %d, approximate index built in %.1f s",
                             self.folder.name, count, self.above, time.perf_counter() - started)
        finally:
            self.lock.release()
        return self.index

    def wrote(self, ids: list[str], rows: np.ndarray) -> None:
        """Points were upserted (call with `lock` held)."""
        self._changed()
        if self.index is not None:
            self.index.add(ids, rows)

    def deleted(self, ids: list[str]) -> None:
        """Points were deleted (call with `lock` held)."""
        self._changed()
        if self.index is not None:
            self.index.remove(ids)

    def close(self) -> None:
        """Save an index written to since its last save, so the next open reads it instead of rebuilding."""
        with self.lock:
            if self.index is not None and self._dirty:
                self.index.save(self.folder)
                self._dirty = False

    def _changed(self) -> None:
        self._writes += 1
        self._count = None
        if self.index is not None and not self._dirty:
            state = _read_state(self.folder) or {}
            write_atomic(self.folder / _STATE, json.dumps({**state, "clean": False}).encode())
            self._dirty = True


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _STATE).read_bytes())
    except FileNotFoundError:
        return None


def _replace_with(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through a temp file renamed into place, so a half-written file never has the final name."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.npy")  # np.save keeps a .npy name as given
    try:
        write(temp)
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _sweep(folder: Path, keep: str) -> None:
    """Remove index files of other generations and temp files a killed save left behind."""
    for path in folder.glob("approximate-*"):
        if not path.name.startswith(f"approximate-{keep}."):
            path.unlink(missing_ok=True)
    for path in folder.glob(".approximate-*.tmp.npy"):
        path.unlink(missing_ok=True)
