"""`ServerStore`: a Qdrant server through qdrant-client, for several processes sharing one store.

Production runs this against the Qdrant server of docker-compose (QDRANT_URL); the
contract tests run it against qdrant-client's local mode (`QdrantClient(":memory:")`),
the same client class without a server.

Collections are cosine, searched exactly (`SearchParams(exact=True)`) up to
`approximate_above` points (`NOMINAL_APPROXIMATE_ABOVE`): Nominal's verdicts depend on
the true nearest neighbours. Above it, searches use the server's HNSW graph over int8
scalar-quantized codes (configured on every collection, `always_ram`) and rescore the
candidates from the original vectors (`QuantizationSearchParams(rescore=True)`), so
scores are exact and only a missed neighbour can differ; the server builds both on its
own cores (`search_params`). Untested against a live server: none runs in CI. Aliases are Qdrant's own (`update_collection_aliases`,
which local mode implements too). Records live in one collection, `nominal_records`,
as payloads of points with a 1-d dummy vector.

Connection failures, timeouts, and authentication refusals become `StoreUnavailable`
naming the URL, so workers can retry them and the CLI can print one line.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from indexing.errors import StoreUnavailable
from indexing.store._common import (
    cosine_distance,
    RECORDS_COLLECTION,
    check_k,
    check_name,
    check_point_id,
    lookup_ids,
    missing_collection,
    no_vector,
    point_matrix,
    query_matrix,
)
from indexing.store.approximate import APPROXIMATE, DEFAULT_APPROXIMATE_ABOVE, EXACT
from indexing.store.base import Neighbour, Point

_EXACT = models.SearchParams(exact=True)
# Above the threshold: the HNSW graph over int8 codes proposes, the original vectors rescore.
_APPROXIMATE = models.SearchParams(
    hnsw_ef=128, quantization=models.QuantizationSearchParams(rescore=True, oversampling=2.0)
)
_QUANTIZATION = models.ScalarQuantization(
    scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
)
# Other processes write too, so a collection's count (which picks the search params) is
# re-read at most this often, besides after this process's own writes.
_COUNT_TTL_S = 30.0
# Fixed forever: record point ids are derived from it, so changing it orphans every stored record.
_RECORDS_NAMESPACE = uuid.UUID("9b0f4a52-3c1e-5d57-8a8e-6f1c0e2b7d41")
_UNAVAILABLE_HTTP = {401, 403, 502, 503, 504}
_UNAVAILABLE_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}


def search_params(count: int, above: int | None) -> models.SearchParams:
    """Exact search at or below `above` points (0 or None: always); above it, HNSW + int8 codes with rescoring."""
    return _APPROXIMATE if above and count > above else _EXACT


class ServerStore:
    """The `VectorStore` on a Qdrant server (or qdrant-client local mode, for tests).

    Thread-safe as far as the client is: the remote client (HTTP or gRPC) may be
    shared by threads; qdrant-client's local mode is meant for tests and gives no
    such promise.
    """

    # Other processes may write to the same server: writers coordinate (indexing/locks.py).
    shared = True

    def __init__(
        self,
        client: QdrantClient,
        *,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        approximate_above: int | None = DEFAULT_APPROXIMATE_ABOVE,
    ) -> None:
        """Args:
            client: a connected `QdrantClient` (server URL, or local mode in tests).
            shard_number, replication_factor: what new collections are created with on a
                distributed Qdrant cluster (None: the server's defaults). Existing
                collections keep theirs; a re-index creates new ones with the new values.
            approximate_above: collections holding more points are searched through HNSW
                and quantized codes with rescoring (`search_params`); 0 or None: always exact.
        """
        self._client = client
        self.approximate_above = approximate_above or None
        self._counts: dict[str, tuple[float, int]] = {}  # collection -> (monotonic time read, count)
        self._shard_number = shard_number
        self._replication_factor = replication_factor
        options = client.init_options
        self._where = options.get("url") or options.get("host") or options.get("path") or options.get("location")
        self._dims: dict[str, int] = {}
        self._records_ready = False

    @classmethod
    def connect(
        cls,
        url: str,
        api_key: str | None = None,
        *,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        approximate_above: int | None = DEFAULT_APPROXIMATE_ABOVE,
    ) -> ServerStore:
        """A store on the Qdrant server at `url`. Connects lazily: an unreachable server shows on first use."""
        return cls(
            QdrantClient(url=url, api_key=api_key), shard_number=shard_number,
            replication_factor=replication_factor, approximate_above=approximate_above,
        )

    def __enter__(self) -> ServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerStore({self._where!r})"

    # Collections

    def create_collection(self, name: str, dim: int) -> None:
        """Create an empty cosine collection of `dim`-d vectors.

        Raises:
            ValueError: the collection exists already, or `dim` is not positive.
            InvalidName: `name` is not a usable name.
        """
        check_name(name, "collection")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if self._exists(name):
            raise ValueError(f"collection {name!r} already exists")
        with self._calls():
            self._client.create_collection(
                name,
                vectors_config=models.VectorParams(size=int(dim), distance=models.Distance.COSINE),
                quantization_config=_QUANTIZATION,
                shard_number=self._shard_number,
                replication_factor=self._replication_factor,
            )
        self._dims[name] = int(dim)

    def delete_collection(self, name: str) -> None:
        """Delete a collection and the aliases pointing at it (Qdrant does both); a missing one is not an error."""
        check_name(name, "collection")
        self._dims.pop(name, None)
        self._counts.pop(name, None)
        with self._calls():
            try:
                self._client.delete_collection(name)
            except UnexpectedResponse as exc:
                if exc.status_code != 404:
                    raise

    def collections(self) -> list[str]:
        with self._calls():
            names = [c.name for c in self._client.get_collections().collections]
        return sorted(n for n in names if n != RECORDS_COLLECTION)

    # Points

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Insert or overwrite points by id; applied (wait=True) when this returns.

        Raises:
            ValueError: missing collection, a non-UUID id, or a vector of the wrong
                dimension, non-finite or all zeros (nothing is written then).
        """
        dim = self._dim(collection)
        if not points:
            return
        matrix = point_matrix(points, dim, collection)
        batch = models.Batch(
            ids=[check_point_id(p.id) for p in points],
            vectors=matrix.tolist(),
            payloads=[dict(p.payload) for p in points],
        )
        with self._calls(collection):
            self._client.upsert(collection, points=batch, wait=True)
        self._counts.pop(collection, None)

    def search(self, collection: str, vectors: np.ndarray, k: int) -> list[list[Neighbour]]:
        """Exact top-k for each row of `vectors` (n, d), nearest first; min(k, count) hits per row.

        Raises:
            ValueError: missing collection, `vectors` not (n, dim), non-finite or zero
                rows, or k < 1.
        """
        k = check_k(k)
        matrix = query_matrix(vectors, self._dim(collection), collection)
        params = search_params(self._count(collection), self.approximate_above) if self.approximate_above else _EXACT
        requests = [
            models.QueryRequest(query=row, limit=k, params=params, with_payload=True) for row in matrix.tolist()
        ]
        if not requests:
            return []
        with self._calls(collection):
            responses = self._client.query_batch_points(collection, requests=requests)
        return [[_neighbour(hit) for hit in response.points] for response in responses]

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        """The points that exist among `ids`, in the order asked (missing and non-UUID ids skipped).

        Without `with_vectors`, each `Point.vector` is an empty float32 array.
        """
        wanted = lookup_ids(ids)
        self._dim(collection)  # a missing collection is an error even when no ids are asked for
        if not wanted:
            return []
        with self._calls(collection):
            records = self._client.retrieve(
                collection, ids=list(dict.fromkeys(wanted)), with_payload=True, with_vectors=with_vectors
            )
        found = {str(r.id): _point(r, with_vectors) for r in records}
        return [found[i] for i in wanted if i in found]

    def scroll(self, collection: str, *, with_vectors: bool = False, batch_size: int = 1024) -> Iterator[Point]:
        """Every point of a collection, in id order, fetched `batch_size` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        offset: Any = None
        while True:
            with self._calls(collection):
                records, offset = self._client.scroll(
                    collection, limit=batch_size, offset=offset, with_payload=True, with_vectors=with_vectors
                )
            for record in records:
                yield _point(record, with_vectors)
            if offset is None:
                return

    def delete_points(self, collection: str, ids: Sequence[str]) -> None:
        """Delete points by id; missing and non-UUID ids are ignored."""
        doomed = lookup_ids(ids)
        self._dim(collection)
        if doomed:
            with self._calls(collection):
                self._client.delete(collection, points_selector=models.PointIdsList(points=doomed), wait=True)
            self._counts.pop(collection, None)

    def count(self, collection: str) -> int:
        check_name(collection, "collection")
        with self._calls(collection):
            return self._client.count(collection, exact=True).count

    def search_mode(self, collection: str) -> str:
        """"approximate" when searches use HNSW + quantized codes with rescoring (above the threshold), else "exact"."""
        return APPROXIMATE if search_params(self._count(collection), self.approximate_above) is _APPROXIMATE else EXACT

    def prepare_search(self, collection: str) -> str:
        """The search mode; the server builds its HNSW graph and codes itself, in the background."""
        return self.search_mode(collection)

    def _count(self, collection: str) -> int:
        """The collection's count, re-read after this process's writes or `_COUNT_TTL_S` (others write too)."""
        cached = self._counts.get(collection)
        if cached is not None and time.monotonic() - cached[0] < _COUNT_TTL_S:
            return cached[1]
        count = self.count(collection)
        self._counts[collection] = (time.monotonic(), count)
        return count

    # Aliases

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one atomic step (creating or moving it).

        Raises:
            ValueError: the collection does not exist, or `alias` is itself a
                collection name.
        """
        check_name(alias, "alias")
        check_name(collection, "collection")
        with self._calls():
            # Listed, not collection_exists(): that also answers True for an alias.
            names = {c.name for c in self._client.get_collections().collections}
        if collection not in names:
            raise missing_collection(collection)
        if alias in names:
            raise ValueError(f"alias {alias!r} would hide the collection of the same name: choose another")
        with self._calls(collection):
            # One request, applied by the server under its alias lock: no reader ever
            # sees the alias missing or half-moved.
            self._client.update_collection_aliases(
                change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)),
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
                    ),
                ]
            )

    def resolve_alias(self, alias: str) -> str | None:
        check_name(alias, "alias")
        with self._calls():
            aliases = self._client.get_aliases().aliases
        return next((a.collection_name for a in aliases if a.alias_name == alias), None)

    def delete_alias(self, alias: str) -> None:
        check_name(alias, "alias")
        with self._calls():
            delete = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            self._client.update_collection_aliases(change_aliases_operations=[delete])

    # Records

    def put_record(self, kind: str, key: str, record: dict[str, Any]) -> None:
        """Store a JSON document under (kind, key), replacing any previous one atomically (one point upsert).

        Raises:
            TypeError: `record` is not JSON-serialisable (nothing is written then).
        """
        point_id = _record_id(kind, key)
        # A JSON string, not payload fields: the document stays opaque to Qdrant, so its
        # own fields never mix with the kind/key fields we filter on.
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
        self._ensure_records()
        point = models.PointStruct(id=point_id, vector=[1.0], payload={"kind": kind, "key": key, "record": text})
        with self._calls():
            self._client.upsert(RECORDS_COLLECTION, points=[point], wait=True)

    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        point_id = _record_id(kind, key)
        if not self._records_exist():
            return None
        with self._calls():
            found = self._client.retrieve(RECORDS_COLLECTION, ids=[point_id], with_payload=True)
        return json.loads(found[0].payload["record"]) if found else None

    def list_records(self, kind: str) -> list[dict[str, Any]]:
        """Every document of a kind, ordered by key (plain string order)."""
        check_name(kind, "record kind")
        if not self._records_exist():
            return []
        only_kind = models.Filter(must=[models.FieldCondition(key="kind", match=models.MatchValue(value=kind))])
        payloads: list[dict[str, Any]] = []
        offset: Any = None
        while True:
            with self._calls():
                batch, offset = self._client.scroll(
                    RECORDS_COLLECTION, scroll_filter=only_kind, limit=256, offset=offset, with_payload=True
                )
            payloads.extend(r.payload for r in batch)
            if offset is None:
                break
        return [json.loads(p["record"]) for p in sorted(payloads, key=lambda p: p["key"])]

    def delete_record(self, kind: str, key: str) -> None:
        point_id = _record_id(kind, key)
        if not self._records_exist():
            return
        with self._calls():
            self._client.delete(RECORDS_COLLECTION, points_selector=models.PointIdsList(points=[point_id]), wait=True)

    def close(self) -> None:
        self._client.close()

    # Internals

    def _dim(self, collection: str) -> int:
        """The collection's vector size, asked once and cached: upserts and searches are checked locally."""
        check_name(collection, "collection")
        dim = self._dims.get(collection)
        if dim is None:
            with self._calls(collection):
                params = self._client.get_collection(collection).config.params.vectors
            dim = self._dims[collection] = params.size
        return dim

    def _exists(self, collection: str) -> bool:
        with self._calls():
            return self._client.collection_exists(collection)

    def _records_exist(self) -> bool:
        if not self._records_ready:
            self._records_ready = self._exists(RECORDS_COLLECTION)
        return self._records_ready

    def _ensure_records(self) -> None:
        if self._records_exist():
            return
        with self._calls():
            try:
                self._client.create_collection(
                    RECORDS_COLLECTION, vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT)
                )
                self._client.create_payload_index(RECORDS_COLLECTION, "kind", models.PayloadSchemaType.KEYWORD)
            except (UnexpectedResponse, grpc.RpcError, ValueError):
                # Another process may have created it between our check and our create.
                if not self._client.collection_exists(RECORDS_COLLECTION):
                    raise
        self._records_ready = True

    @contextmanager
    def _calls(self, collection: str | None = None) -> Iterator[None]:
        """Translate the client's failures once: unreachable -> StoreUnavailable, missing collection -> ValueError."""
        try:
            yield
        except (ResponseHandlingException, httpx.TransportError) as exc:
            raise self._unavailable(getattr(exc, "source", exc)) from exc
        except UnexpectedResponse as exc:
            if exc.status_code in _UNAVAILABLE_HTTP:
                raise self._unavailable(f"HTTP {exc.status_code} {exc.reason_phrase}") from exc
            self._raise_if_missing(collection, exc)
            raise
        except grpc.RpcError as exc:
            if exc.code() in _UNAVAILABLE_GRPC:  # type: ignore[attr-defined]
                raise self._unavailable(exc.details()) from exc  # type: ignore[attr-defined]
            self._raise_if_missing(collection, exc)
            raise
        except ValueError as exc:
            # qdrant-client's local mode reports a missing collection as ValueError("... not found").
            self._raise_if_missing(collection, exc)
            raise

    def _raise_if_missing(self, collection: str | None, cause: Exception) -> None:
        if collection is None:
            return
        if not self._exists(collection):
            self._dims.pop(collection, None)
            raise missing_collection(collection) from cause

    def _unavailable(self, reason: object) -> StoreUnavailable:
        return StoreUnavailable(
            f"Qdrant at {self._where} is unavailable ({reason}): check that the server is running, "
            "that QDRANT_URL points at it and, if it needs one, QDRANT_API_KEY"
        )


def _record_id(kind: str, key: str) -> str:
    check_name(kind, "record kind")
    check_name(key, "record key")
    return str(uuid.uuid5(_RECORDS_NAMESPACE, f"{kind}/{key}"))


def _neighbour(hit: Any) -> Neighbour:
    return Neighbour(id=str(hit.id), distance=cosine_distance(hit.score), payload=hit.payload or {})


def _point(record: Any, with_vectors: bool) -> Point:
    vector = np.asarray(record.vector, dtype=np.float32) if with_vectors else no_vector()
    return Point(id=str(record.id), vector=vector, payload=record.payload or {})
