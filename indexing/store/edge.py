"""`EdgeStore`: the embedded default, Qdrant's own Rust engine (qdrant-edge) running in-process.

One data directory holds everything one Nominal installation knows:

    <path>/.lock                       held (flock) by the one process that owns the store
    <path>/collections/<name>/         one EdgeShard per collection, plus meta.json {"dim": ...}
    <path>/aliases.json                {"alias": "collection", ...}
    <path>/records/<kind>/<key>.json   one JSON document per record

Vectors are made durable by the engine's write-ahead log plus a flush after every write;
every metadata file is replaced atomically (temp file, fsync, rename), and a collection
appears or disappears by renaming its directory, so a process killed at any point
leaves the old state or the new one, never half of either.

When not to use it: more than one process needs the store (an API and separate
Celery workers, several API replicas). The directory is locked to one process; run a
Qdrant server and set QDRANT_URL instead.

Searches are exact (brute force, `SearchParams(exact=True)`) up to `approximate_above`
points in a collection (`NOMINAL_APPROXIMATE_ABOVE`, default 100,000). Above it, the
first search builds a faiss IVF-SQ8 index that proposes max(50, 5k) candidates, and the
engine's exact search restricted to those ids scores them, so distances stay the exact
ones (`indexing/store/approximate.py`). The index is kept in step with writes, saved
beside the shard (`approximate.json` names the files) and reopened on the next start,
or rebuilt when writes came after its last save (a crash). The engine's own HNSW is
never triggered: building it took 18 minutes at 100k x 2048-d here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from indexing.errors import StoreUnavailable
from indexing.store.approximate import DEFAULT_APPROXIMATE_ABOVE, Switch, candidate_count
from indexing.store._common import (
    cosine_distance,
    check_k,
    fsync_dir,
    write_atomic,
    check_name,
    check_point_id,
    lookup_ids,
    missing_collection,
    no_vector,
    point_matrix,
    query_matrix,
)
from indexing.store.base import Neighbour, Point

log = logging.getLogger(__name__)

_EXACT = qe.SearchParams(exact=True)


class EdgeStore:
    """The embedded `VectorStore`: one data directory, owned by one process.

    Thread-safe: the engine itself serves concurrent queries and writes (and releases
    the GIL while it works), so searches run in parallel; a reader-writer lock only
    keeps `delete_collection` and `close` from pulling a shard out from under a search
    in flight.

    Raises:
        StoreUnavailable: another process (or another EdgeStore in this one) has the
            directory open.
    """

    # One process owns the directory: nothing else writes to it.
    shared = False

    def __init__(self, path: str | Path, *, approximate_above: int | None = DEFAULT_APPROXIMATE_ABOVE) -> None:
        """Args:
            path: the data directory (created if needed).
            approximate_above: collections holding more points than this are searched through
                an approximate candidate index with exact rescoring; 0 or None: always exact.
        """
        self.path = Path(path).resolve()
        self.approximate_above = approximate_above or None
        self._collections_dir = self.path / "collections"
        self._records_dir = self.path / "records"
        self._aliases_file = self.path / "aliases.json"
        self._collections_dir.mkdir(parents=True, exist_ok=True)
        self._records_dir.mkdir(exist_ok=True)
        self._lock_fd = _lock_directory(self.path)

        self._rw = _ReadWriteLock()
        self._meta_lock = threading.Lock()  # serialises writes of aliases.json and records
        self._open_lock = threading.Lock()  # serialises lazy opening of shards
        self._shards: dict[str, qe.EdgeShard] = {}
        self._switches: dict[str, Switch] = {}  # beside each open shard: its search mode
        self._closed = False
        try:
            _remove_leftovers(self._collections_dir, self._records_dir, self.path)
            self._dims = self._read_dims()
            self._aliases: dict[str, str] = _read_json(self._aliases_file, default={})
        except BaseException:
            os.close(self._lock_fd)
            raise

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.path)!r})"

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
        dim = int(dim)
        with self._rw.write():
            self._check_open()
            if name in self._dims:
                raise ValueError(f"collection {name!r} already exists")
            # Built aside and renamed into place, so a crash never leaves a collection
            # without its meta.json (leftovers are swept on the next open).
            staging = self._collections_dir / f".creating-{name}-{uuid.uuid4().hex}"
            config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine))
            qe.EdgeShard.create(str(staging), config).close()
            _write_json_atomic(staging / "meta.json", {"dim": dim})
            os.rename(staging, self._collections_dir / name)
            fsync_dir(self._collections_dir)
            self._dims = {**self._dims, name: dim}

    def delete_collection(self, name: str) -> None:
        """Delete a collection, its vectors and the aliases pointing at it; a missing one is not an error.

        Waits for searches in flight to finish first.
        """
        check_name(name, "collection")
        with self._rw.write():
            self._check_open()
            if name not in self._dims:
                return
            # Aliases go first, so no alias is ever left naming a collection that is gone.
            with self._meta_lock:
                if name in self._aliases.values():
                    self._write_aliases({a: c for a, c in self._aliases.items() if c != name})
            shard = self._shards.pop(name, None)
            self._switches.pop(name, None)
            if shard is not None:
                shard.close()
            trash = self._collections_dir / f".deleting-{uuid.uuid4().hex}"
            os.rename(self._collections_dir / name, trash)
            fsync_dir(self._collections_dir)
            self._dims = {k: v for k, v in self._dims.items() if k != name}
            shutil.rmtree(trash, ignore_errors=True)

    def collections(self) -> list[str]:
        self._check_open()
        return sorted(self._dims)

    # Points

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Insert or overwrite points by id; durable (written and flushed) when this returns.

        Raises:
            ValueError: missing collection, a non-UUID id, or a vector of the wrong
                dimension, non-finite or all zeros (nothing is written then).
        """
        with self._rw.read():
            shard, dim = self._shard(collection)
            if not points:
                return
            matrix = point_matrix(points, dim, collection)
            ids = [check_point_id(p.id) for p in points]
            # Lists, not numpy rows: the binding converts Python lists far faster.
            rows = matrix.tolist()
            switch = self._switches[collection]
            with switch.lock:  # an approximate index being built sees this write, or gets it from `wrote`
                shard.update(
                    qe.UpdateOperation.upsert_points(
                        [qe.Point(i, row, dict(p.payload)) for i, row, p in zip(ids, rows, points)]
                    )
                )
                # The WAL alone survives SIGKILL; the flush makes the write survive power loss
                # too, and keeps the WAL short, so reopening does not replay it (0.8 s instead
                # of about 7 s at 100k x 2048-d) for about a third of the upsert rate.
                shard.flush()
                switch.wrote(ids, matrix)

    def search(self, collection: str, vectors: np.ndarray, k: int) -> list[list[Neighbour]]:
        """Top-k for each row of `vectors` (n, d), nearest first, with exact distances.

        Returns one list per query row; each holds min(k, count) neighbours, so an
        empty collection gives empty lists. `distance` is the cosine distance
        (1 - cosine similarity, 0 for identical directions). Above `approximate_above`
        points the candidates come from the approximate index (`search_mode`), and are
        scored exactly; a query whose candidates come up short is searched exactly.

        Raises:
            ValueError: missing collection, `vectors` not (n, dim), non-finite or zero
                rows, or k < 1.
        """
        k = check_k(k)
        with self._rw.read():
            shard, dim = self._shard(collection)
            matrix = query_matrix(vectors, dim, collection)
            if not len(matrix):
                return []
            rows = matrix.tolist()
            switch = self._switches[collection]
            # A build under way on another thread (`prepare_search`, or an earlier search) is not
            # waited for: this search is answered exactly meanwhile.
            index = switch.ensure(partial(_count, shard), partial(_vector_batches, shard), wait=False)
            count = switch.count(partial(_count, shard))
            if index is None or candidate_count(k) >= count:
                return _query(shard, [_request(row, k) for row in rows])
            proposed = index.candidates(matrix, candidate_count(k))
            found = _query(shard, [_request(row, k, ids) for row, ids in zip(rows, proposed)])
            # Rescoring drops ids deleted meanwhile; a query left with fewer than its
            # min(k, count) neighbours is answered exactly, so the contract holds.
            short = [i for i, hits in enumerate(found) if len(hits) < min(k, count)]
            if short:
                for i, hits in zip(short, _query(shard, [_request(rows[i], k) for i in short])):
                    found[i] = hits
            return found

    def search_mode(self, collection: str) -> str:
        """How searches of `collection` are answered now: "exact", or "approximate" (candidates rescored exactly)."""
        with self._rw.read():
            self._shard(collection)
            return self._switches[collection].mode

    def prepare_search(self, collection: str) -> str:
        """Build the approximate index now if the collection is above the threshold (so no search waits); the mode."""
        with self._rw.read():
            shard, _ = self._shard(collection)
            self._switches[collection].ensure(partial(_count, shard), partial(_vector_batches, shard))
            return self._switches[collection].mode

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        """The points that exist among `ids`, in the order asked (missing and non-UUID ids skipped).

        Without `with_vectors`, each `Point.vector` is an empty float32 array.
        """
        wanted = lookup_ids(ids)
        with self._rw.read():
            shard, _ = self._shard(collection)
            if not wanted:
                return []
            records = shard.retrieve(list(dict.fromkeys(wanted)), with_payload=True, with_vector=with_vectors)
        found = {str(r.id): _point(r, with_vectors) for r in records}
        return [found[i] for i in wanted if i in found]

    def scroll(self, collection: str, *, with_vectors: bool = False, batch_size: int = 1024) -> Iterator[Point]:
        """Every point of a collection, in id order, fetched `batch_size` at a time.

        The lock is held per batch, not across the generator, so a slow consumer never
        blocks `delete_collection`; deleting the collection mid-scroll ends it with
        ValueError.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        offset: Any = None
        while True:
            with self._rw.read():
                shard, _ = self._shard(collection)
                records, offset = shard.scroll(
                    qe.ScrollRequest(offset=offset, limit=batch_size, with_payload=True, with_vector=with_vectors)
                )
            for record in records:
                yield _point(record, with_vectors)
            if offset is None:
                return

    def delete_points(self, collection: str, ids: Sequence[str]) -> None:
        """Delete points by id; missing and non-UUID ids are ignored. Durable when this returns."""
        doomed = lookup_ids(ids)
        with self._rw.read():
            shard, _ = self._shard(collection)
            if doomed:
                switch = self._switches[collection]
                with switch.lock:
                    shard.update(qe.UpdateOperation.delete_points(doomed))
                    shard.flush()
                    switch.deleted(doomed)

    def count(self, collection: str) -> int:
        with self._rw.read():
            shard, _ = self._shard(collection)
            return shard.count(qe.CountRequest(exact=True))

    # Aliases

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one atomic step (creating or moving it).

        Raises:
            ValueError: the collection does not exist, or `alias` is itself a
                collection name.
        """
        check_name(alias, "alias")
        check_name(collection, "collection")
        # The read lock keeps the collection from being deleted between the check and the write.
        with self._rw.read(), self._meta_lock:
            self._check_open()
            if collection not in self._dims:
                raise missing_collection(collection)
            if alias in self._dims:
                raise ValueError(f"alias {alias!r} would hide the collection of the same name: choose another")
            self._write_aliases({**self._aliases, alias: collection})

    def resolve_alias(self, alias: str) -> str | None:
        check_name(alias, "alias")
        self._check_open()
        return self._aliases.get(alias)

    def delete_alias(self, alias: str) -> None:
        check_name(alias, "alias")
        with self._meta_lock:
            self._check_open()
            if alias in self._aliases:
                self._write_aliases({a: c for a, c in self._aliases.items() if a != alias})

    # Records

    def put_record(self, kind: str, key: str, record: dict[str, Any]) -> None:
        """Store a JSON document under (kind, key), replacing any previous one atomically.

        Raises:
            TypeError: `record` is not JSON-serialisable (nothing is written then).
        """
        path = self._record_path(kind, key)
        data = json.dumps(record, ensure_ascii=False, allow_nan=False)
        with self._meta_lock:
            self._check_open()
            if not path.parent.exists():
                path.parent.mkdir()
                fsync_dir(self._records_dir)
            write_atomic(path, data.encode())

    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self._record_path(kind, key)
        self._check_open()
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None

    def list_records(self, kind: str) -> list[dict[str, Any]]:
        """Every document of a kind, ordered by key (plain string order)."""
        folder = self._records_dir / check_name(kind, "record kind")
        self._check_open()
        if not folder.is_dir():
            return []
        records = []
        for path in sorted(folder.glob("*.json"), key=lambda p: p.stem):
            try:
                records.append(json.loads(path.read_bytes()))
            except FileNotFoundError:  # deleted by another thread while we listed
                continue
        return records

    def delete_record(self, kind: str, key: str) -> None:
        path = self._record_path(kind, key)
        with self._meta_lock:
            self._check_open()
            try:
                path.unlink()
            except FileNotFoundError:
                return
            fsync_dir(path.parent)

    def close(self) -> None:
        """Close every shard and release the directory lock; waits for searches in flight. Idempotent."""
        with self._rw.write():
            if self._closed:
                return
            self._closed = True
            shards, self._shards = self._shards, {}
            switches, self._switches = self._switches, {}
            try:
                for switch in switches.values():
                    switch.close()  # saves an approximate index written to since its last save
                for shard in shards.values():
                    shard.close()
            finally:
                os.close(self._lock_fd)

    # Internals

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _shard(self, name: str) -> tuple[qe.EdgeShard, int]:
        """The open shard of a collection and its dimension; call with the read or write lock held."""
        self._check_open()
        dim = self._dims.get(name)
        if dim is None:
            check_name(name, "collection")
            raise missing_collection(name)
        shard = self._shards.get(name)
        if shard is None:
            with self._open_lock:
                shard = self._shards.get(name)
                if shard is None:
                    # Loading replays the WAL, which may take seconds on a large collection.
                    shard = qe.EdgeShard.load(str(self._collections_dir / name))
                    self._switches[name] = Switch(self._collections_dir / name, self.approximate_above)
                    self._shards[name] = shard
        return shard, dim

    def _read_dims(self) -> dict[str, int]:
        dims = {}
        for folder in self._collections_dir.iterdir():
            if folder.name.startswith("."):
                continue
            meta = _read_json(folder / "meta.json", default=None)
            if meta is None:
                log.warning("ignoring %s: it has no meta.json, so it is not a Nominal collection", folder)
                continue
            dims[folder.name] = int(meta["dim"])
        return dims

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        """Persist first, then publish: readers never see an alias that is not on disk."""
        _write_json_atomic(self._aliases_file, aliases)
        self._aliases = aliases

    def _record_path(self, kind: str, key: str) -> Path:
        return self._records_dir / check_name(kind, "record kind") / f"{check_name(key, 'record key')}.json"


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers so it cannot starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _request(row: list[float], k: int, ids: list[str] | None = None) -> qe.QueryRequest:
    """An exact top-k query; with `ids`, restricted to those points (the rescoring of candidates)."""
    restrict = None if ids is None else qe.Filter(must=[qe.HasIdCondition(set(ids))])
    return qe.QueryRequest(limit=k, query=qe.Query.Nearest(row), with_payload=True, params=_EXACT, filter=restrict)


def _query(shard: qe.EdgeShard, requests: list[qe.QueryRequest]) -> list[list[Neighbour]]:
    if len(requests) == 1:
        results = [shard.query(requests[0])]
    else:
        results = shard.query_batch(qe.QueryBatchRequest(requests))
    return [[_neighbour(hit) for hit in hits] for hits in results]


def _count(shard: qe.EdgeShard) -> int:
    return shard.count(qe.CountRequest(exact=True))


def _vector_batches(shard: qe.EdgeShard, size: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
    """Every point's id and float32 vector, `size` at a time, for building the approximate index."""
    offset: Any = None
    while True:
        records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=size, with_payload=False, with_vector=True))
        if records:
            yield [str(r.id) for r in records], np.asarray([r.vector for r in records], dtype=np.float32)
        if offset is None:
            return


def _neighbour(hit: Any) -> Neighbour:
    return Neighbour(id=str(hit.id), distance=cosine_distance(hit.score), payload=hit.payload or {})


def _point(record: Any, with_vectors: bool) -> Point:
    vector = np.asarray(record.vector, dtype=np.float32) if with_vectors else no_vector()
    return Point(id=str(record.id), vector=vector, payload=record.payload or {})


def _lock_directory(path: Path) -> int:
    """Take the directory's flock, or raise StoreUnavailable saying who holds it and what to do.

    flock (not lockf) because flock locks belong to the open file, so a second
    EdgeStore in the same process is refused too, not only another process. The
    engine's own WAL lock would also refuse, but with "Can't init WAL: WouldBlock".
    """
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise StoreUnavailable(
            f"the embedded store {path} is already open (held by process {holder}): one process owns "
            "the embedded store; stop the other `nominal` process, or run a Qdrant server and set "
            "QDRANT_URL so several processes can share it"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _remove_leftovers(collections_dir: Path, records_dir: Path, root: Path) -> None:
    """Sweep what a killed process left half-done: staged or doomed collections, temp files."""
    for folder in collections_dir.iterdir():
        if folder.name.startswith((".creating-", ".deleting-")):
            shutil.rmtree(folder, ignore_errors=True)
    for temp in [*root.glob(".*.tmp"), *records_dir.glob("*/.*.tmp")]:
        temp.unlink(missing_ok=True)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return default


def _write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode())
