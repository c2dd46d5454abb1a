"""Positional statistics: a Gaussian per patch position over nominal images' patch vectors (PaDiM).

Where parts sit in the same place in every image (a solar cell, a circuit board, a sheet in its
fixture), the patch at one place of a good part varies little from part to part, and a patch's
distance to its own position's Gaussian finds what a nearest-patch bank can miss: a patch that
would be normal elsewhere on the part. On the visible suite (`benchmarks/quality.py --modes
positional-rank32-batches`) these statistics alone reach image ROC-AUC 0.997 on PIPED, and
averaged with the patch and global scores they are at or above every anomalib column. On parts
that move from image to image they fall behind (the suite's `-placed` stress sets), so they
suit aligned parts, and `shifts` with `aligned_share` tell from the nominal images alone whether
a setting's parts are aligned. The fused scoring mode (`indexing.fused`) adds their score to the patch and
global scores of a setting whose parts are aligned.

Each position keeps its mean and its `rank` principal directions, each scaled by its singular
value, merged one batch of images at a time by the rule scikit-learn's `IncrementalPCA` uses
(Ross et al. 2008), done here for all positions in one batched SVD. The statistics therefore
grow with a bank without holding its images' patches or a full covariance: 784 positions x
(152 + 32 x 152) float32 values, 15.7 MB a setting at 224 px with EfficientNet-Lite0, where
PaDiM's covariances take 72.9 MB. The variance the kept directions leave out is spread evenly
over the others (probabilistic PCA, Tipping and Bishop 1999) and PaDiM's ridge (0.01 x I) is
added; the distance is then exact for that covariance, by the Woodbury identity. With the
product's normalised patch vectors the 33rd direction's variance is about 30 times below the
ridge (ELPV mono), and rank 32 scored within 0.002 of the full covariance on every visible set.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from indexing.store.base import Point, VectorStore

# Principal directions kept per position: rank 32 scored within 0.002 of the full covariance on every visible
# set (rank 16 lost 0.005 on KolektorSDD), at 22% of its memory.
RANK = 32
# PaDiM's regularisation of each covariance: ridge x identity.
RIDGE = 0.01
# How far, in grid cells, `PositionalStatistics.shifts` looks each way: a quarter of the 28-cell grid at 224 px.
SHIFT_RADIUS = 7
# Cells left out along each edge when registering: a backbone's zero padding marks its border cells alike in every
# image, which pulls any two maps towards no shift (AITEX's weave: 0.54 of its images within a cell with the border,
# 0.41 without one ring of it; aligned sets keep 0.87-1.00). Two rings cost ELPV poly, whose cells' edges are
# most of their layout, 0.20.
SHIFT_MARGIN = 1
# Parts are aligned when at least this share of the nominal images register to the others' mean map within one
# cell (`aligned_share`). On the visible suite the aligned sets gave 0.87-1.00 (ELPV, Hazelnut Toy, KolektorSDD,
# PIPED) and the others 0.30-0.68 (AITEX's weave, DeepPCB's boards, the `-placed` stress sets), all their nominal
# images each; below about 128 images a draw can stray by 0.2 (`benchmarks/quality.py`, README).
ALIGNED_SHARE = 0.8
# Nominal images a setting registers before it decides, once, whether its parts are aligned: from about 128
# images the share is stable (README, "A label-free alignment test").
ALIGNMENT_IMAGES = 128


@dataclass(frozen=True)
class PositionalStatistics:
    """Per-position mean and principal directions of the patch vectors added so far.

    Attributes:
        count: images added.
        mean: (positions, dim) mean patch vector at each position.
        basis: (positions, kept, dim) principal directions at each position, each scaled by its
            singular value (the square root of count - 1 times its variance), largest first;
            kept = min(rank, the rank the images so far allow).
        scatter: (positions,) sum of squared distances of the patch vectors to their position's mean (the
            trace of the scatter matrix), so the variance the kept directions leave out is known.
        rank: the most directions kept.
    """

    count: int
    mean: np.ndarray
    basis: np.ndarray
    scatter: np.ndarray
    rank: int = RANK

    @classmethod
    def of(cls, vectors: np.ndarray, *, rank: int = RANK, batch: int = 32) -> "PositionalStatistics":
        """The statistics of (images, positions, dim) patch vectors, merged `batch` images at a time."""
        statistics = None
        for start in range(0, len(vectors), batch):
            chunk = vectors[start : start + batch]
            statistics = statistics.add(chunk) if statistics is not None else cls._first(chunk, rank)
        if statistics is None:
            raise ValueError("positional statistics need at least one image")
        return statistics

    @classmethod
    def _first(cls, vectors: np.ndarray, rank: int) -> "PositionalStatistics":
        vectors = _checked(vectors)
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        centred = vectors - vectors.mean(axis=0)
        return cls(len(vectors), vectors.mean(axis=0), _top(np.swapaxes(centred, 0, 1), rank),
                   np.square(centred).sum(axis=(0, 2)), rank)

    def add(self, vectors: np.ndarray) -> "PositionalStatistics":
        """These statistics with more images' (images, positions, dim) patch vectors merged in."""
        vectors = _checked(vectors, self.mean.shape)
        size = len(vectors)
        batch_mean = vectors.mean(axis=0)
        total = self.count + size
        # The scatter of the union = the old scatter (its basis), the batch's own, and the shift between the means.
        shift = np.sqrt(self.count * size / total) * (self.mean - batch_mean)
        centred = vectors - batch_mean
        rows = np.concatenate([self.basis, np.swapaxes(centred, 0, 1), shift[:, None, :]], axis=1)
        mean = (self.count * self.mean + size * batch_mean) / total
        scatter = self.scatter + np.square(centred).sum(axis=(0, 2)) + np.square(shift).sum(axis=-1)
        return PositionalStatistics(total, mean, _top(rows, self.rank), scatter, self.rank)

    @cached_property
    def variances(self) -> np.ndarray:
        """(positions, kept) variance along each kept direction."""
        return np.square(np.linalg.norm(self.basis, axis=-1)) / max(self.count - 1, 1)

    @cached_property
    def residual(self) -> np.ndarray:
        """(positions,) mean variance along the directions not kept (probabilistic PCA's noise variance)."""
        kept = self.basis.shape[1]
        left = self.scatter / max(self.count - 1, 1) - self.variances.sum(axis=-1)
        return np.maximum(left, 0.0) / max(self.mean.shape[1] - kept, 1)

    def distances(self, vectors: np.ndarray, *, ridge: float = RIDGE) -> np.ndarray:
        """(images, positions) Mahalanobis distance of each patch to its position's Gaussian: variance l + ridge
        along each kept direction, the residual variance + ridge along every other (probabilistic PCA, Tipping
        and Bishop 1999, with PaDiM's ridge); all directions kept, PaDiM's own covariance.

        Worked out in float32, one BLAS product per position: a verdict's 784 positions take 0.7 ms instead
        of float64 einsum's 2 ms, and the distances agree with float64's to about 1e-6 of their size."""
        vectors = _checked(vectors, self.mean.shape)
        mean, directions, inverse_floor, weights = self._inverse if ridge == RIDGE else self._inverse_with(ridge)
        centred = np.asarray(vectors, dtype=np.float32) - mean
        along = np.matmul(np.swapaxes(centred, 0, 1), directions)  # (positions, images, kept)
        # C^-1 = I / floor - V diag(1 / floor - 1 / (l + ridge)) V^T
        squared = (np.einsum("npd,npd->np", centred, centred) * inverse_floor
                   - np.einsum("pnk,pnk,pk->np", along, along, weights))
        return np.sqrt(np.maximum(squared, 0.0))

    @cached_property
    def _inverse(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`_inverse_with(RIDGE)`, worked out once per statistics (they are immutable), not on every verdict."""
        return self._inverse_with(RIDGE)

    def _inverse_with(self, ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What `distances` needs under `ridge`, float32: the mean, the unit directions, 1 / floor per position
        and, per kept direction, 1 / floor - 1 / (variance + ridge) (floor: the residual variance + ridge)."""
        floor = self.residual + ridge
        weights = 1.0 / floor[:, None] - 1.0 / (self.variances + ridge)
        norms = np.linalg.norm(self.basis, axis=-1)
        directions = np.swapaxes(self.basis / np.maximum(norms, 1e-12)[..., None], 1, 2)  # (positions, dim, kept)
        return (self.mean.astype(np.float32), np.ascontiguousarray(directions, dtype=np.float32),
                (1.0 / floor).astype(np.float32), weights.astype(np.float32))

    def shifts(self, vectors: np.ndarray, *, held_in: bool = False, radius: int = SHIFT_RADIUS,
               margin: int = SHIFT_MARGIN) -> np.ndarray:
        """(images, 2): the shift (rows, columns), in grid cells, that best registers each image's patch map onto
        the mean map: the one whose overlapping positions have the largest mean dot product with the mean's.

        An aligned part registers at (0, 0) or a cell from it; a part that moves registers where it moved to;
        a texture or a part with no fixed layout, anywhere. `held_in`: the images were added to these
        statistics, so each is compared with the mean of the others (its own patches would pull it to (0, 0)).
        The `margin` outermost rings of cells are left out of the comparison. The grid must be square (a
        squashed input, as the patch maps are).
        """
        vectors = _checked(vectors, self.mean.shape)
        positions, dim = self.mean.shape
        side = int(round(positions ** 0.5))
        if side * side != positions:
            raise ValueError(f"shifts need a square grid of positions, got {positions}")
        if held_in and self.count < 2:
            raise ValueError("shifts of held-in images need statistics of at least two images")
        inner = slice(margin, side - margin)
        maps = vectors.reshape(len(vectors), side, side, dim)[:, inner, inner]
        mean = self.mean.reshape(side, side, dim)[inner, inner]
        side -= 2 * margin
        radius = min(radius, side - 1)
        span = range(-radius, radius + 1)
        agreement = np.empty((len(vectors), len(span), len(span)))
        for i, rows in enumerate(span):
            for j, columns in enumerate(span):
                own = maps[:, max(-rows, 0) : side - max(rows, 0), max(-columns, 0) : side - max(columns, 0)]
                onto = (slice(max(rows, 0), side + min(rows, 0)), slice(max(columns, 0), side + min(columns, 0)))
                dot = np.einsum("nyxd,yxd->n", own, mean[onto])
                if held_in:  # the others' mean: (count x mean - own) / (count - 1)
                    dot = (self.count * dot - np.einsum("nyxd,nyxd->n", own, maps[:, onto[0], onto[1]])) / (self.count - 1)
                agreement[:, i, j] = dot / (own.shape[1] * own.shape[2])
        best = agreement.reshape(len(vectors), -1).argmax(axis=1)
        return np.stack(np.unravel_index(best, agreement.shape[1:]), axis=1) - radius

    @property
    def nbytes(self) -> int:
        """Bytes the statistics take as float32: what a setting would keep."""
        return (self.mean.size + self.basis.size + self.scatter.size) * 4


def aligned_share(shifts: np.ndarray) -> float:
    """The share of images whose best shift (`PositionalStatistics.shifts`) is at most one cell either way."""
    shifts = np.asarray(shifts)
    return float(np.mean(np.abs(shifts).max(axis=1) <= 1)) if len(shifts) else 0.0


def _checked(vectors: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 3 or not len(vectors):
        raise ValueError(f"patch vectors must be (images, positions, dim) with at least one image, got {vectors.shape}")
    if shape is not None and vectors.shape[1:] != shape:
        raise ValueError(f"patch vectors are (positions, dim) = {vectors.shape[1:]}, the statistics' are {shape}")
    return vectors


def _top(rows: np.ndarray, rank: int) -> np.ndarray:
    """(positions, kept, dim): the `rank` largest right singular vectors of each position's rows, scaled.

    Where a position has at least as many rows as dimensions (every merge after the first: 32 directions, the
    batch's images and the shift), they come from the eigenvectors of its (dim, dim) Gram matrix: 1.3 s for a
    merge of 128 images at 784 positions against 3.0 s for the SVD of the rows, equal to 1e-13. The Gram matrix
    squares the rows' condition, which loses only directions 1e8 times weaker than the first, and those are
    scaled by their singular value to nothing.
    """
    if rows.shape[1] < rows.shape[2]:
        _, singular, right = np.linalg.svd(rows, full_matrices=False)
        return singular[:, :rank, None] * right[:, :rank]
    values, vectors = np.linalg.eigh(np.matmul(np.swapaxes(rows, 1, 2), rows))  # ascending
    kept = min(rank, rows.shape[2])
    values, vectors = values[:, ::-1][:, :kept], vectors[:, :, ::-1][:, :, :kept]
    return np.sqrt(np.clip(values, 0.0, None))[:, :, None] * np.swapaxes(vectors, 1, 2)


# The record of a version's positional statistics (`PositionalRecord`), keyed by its patch collection, and the record
# of each generation of them: the nominal images' scores and the scatter (`PositionalMemory`). The arrays themselves
# are vectors of a collection of their own per generation (`arrays_collection`).
POSITIONAL_KIND = "positional"
GENERATION_KIND = "positional-generation"
# Nominal images whose own positional score a generation's record keeps by id (the first ones merged): a fused
# setting's nominal scores, for its percentiles and a calibration without PASS images, are those of these images.
SCORED_IMAGES = 2048
# Statistics a process keeps loaded, the least recently used dropped past it (15.7 MB each with the default
# backbone at 224 px): a verdict of a setting whose statistics were dropped reads them again.
LOADED_STATISTICS = 16
# Points written per store call when a generation's arrays are stored.
WRITE_BATCH = 4096
ARRAYS_NAMESPACE = uuid.UUID("6f1d3c52-8a1e-4c4e-9a57-0b9d2f6c1e11")


@dataclass(frozen=True)
class PositionalRecord:
    """What a version's positional statistics have seen, beside the arrays themselves.

    Attributes:
        collection: the patch collection the statistics belong to (one per version).
        count: images merged.
        generation: which stored arrays are current (0: none yet); a merge writes the next generation's
            arrays and record before this record names it, so a process that dies mid-write leaves the last
            one whole.
        checked, within: nominal images registered so far, and those within one cell (`shifts`), counted
            until `ALIGNMENT_IMAGES` have been.
        aligned: None until decided; then whether the parts are aligned (`ALIGNED_SHARE`), never revised.
        tiled: an image was cut into tiles: per-position statistics of a squashed image beside the tiles would
            take a second backbone pass, so the statistics stop and never join a fused score.
        reference: (images, sum, sum of squares) of nominal images' scores, each batch scored right after its
            merge: what a fused score standardises the positional score by. The first `SCORED_IMAGES` images'
            scores are kept by id with the generation (`PositionalMemory.scores`).
    """

    collection: str
    count: int = 0
    generation: int = 0
    checked: int = 0
    within: int = 0
    aligned: bool | None = None
    tiled: bool = False
    reference: tuple[int, float, float] = (0, 0.0, 0.0)

    @property
    def joins(self) -> bool:
        """Whether positional scores join a fused score: the parts were found aligned and no image was tiled."""
        return bool(self.aligned) and not self.tiled

    @property
    def standard(self) -> tuple[float, float]:
        """(mean, standard deviation) of the reference scores."""
        n, total, squares = self.reference
        if n == 0:
            return 0.0, 1.0
        mean = total / n
        return mean, float(np.sqrt(max(squares / n - mean * mean, 0.0)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"reference": list(self.reference)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PositionalRecord":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "reference" in known:
            known["reference"] = tuple(known["reference"])
        return cls(**known)


class PositionalMemory:
    """The positional statistics of the store's patch collections: merged as nominal images are indexed,
    kept in the store, read once per generation per process.

    Each generation's arrays are the vectors of a collection of its own (`arrays_collection`): at each
    position its mean and its scaled principal directions, each stored as its direction (a store's
    cosine collection keeps unit vectors) with its length in the payload. Its scatter and its nominal
    images' scores are a record (`GENERATION_KIND`), and the setting's record names the current one.

    Args:
        store: the open store.
        rank: directions kept at each position for statistics begun here.
    """

    def __init__(self, store: VectorStore, *, rank: int = RANK) -> None:
        self.store = store
        self.rank = rank
        # collection -> (generation, statistics, nominal scores by image id) last read or written here, least
        # recently used first
        self._loaded: OrderedDict[str, tuple[int, PositionalStatistics, dict[str, float]]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, collection: str) -> PositionalRecord:
        found = self.store.get_record(POSITIONAL_KIND, collection)
        return PositionalRecord.from_dict(found) if found else PositionalRecord(collection)

    def statistics(self, record: PositionalRecord) -> PositionalStatistics | None:
        """The statistics `record` names (None before the first merge), read from the store once per generation."""
        loaded = self._read(record)
        return loaded[0] if loaded else None

    def scores(self, record: PositionalRecord) -> dict[str, float]:
        """The first `SCORED_IMAGES` nominal images' positional scores, each scored right after its batch's merge."""
        loaded = self._read(record)
        return loaded[1] if loaded else {}

    def _read(self, record: PositionalRecord) -> tuple[PositionalStatistics, dict[str, float]] | None:
        if record.generation == 0:
            return None
        with self._lock:
            cached = self._loaded.get(record.collection)
            if cached is not None and cached[0] == record.generation:
                self._loaded.move_to_end(record.collection)
                return cached[1], cached[2]
        about = self.store.get_record(GENERATION_KIND, _generation_key(record.collection, record.generation))
        if about is None:
            raise ValueError(f"the positional statistics of {record.collection} (generation {record.generation}) "
                             "are missing from the store: re-index the setting")
        scatter = np.asarray(about["scatter"], dtype=np.float64)
        positions, dim, kept = len(scatter), int(about["dim"]), int(about["kept"])
        rows = np.zeros((positions, kept + 1, dim))
        for point in self.store.scroll(arrays_collection(record.collection, record.generation), with_vectors=True,
                                       batch_size=WRITE_BATCH):
            rows[point.payload["p"], point.payload["r"]] = point.vector * point.payload["n"]
        statistics = PositionalStatistics(record.count, rows[:, 0], rows[:, 1:], scatter, self.rank)
        scores = about["scores"]
        self._keep(record.collection, (record.generation, statistics, scores))
        return statistics, scores

    def add(self, collection: str, vectors: np.ndarray | None, ids: Sequence[str] = (), *,
            tiled: bool = False) -> PositionalRecord:
        """Merge (images, positions, dim) patch vectors of nominal images scored whole, whose image ids are `ids`;
        `tiled`: an image of the batch was cut into tiles, which stops the statistics for good. Returns the
        record written.

        The caller holds the setting's positional lock: one merge at a time per collection.
        """
        record = self.record(collection)
        if record.tiled:
            return record
        if tiled:
            record = replace(record, tiled=True)
            self.store.put_record(POSITIONAL_KIND, collection, record.to_dict())
            return record
        if vectors is None or not len(vectors):
            return record
        before = self._read(record)
        statistics, scored = ((PositionalStatistics.of(vectors, rank=self.rank), {}) if before is None
                              else (before[0].add(vectors), before[1]))
        scores = statistics.distances(vectors).max(axis=1)
        n, total, squares = record.reference
        scored = {**scored, **dict(list(zip(ids, scores.tolist()))[: max(SCORED_IMAGES - len(scored), 0)])}
        record = replace(record, count=statistics.count,
                         reference=(n + len(scores), total + float(scores.sum()), squares + float(np.square(scores).sum())))
        if record.aligned is None and statistics.count >= 2:
            within = np.abs(statistics.shifts(vectors, held_in=True)).max(axis=1) <= 1
            record = replace(record, checked=record.checked + len(within), within=record.within + int(within.sum()))
            if record.checked >= ALIGNMENT_IMAGES:
                record = replace(record, aligned=record.within / record.checked >= ALIGNED_SHARE)
        written = replace(record, generation=record.generation + 1)
        self._write_arrays(written, statistics, scored)
        self.store.put_record(POSITIONAL_KIND, collection, written.to_dict())  # the switch to the new generation
        self._drop_generation(record)
        self._keep(collection, (written.generation, statistics, scored))
        return written

    def _write_arrays(self, record: PositionalRecord, statistics: PositionalStatistics, scored: dict[str, float]) -> None:
        name = arrays_collection(record.collection, record.generation)
        self.store.delete_collection(name)  # one left by a merge that died before its switch (none is no error)
        positions, kept, dim = statistics.basis.shape
        self.store.create_collection(name, dim)
        rows = np.concatenate([statistics.mean[:, None, :], statistics.basis], axis=1).reshape(-1, dim)
        norms = np.linalg.norm(rows, axis=1)
        unit = np.zeros_like(rows)
        unit[:, 0] = 1.0  # a row of length 0 (a direction the images do not span yet): any unit vector, length 0
        nonzero = norms > 0
        unit[nonzero] = rows[nonzero] / norms[nonzero, None]
        points = [Point(id=str(uuid.uuid5(ARRAYS_NAMESPACE, f"{number}")), vector=unit[number].astype(np.float32),
                        payload={"p": number // (kept + 1), "r": number % (kept + 1), "n": float(norms[number])})
                  for number in range(len(rows))]
        for start in range(0, len(points), WRITE_BATCH):
            self.store.upsert(name, points[start : start + WRITE_BATCH])
        self.store.put_record(GENERATION_KIND, _generation_key(record.collection, record.generation), {
            "dim": dim, "kept": kept, "scatter": statistics.scatter.tolist(), "scores": scored})

    def _keep(self, collection: str, loaded: tuple[int, PositionalStatistics, dict[str, float]]) -> None:
        with self._lock:
            self._loaded[collection] = loaded
            self._loaded.move_to_end(collection)
            while len(self._loaded) > LOADED_STATISTICS:
                self._loaded.popitem(last=False)

    def delete(self, collection: str) -> None:
        """The record and arrays of a deleted patch collection."""
        record = self.record(collection)
        self.store.delete_record(POSITIONAL_KIND, collection)
        self._drop_generation(record)
        with self._lock:
            self._loaded.pop(collection, None)

    def _drop_generation(self, record: PositionalRecord) -> None:
        if record.generation == 0:
            return
        self.store.delete_collection(arrays_collection(record.collection, record.generation))
        self.store.delete_record(GENERATION_KIND, _generation_key(record.collection, record.generation))


def arrays_collection(collection: str, generation: int) -> str:
    """The collection holding one generation of a patch collection's positional statistics."""
    return f"{collection}__positional__g{generation}"


def _generation_key(collection: str, generation: int) -> str:
    return f"{collection}.g{generation}"
