"""The `VectorStore` contract: every scenario runs against both stores and must hold for both.

`EdgeStore` runs in `tmp_path`; `ServerStore` runs on qdrant-client's local mode
(`QdrantClient(":memory:")`), the same client class production points at a server.
Exact search is checked against a numpy brute-force oracle. The embedded store's
own promises (persistence, the one-process lock, surviving SIGKILL, thread safety)
are tested at the end.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from indexing.errors import InvalidName, StoreUnavailable
from indexing.store import EdgeStore, Neighbour, Point, ServerStore, VectorStore, open_store

# qdrant-client's local mode warns that it ignores search params and payload indexes
# (both right for a real server, irrelevant to the stand-in); the unreachable-server
# test makes it warn that it could not ask the server's version.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect"),
    pytest.mark.filterwarnings("ignore:Failed to obtain server version"),
]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    opened: VectorStore
    if request.param == "edge":
        opened = EdgeStore(tmp_path / "store")
    else:
        opened = ServerStore(QdrantClient(":memory:"))
    yield opened
    opened.close()


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_points(vectors: np.ndarray, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    return [
        Point(id=str(uuid.UUID(bytes=rng.bytes(16), version=4)), vector=v, payload={"row": i})
        for i, v in enumerate(vectors)
    ]


def filled(store: VectorStore, name: str = "parts", n: int = 50, dim: int = 16, seed: int = 0) -> list[Point]:
    points = make_points(unit_vectors(n, dim, seed), seed)
    store.create_collection(name, dim)
    store.upsert(name, points)
    return points


# Search


def test_exact_search_matches_brute_force_oracle(store: VectorStore) -> None:
    points = filled(store, n=500, dim=64, seed=1)
    stored = np.stack([p.vector for p in points])
    queries = np.vstack([unit_vectors(6, 64, seed=2), stored[[7, 123]]])
    k = 10

    results = store.search("parts", queries, k)

    distances = 1.0 - queries @ stored.T
    assert len(results) == len(queries)
    for row, hits in enumerate(results):
        expected = np.argsort(distances[row], kind="stable")[:k]
        assert [h.id for h in hits] == [points[i].id for i in expected]
        np.testing.assert_allclose([h.distance for h in hits], distances[row, expected], atol=1e-5)
        assert [h.payload for h in hits] == [{"row": int(i)} for i in expected]
    # A stored vector finds itself first, at distance zero.
    assert results[6][0].id == points[7].id and results[6][0].distance == pytest.approx(0.0, abs=1e-6)


def test_k_larger_than_collection_returns_every_point_nearest_first(store: VectorStore) -> None:
    points = filled(store, n=5)
    [hits] = store.search("parts", unit_vectors(1, 16, seed=9), k=50)
    assert sorted(h.id for h in hits) == sorted(p.id for p in points)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)


def test_empty_collection_gives_one_empty_list_per_query(store: VectorStore) -> None:
    store.create_collection("empty", 8)
    assert store.search("empty", unit_vectors(3, 8, seed=0), k=5) == [[], [], []]
    assert store.count("empty") == 0


def test_search_rejects_queries_of_the_wrong_shape(store: VectorStore) -> None:
    filled(store, dim=16)
    with pytest.raises(ValueError, match="16-d"):
        store.search("parts", unit_vectors(2, 8, seed=0), k=3)
    with pytest.raises(ValueError, match="2-d"):
        store.search("parts", unit_vectors(1, 16, seed=0)[0], k=3)
    with pytest.raises(ValueError, match="k must be"):
        store.search("parts", unit_vectors(1, 16, seed=0), k=0)


# Points


def test_upserting_an_id_again_overwrites_vector_and_payload(store: VectorStore) -> None:
    store.create_collection("parts", 4)
    point_id = str(uuid.uuid4())
    store.upsert("parts", [Point(point_id, np.array([1, 0, 0, 0], np.float32), {"version": 1})])
    store.upsert("parts", [Point(point_id, np.array([0, 1, 0, 0], np.float32), {"version": 2})])

    assert store.count("parts") == 1
    [hit] = store.search("parts", np.array([[0, 1, 0, 0]], np.float32), k=5)[0]
    assert (hit.id, hit.payload) == (point_id, {"version": 2})
    assert hit.distance == pytest.approx(0.0, abs=1e-6)


def test_payload_round_trips_through_retrieve_search_and_scroll(store: VectorStore) -> None:
    payload = {
        "image": "line-3/cam 2/Ünïcode ✓.png",
        "index": 2**40 + 7,
        "negative": -3,
        "score": 0.125,
        "flag": True,
        "nothing": None,
        "tags": ["a", 1, 2.5, None],
        "nested": {"box": [1, 2, 3, 4], "inner": {"deep": "yes"}, "empty": {}},
    }
    store.create_collection("parts", 4)
    point_id = str(uuid.uuid4())
    store.upsert("parts", [Point(point_id, np.array([1, 2, 3, 4], np.float32), payload)])

    assert store.retrieve("parts", [point_id])[0].payload == payload
    assert store.search("parts", np.ones((1, 4), np.float32), k=1)[0][0].payload == payload
    assert next(iter(store.scroll("parts"))).payload == payload


def test_retrieve_keeps_the_order_asked_and_skips_missing_ids(store: VectorStore) -> None:
    points = filled(store, n=10)
    asked = [points[3].id, str(uuid.uuid4()), points[0].id, "image-17", points[7].id]

    found = store.retrieve("parts", asked, with_vectors=True)

    assert [p.id for p in found] == [points[3].id, points[0].id, points[7].id]
    for got, want in zip(found, [points[3], points[0], points[7]]):
        assert got.payload == want.payload
        assert got.vector.dtype == np.float32
        np.testing.assert_allclose(got.vector, want.vector, atol=1e-6)
    assert all(p.vector.shape == (0,) for p in store.retrieve("parts", asked))
    assert store.retrieve("parts", []) == []


def test_ids_come_back_in_canonical_form(store: VectorStore) -> None:
    store.create_collection("parts", 4)
    point_id = uuid.uuid4()
    store.upsert("parts", [Point(str(point_id).upper(), np.ones(4, np.float32))])
    assert [p.id for p in store.retrieve("parts", [str(point_id)])] == [str(point_id)]
    with pytest.raises(ValueError, match="not a UUID"):
        store.upsert("parts", [Point("image-17", np.ones(4, np.float32))])


def test_a_bad_vector_in_a_batch_writes_nothing(store: VectorStore) -> None:
    store.create_collection("parts", 4)
    good = Point(str(uuid.uuid4()), np.ones(4, np.float32))
    for bad in (np.ones(3, np.float32), np.array([1, np.nan, 0, 0], np.float32), np.zeros(4, np.float32)):
        with pytest.raises(ValueError):
            store.upsert("parts", [good, Point(str(uuid.uuid4()), bad)])
    assert store.count("parts") == 0


def test_delete_points_removes_them_everywhere_and_ignores_missing_ids(store: VectorStore) -> None:
    points = filled(store, n=20)
    doomed = [points[0].id, points[5].id]

    store.delete_points("parts", [*doomed, str(uuid.uuid4()), "image-17"])

    assert store.count("parts") == 18
    assert store.retrieve("parts", doomed) == []
    hits = store.search("parts", np.stack([points[0].vector, points[5].vector]), k=20)
    assert all(h.id not in doomed for row in hits for h in row)
    assert all(len(row) == 18 for row in hits)


def test_scroll_yields_every_point_exactly_once(store: VectorStore) -> None:
    points = filled(store, n=1000, dim=8)

    seen = list(store.scroll("parts", with_vectors=True, batch_size=64))

    assert len(seen) == 1000
    assert {p.id for p in seen} == {p.id for p in points}
    by_id = {p.id: p for p in points}
    for p in seen[::97]:
        np.testing.assert_allclose(p.vector, by_id[p.id].vector, atol=1e-6)
        assert p.payload == by_id[p.id].payload
    assert list(store.scroll("parts", batch_size=5000))[0].vector.shape == (0,)


# Collections


def test_collections_are_listed_sorted_and_records_stay_out_of_them(store: VectorStore) -> None:
    for name in ("zeta", "alpha", "m-1.v2_x"):
        store.create_collection(name, 4)
    store.put_record("setting", "line-3", {"backbone": "x"})
    assert store.collections() == ["alpha", "m-1.v2_x", "zeta"]
    with pytest.raises(ValueError, match="already exists"):
        store.create_collection("alpha", 4)


def test_delete_collection_removes_it_and_its_aliases(store: VectorStore) -> None:
    filled(store, name="v1")
    store.set_alias("line-3", "v1")

    store.delete_collection("v1")
    store.delete_collection("v1")  # a missing one is not an error

    assert store.collections() == []
    assert store.resolve_alias("line-3") is None
    with pytest.raises(ValueError, match="does not exist"):
        store.count("v1")
    store.create_collection("v1", 32)  # the name is free again, with another dimension
    assert store.count("v1") == 0


def test_every_operation_on_a_missing_collection_raises_the_same_error(store: VectorStore) -> None:
    operations = [
        lambda: store.search("ghost", np.ones((1, 4), np.float32), k=3),
        lambda: store.upsert("ghost", [Point(str(uuid.uuid4()), np.ones(4, np.float32))]),
        lambda: store.retrieve("ghost", [str(uuid.uuid4())]),
        lambda: list(store.scroll("ghost")),
        lambda: store.delete_points("ghost", [str(uuid.uuid4())]),
        lambda: store.count("ghost"),
        lambda: store.set_alias("current", "ghost"),
    ]
    for operation in operations:
        with pytest.raises(ValueError, match="collection 'ghost' does not exist"):
            operation()


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "a/b", ".hidden", "nominal_records", "x" * 201])
def test_unusable_names_are_refused(store: VectorStore, bad: str) -> None:
    with pytest.raises(InvalidName):
        store.create_collection(bad, 4)
    with pytest.raises(InvalidName):
        store.set_alias(bad, "whatever")
    if bad != "nominal_records":  # reserved for collections and aliases only
        with pytest.raises(InvalidName):
            store.put_record(bad, "key", {})
        with pytest.raises(InvalidName):
            store.put_record("kind", bad, {})


# Aliases


def test_alias_set_resolve_move_delete(store: VectorStore) -> None:
    store.create_collection("v1", 4)
    store.create_collection("v2", 4)
    assert store.resolve_alias("line-3") is None

    store.set_alias("line-3", "v1")
    assert store.resolve_alias("line-3") == "v1"
    store.set_alias("line-3", "v2")
    assert store.resolve_alias("line-3") == "v2"
    assert store.collections() == ["v1", "v2"]  # moving an alias touches no collection

    store.delete_alias("line-3")
    store.delete_alias("line-3")  # a missing one is not an error
    assert store.resolve_alias("line-3") is None
    with pytest.raises(ValueError, match="hide the collection"):
        store.set_alias("v1", "v2")


def test_readers_never_see_an_alias_missing_while_it_moves(store: VectorStore) -> None:
    store.create_collection("v1", 4)
    store.create_collection("v2", 4)
    store.set_alias("line-3", "v1")
    seen: set[str | None] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(store.resolve_alias("line-3"))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(50):
        store.set_alias("line-3", "v2" if i % 2 == 0 else "v1")
    done.set()
    reader.join()
    assert None not in seen and seen <= {"v1", "v2"}


# Records


def test_records_put_get_list_overwrite_delete(store: VectorStore) -> None:
    assert store.get_record("setting", "line-3") is None
    assert store.list_records("setting") == []
    store.put_record("setting", "line-3", {"name": "line-3", "threshold": 0.25, "nested": {"k": [1, 2]}})
    store.put_record("setting", "line-1", {"name": "line-1"})
    store.put_record("setting", "line-2", {"name": "line-2"})
    store.put_record("calibration", "line-1", {"threshold": 0.5})

    assert store.get_record("setting", "line-3") == {"name": "line-3", "threshold": 0.25, "nested": {"k": [1, 2]}}
    assert [r["name"] for r in store.list_records("setting")] == ["line-1", "line-2", "line-3"]
    assert store.list_records("calibration") == [{"threshold": 0.5}]

    store.put_record("setting", "line-3", {"name": "line-3", "threshold": 0.3})
    assert store.get_record("setting", "line-3") == {"name": "line-3", "threshold": 0.3}
    assert len(store.list_records("setting")) == 3

    store.delete_record("setting", "line-2")
    store.delete_record("setting", "line-2")  # a missing one is not an error
    assert [r["name"] for r in store.list_records("setting")] == ["line-1", "line-3"]
    assert store.get_record("setting", "line-2") is None


def test_a_record_that_is_not_json_is_refused_and_the_old_one_kept(store: VectorStore) -> None:
    store.put_record("setting", "line-1", {"ok": True})
    with pytest.raises(TypeError):
        store.put_record("setting", "line-1", {"when": object()})
    assert store.get_record("setting", "line-1") == {"ok": True}


# open_store


def test_open_store_wants_exactly_one_location(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only one"):
        open_store(data_dir=tmp_path, qdrant_url="http://localhost:6333")
    with pytest.raises(ValueError, match="neither"):
        open_store()
    with open_store(data_dir=tmp_path / "store") as opened:  # type: ignore[attr-defined]
        assert isinstance(opened, EdgeStore) and isinstance(opened, VectorStore)


def test_an_unreachable_server_raises_store_unavailable_naming_the_url() -> None:
    unreachable = open_store(qdrant_url="http://127.0.0.1:9")
    assert isinstance(unreachable, ServerStore)
    with pytest.raises(StoreUnavailable, match=r"http://127\.0\.0\.1:9"):
        unreachable.search("parts", np.ones((1, 4), np.float32), k=3)
    with pytest.raises(StoreUnavailable, match=r"http://127\.0\.0\.1:9"):
        unreachable.collections()


# The embedded store's own promises


def test_edge_data_survives_close_and_reopen(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as store:
        points = filled(store, n=200)
        store.set_alias("line-3", "parts")
        store.put_record("setting", "line-3", {"threshold": 0.25})
        queries = unit_vectors(3, 16, seed=5)
        before = store.search("parts", queries, k=5)

    with EdgeStore(tmp_path) as store:
        assert store.collections() == ["parts"]
        assert store.count("parts") == 200
        assert store.resolve_alias("line-3") == "parts"
        assert store.get_record("setting", "line-3") == {"threshold": 0.25}
        assert store.search("parts", queries, k=5) == before
        [again] = store.retrieve("parts", [points[9].id], with_vectors=True)
        np.testing.assert_allclose(again.vector, points[9].vector, atol=1e-6)


def test_a_second_edge_store_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = EdgeStore(tmp_path)
    with pytest.raises(StoreUnavailable, match="QDRANT_URL") as refused:
        EdgeStore(tmp_path)
    assert "stop the other" in str(refused.value)

    other_process = subprocess.run(
        [sys.executable, "-c", f"from indexing.store import EdgeStore; EdgeStore({str(tmp_path)!r})"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert other_process.returncode != 0
    assert "StoreUnavailable" in other_process.stderr and "one process owns" in other_process.stderr

    first.close()
    EdgeStore(tmp_path).close()  # released on close


def test_a_process_killed_right_after_writing_loses_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, uuid
        import numpy as np
        from indexing.store import EdgeStore, Point
        store = EdgeStore({str(tmp_path)!r})
        store.create_collection("parts", 8)
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((300, 8)).astype(np.float32)
        store.upsert("parts", [Point(str(uuid.UUID(int=i + 1)), v, {{"row": i}}) for i, v in enumerate(vectors)])
        store.set_alias("line-3", "parts")
        store.put_record("setting", "line-3", {{"threshold": 0.25}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr

    with EdgeStore(tmp_path) as store:  # the dead process's lock is gone with it
        assert store.count("parts") == 300
        assert store.retrieve("parts", [str(uuid.UUID(int=300))])[0].payload == {"row": 299}
        assert store.resolve_alias("line-3") == "parts"
        assert store.get_record("setting", "line-3") == {"threshold": 0.25}


def test_edge_store_serves_threads_while_collections_change(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as store:
        filled(store, name="live", n=300, dim=32)
        filled(store, name="old", n=300, dim=32, seed=1)
        queries = unit_vectors(4, 32, seed=3)
        expected = [[h.id for h in row] for row in store.search("live", queries, k=5)]
        errors: list[BaseException] = []
        stop = threading.Event()

        def search_live() -> None:
            try:
                while not stop.is_set():
                    assert [[h.id for h in row] for row in store.search("live", queries, k=5)] == expected
            except BaseException as exc:
                errors.append(exc)

        def search_old() -> None:
            # The collection is deleted under this thread: it must see results, then
            # the documented ValueError, never an engine error.
            deadline = time.monotonic() + 30
            try:
                while time.monotonic() < deadline:
                    store.search("old", queries, k=5)
                errors.append(TimeoutError("the deleted collection was still searchable"))
            except ValueError as exc:
                if "does not exist" not in str(exc):
                    errors.append(exc)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=search_live) for _ in range(3)] + [threading.Thread(target=search_old)]
        for t in threads:
            t.start()
        # Points opposite the queries (cosine distance > 1) never enter their top-5,
        # so the searches above must keep their answer while these are written.
        away = -queries.sum(axis=0) + 0.01 * unit_vectors(100, 32, seed=8)
        far_away = make_points(away / np.linalg.norm(away, axis=1, keepdims=True), seed=7)
        for start in range(0, 100, 10):
            store.upsert("live", far_away[start : start + 10])
        store.delete_collection("old")
        stop.set()
        for t in threads:
            t.join()

        assert errors == []
        assert store.count("live") == 400
        assert store.collections() == ["live"]


def test_neighbours_are_our_own_types(store: VectorStore) -> None:
    filled(store, n=3)
    [[hit, *_]] = store.search("parts", unit_vectors(1, 16, seed=0), k=3)
    assert type(hit) is Neighbour and isinstance(hit.id, str) and type(hit.distance) is float


def test_a_store_is_vectors_and_records_and_says_whether_it_is_shared(store: VectorStore) -> None:
    """Parts of Nominal take one side only (the job board: records; patch banks: vectors)."""
    from indexing.store import Records, Vectors

    assert isinstance(store, Vectors) and isinstance(store, Records) and isinstance(store, VectorStore)
    # A server may have other writers (they coordinate: indexing/locks.py); the embedded store has one owner.
    assert store.shared is isinstance(store, ServerStore)
