"""The patch memory bank: kept patch vectors, where each came from, and its search index.

In the store a bank is a "patch" collection (one per setting, backbone and version,
named by `collection_name(..., kind="patch")`); each point is one kept patch whose
payload names its source image and grid position. Point ids are uuid5 of the image
id and the patch index, so storing the same image's patch twice overwrites it.

In memory a bank is a `PatchBank`: the vectors, their owners, and a fitted search
backend. `indexing.bank_cache.BankCache` holds the loaded banks of every setting
under one memory budget, and reloads an evicted one on its next request; a setting
whose alias moves to another collection gets the new bank on its next request.

The store keeps cosine collections, which normalise vectors on insert, so each
point also records its vector's norm and the bank is rebuilt at the original
length; patch vectors need not be unit length.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterable, Sequence

import numpy as np

from indexing.patch_search import NearestNeighbours, UpperBounds
from indexing.store.base import Point, Vectors

# uuid5 namespace of patch point ids (a fixed random UUID: ids must never change).
PATCH_NAMESPACE = uuid.UUID("6b0f0f52-4f53-4c2a-9a43-1c3f7f1d2e55")
# Points read from the store per step while a bank loads (each step is reduced to arrays at once).
LOAD_BATCH = 4096


def patch_point_id(image_id: str, patch: int) -> str:
    """Deterministic point id of patch `patch` of image `image_id`."""
    return str(uuid.uuid5(PATCH_NAMESPACE, f"{image_id}:{patch}"))


def patch_points(
    image_id: str, source: str, vectors: np.ndarray, kept: np.ndarray, grid: tuple[int, int], *, first: int = 0
) -> list[Point]:
    """Points for the kept patches of one image (or of one tile of it).

    Args:
        image_id: the image's content id (its global point id).
        source: where the image came from, shown with neighbours.
        vectors: (P, d) all patch vectors of the image (or tile).
        kept: indices of the patches to store.
        grid: (rows, cols) of the patch grid.
        first: number of the first patch: a tiled image numbers tile t's patches from t * P,
            and its points also record `tile` (row and col are then within that tile).
    """
    cols = grid[1]
    points = []
    for patch in kept.tolist():
        vector = vectors[patch]
        norm = float(np.linalg.norm(vector))
        number = first + patch
        payload = {
            "image_id": image_id, "source": source, "patch": number,
            "row": patch // cols, "col": patch % cols, "norm": norm,
        }
        if first:
            payload["tile"] = first // (grid[0] * cols)
        points.append(Point(id=patch_point_id(image_id, number), vector=vector, payload=payload))
    return points


class PatchBank:
    """Bank rows in memory with who owns them, searchable through `nn`.

    Attributes:
        vectors: (m, d) float32 rows, in search-index order.
        image_ids: owner image id of each row.
        patches: (m,) grid index of each row in its image.
        cells: (m, 2) grid (row, col) of each row in its image.
        sources: image id -> source, for neighbours.
        nn: the fitted search backend over `vectors`.
        bounds: upper bounds on nearest-row distances, for pruned scoring (see `PatchScorer`); None searches in full.
        own_scores: image id -> its leave-one-out score against the rest of the bank, as far as
            computed (`PatchConfig.local_scale`); emptied whenever the bank grows.
    """

    def __init__(self, dim: int, nn: NearestNeighbours, bounds: UpperBounds | None = None) -> None:
        self.dim = dim
        self.vectors = np.empty((0, dim), dtype=np.float32)
        self.image_ids: list[str] = []
        self.patches = np.empty(0, dtype=np.int64)
        self.cells = np.empty((0, 2), dtype=np.int64)
        self.sources: dict[str, str] = {}
        self.nn = nn
        self.bounds = bounds
        self._rows: dict[str, list[int]] = {}
        self.own_scores: dict[str, float] = {}
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.image_ids)

    def rows_of(self, image_id: str) -> list[int]:
        """Bank rows owned by an image (empty when it is not a nominal image)."""
        return self._rows.get(image_id, [])

    def add(self, points: Sequence[Point]) -> None:
        """Append stored points (their vectors rescaled to the recorded norm)."""
        self.extend([points])

    def extend(self, batches: Iterable[Sequence[Point]]) -> None:
        """Append several batches of points in one step.

        Each batch is reduced to arrays as it arrives, and the bank grows once at
        the end: growing it batch by batch copied every row again at each batch,
        so load time grew with the square of the bank (`benchmarks/bank_load.py`).
        """
        blocks, owners, sources, patches, cells = [], [], {}, [], []
        for points in batches:
            if not points:
                continue
            blocks.append(_original(points))
            for point in points:
                owner = point.payload["image_id"]
                owners.append(owner)
                sources[owner] = point.payload.get("source", owner)
                patches.append(int(point.payload["patch"]))
                cells.append((int(point.payload["row"]), int(point.payload["col"])))
        if not blocks:
            return
        rows = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        with self.lock:
            self.own_scores.clear()  # more rows can only bring an image's nearest other row closer
            start = len(self.image_ids)
            for offset, owner in enumerate(owners):
                self._rows.setdefault(owner, []).append(start + offset)
            self.image_ids.extend(owners)
            self.sources.update(sources)
            self.patches = np.concatenate([self.patches, np.asarray(patches, dtype=np.int64)])
            self.cells = np.concatenate([self.cells, np.asarray(cells, dtype=np.int64).reshape(-1, 2)])
            self.vectors = rows if start == 0 else np.concatenate([self.vectors, rows])
            # The bank's backend first: a search that finds a new row through the bounds then finds it in the bank too.
            # Both are handed the bank's own array: on a CPU they search it in place, so the rows are held once.
            self.nn.add(rows, bank=self.vectors)
            if self.bounds is not None:
                self.bounds.add(rows, bank=self.vectors)


def _original(points: Sequence[Point]) -> np.ndarray:
    """(n, d) float32 rows at the length each point recorded (the store kept them normalised)."""
    rows = np.stack([np.asarray(p.vector, dtype=np.float32) for p in points])
    norms = np.array([p.payload.get("norm", np.nan) for p in points], dtype=np.float32)
    lengths = np.linalg.norm(rows, axis=1)
    rescale = ~np.isnan(norms) & (lengths > 0)
    rows[rescale] *= (norms[rescale] / lengths[rescale])[:, None]
    return rows


def load_bank(
    store: Vectors, collection: str, dim: int, nn: NearestNeighbours, bounds: UpperBounds | None = None
) -> PatchBank:
    """Every point of a patch collection as a `PatchBank` (scrolled in batches)."""
    bank = PatchBank(dim, nn, bounds)
    points = store.scroll(collection, with_vectors=True, batch_size=LOAD_BATCH)
    bank.extend(iter(lambda: list(itertools.islice(points, LOAD_BATCH)), []))
    return bank
