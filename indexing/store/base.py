"""The vector-store surface Nominal needs, declared once and implemented twice.

`EdgeStore` (embedded, the default: Qdrant's own engine in-process) and
`ServerStore` (a Qdrant server through qdrant-client) both satisfy `VectorStore`;
`tests/integration/test_store_contract.py` runs every scenario against both.

Only our own types cross this boundary. Distances are cosine distances
(1 - cosine similarity, clamped to [0, 2]), smaller is closer. Distances are always
exact; above `approximate_above` points (NOMINAL_APPROXIMATE_ABOVE) the candidates come
from an approximate index, so a neighbour it misses can be missing (`search_mode`).

Both implementations behave the same way (the contract test holds them to it):

- Names of collections, aliases, record kinds and record keys: 1-200 letters,
  digits, '_', '-', '.', starting with a letter or digit; "nominal_records" is
  reserved. Anything else raises `indexing.errors.InvalidName`.
- Any operation on a collection that does not exist raises
  `ValueError("collection 'x' does not exist")`; so do vectors of the wrong
  dimension, NaN/inf or all-zero vectors, and k < 1.
- A store that cannot be reached or opened raises `indexing.errors.StoreUnavailable`
  (server down or refusing the API key; embedded directory owned by another process).
- Point ids are UUID strings and come back in canonical lowercase form.
- Both may be called from several threads at once (`ServerStore` as far as its
  client allows: the remote client does; qdrant-client's local mode is for tests).

A collection is one version of one machine setting's nominal vectors; an alias
names the active version, so a re-index can build a new version and switch in
one step. Records (settings, calibrations, version metadata) are small JSON
documents kept by the same store, so they live and die with the vectors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Point:
    """One stored vector. `id` is a UUID string; `vector` is float32, L2-normalised."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Neighbour:
    """A search hit: the point id, its cosine distance to the query, and its payload."""

    id: str
    distance: float
    payload: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Vectors(Protocol):
    """Collections of vectors and the aliases naming them: what search and indexing use."""

    def create_collection(self, name: str, dim: int) -> None:
        """Create an empty cosine collection of `dim`-d vectors; ValueError if it exists."""

    def delete_collection(self, name: str) -> None:
        """Delete a collection, its vectors and the aliases pointing at it; a missing one is not an error."""

    def collections(self) -> list[str]:
        """Names of all collections, sorted."""

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Insert or overwrite points by id; durable when this returns.

        The whole batch is checked first (UUID ids, dimension, finite, non-zero): a bad
        point raises ValueError and nothing is written.
        """

    def search(self, collection: str, vectors: np.ndarray, k: int) -> list[list[Neighbour]]:
        """Top-k for each row of `vectors` (n, d), nearest first, with exact distances.

        One list per row, each of min(k, count) neighbours: k larger than the
        collection returns every point, an empty collection returns empty lists.
        Exact at or below the store's `approximate_above` points; above it the
        candidates come from an approximate index and are rescored exactly.
        """

    def search_mode(self, collection: str) -> str:
        """How searches of `collection` are answered now: "exact" or "approximate" (candidates rescored exactly)."""

    def prepare_search(self, collection: str) -> str:
        """Make the collection ready to search (build its approximate index if it is above the threshold); the mode."""

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        """The points that exist among `ids`, in the order asked (missing and non-UUID ids skipped).

        Without `with_vectors`, each `Point.vector` is an empty float32 array.
        """

    def scroll(self, collection: str, *, with_vectors: bool = False, batch_size: int = 1024) -> Iterator[Point]:
        """Every point of a collection exactly once, fetched in batches, for export and for loading patch banks."""

    def delete_points(self, collection: str, ids: Sequence[str]) -> None:
        """Delete points by id; missing and non-UUID ids are ignored."""

    def count(self, collection: str) -> int:
        """Number of points in a collection."""

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one atomic step (creating or moving it).

        ValueError if the collection does not exist or `alias` is a collection's name.
        """

    def resolve_alias(self, alias: str) -> str | None:
        """The collection an alias points at, or None."""

    def delete_alias(self, alias: str) -> None:
        """Remove an alias; a missing one is not an error."""



@runtime_checkable
class Records(Protocol):
    """Small JSON documents by (kind, key): settings, versions, calibrations, labels, jobs."""

    def put_record(self, kind: str, key: str, record: dict[str, Any]) -> None:
        """Store a JSON-serialisable document under (kind, key), replacing any previous one atomically.

        TypeError (and nothing written) if the document is not JSON-serialisable.
        """

    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        """The document stored under (kind, key), or None."""

    def list_records(self, kind: str) -> list[dict[str, Any]]:
        """Every document of a kind, ordered by key (plain string order)."""

    def delete_record(self, kind: str, key: str) -> None:
        """Remove a document; a missing one is not an error."""



@runtime_checkable
class VectorStore(Vectors, Records, Protocol):
    """Both, in one store, so records live and die with the vectors; what a process opens.

    The parts of Nominal that need only one side take only that side (`StoreJobBoard`
    takes `Records`; `PatchIndex` and bank loading take `Vectors`).
    """

    # True when other processes may write to the same store (a Qdrant server), so writers
    # must coordinate; False for the embedded store, which one process owns.
    shared: bool

    def close(self) -> None:
        """Release files, locks and connections."""
