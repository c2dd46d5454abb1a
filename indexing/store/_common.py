"""Input checks both stores share, so `EdgeStore` and `ServerStore` refuse the same things the same way.

Names end up as directory names (embedded) and collection names (server), and the
contract test expects one behaviour from both; keeping the rules here is what makes
that true.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexing.errors import InvalidName
from indexing.store.base import Point

# The server store keeps records in a collection of this name, so neither store lets a
# user collection or alias take it: a data directory must be movable to a server.
RECORDS_COLLECTION = "nominal_records"

# Starting with a letter or digit keeps names clear of the dot-files the embedded store
# uses for its own bookkeeping (".lock", ".creating-...") and of "." / "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def check_name(name: str, what: str) -> str:
    """Return `name` if usable as a collection, alias, record kind or record key; raise InvalidName otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid {what} name {name!r}: use 1-200 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    if what in ("collection", "alias") and name == RECORDS_COLLECTION:
        raise InvalidName(f"{what} name {name!r} is reserved for Nominal's records: choose another name")
    return name


def check_point_id(point_id: str) -> str:
    """The canonical lowercase form of a UUID point id, so both stores hand back the id they stored."""
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        raise ValueError(f"point id {point_id!r} is not a UUID: derive ids with uuid.uuid5 or uuid.uuid4") from None


def lookup_ids(ids: Sequence[str]) -> list[str]:
    """Canonical forms of the ids that could exist; a non-UUID id names no point, so lookups skip it."""
    found = []
    for point_id in ids:
        try:
            found.append(str(uuid.UUID(str(point_id))))
        except ValueError:
            continue
    return found


def check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def query_matrix(vectors: np.ndarray, dim: int, collection: str) -> np.ndarray:
    """`vectors` as a C-contiguous float32 (n, dim) matrix, or a ValueError naming the mismatch."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"search expects a 2-d (n, {dim}) array of query vectors, got shape {matrix.shape}")
    return _checked(matrix, dim, collection)


def point_matrix(points: Sequence[Point], dim: int, collection: str) -> np.ndarray:
    """The points' vectors stacked into one float32 (n, dim) matrix, checked before anything is written."""
    rows = [np.asarray(p.vector, dtype=np.float32).reshape(-1) for p in points]
    if any(row.shape[0] != dim for row in rows):
        bad = next(row.shape[0] for row in rows if row.shape[0] != dim)
        raise ValueError(f"collection {collection!r} holds {dim}-d vectors, got a {bad}-d vector")
    return _checked(np.stack(rows), dim, collection)


def _checked(matrix: np.ndarray, dim: int, collection: str) -> np.ndarray:
    if matrix.shape[1] != dim:
        raise ValueError(f"collection {collection!r} holds {dim}-d vectors, got {matrix.shape[1]}-d vectors")
    if not np.isfinite(matrix).all():
        raise ValueError("vectors contain NaN or infinity: check the embedding step")
    # A zero vector has no direction, so its cosine distance is undefined.
    if (np.abs(matrix).max(axis=1) == 0).any():
        raise ValueError("a vector is all zeros, which has no cosine distance to anything")
    return np.ascontiguousarray(matrix)


def cosine_distance(similarity: float) -> float:
    """1 - cosine similarity, clamped to [0, 2]: rounding would otherwise give identical vectors -1e-8."""
    return min(max(1.0 - similarity, 0.0), 2.0)


def missing_collection(name: str) -> ValueError:
    return ValueError(f"collection {name!r} does not exist")


def no_vector() -> np.ndarray:
    """What `Point.vector` holds when vectors were not asked for: an empty float32 array."""
    return np.empty(0, dtype=np.float32)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers and crashes see the old or the new content, never a mix."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` itself durable, not only the file contents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
