"""The embedded store's switch from exact to approximate search (`NOMINAL_APPROXIMATE_ABOVE`).

A real `EdgeStore` with the threshold lowered to 2,000 points and clustered unit
vectors (fixed seed): the collection that crosses it answers from the IVF-SQ8
candidates, with the same neighbours as exact search on a fixed sample of queries
and the very same distances; writes after the switch are seen, deleted points are
not, and a reopened store keeps the mode and the answers.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from indexing.store import EdgeStore, Point
from indexing.store.approximate import APPROXIMATE, EXACT, ApproximateIndex

DIM = 64
ABOVE = 2000
K = 10


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((32, DIM)).astype(np.float32)
    rows = centres[rng.integers(0, 32, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def points(rows: np.ndarray, seed: int) -> list[Point]:
    rng = np.random.default_rng(seed)
    return [Point(id=str(uuid.UUID(bytes=rng.bytes(16), version=4)), vector=row, payload={"i": i})
            for i, row in enumerate(rows)]


def exact_answers(rows: np.ndarray, ids: list[str], queries: np.ndarray) -> list[list[str]]:
    scores = queries @ rows.T
    return [[ids[j] for j in np.argsort(-s)[:K]] for s in scores]


def hits(store: EdgeStore, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    return [[(h.id, h.distance) for h in row] for row in store.search("c", queries, K)]


@pytest.fixture
def crossed(tmp_path: Path) -> tuple[Path, list[Point]]:
    """A store holding 2,400 points, written in batches that cross the threshold, index built (as `Versions` does)."""
    stored = points(clustered(2400, seed=1), seed=2)
    with EdgeStore(tmp_path / "s", approximate_above=ABOVE) as store:
        store.create_collection("c", DIM)
        for start in range(0, len(stored), 600):
            store.upsert("c", stored[start : start + 600])
        assert store.search_mode("c") == EXACT  # built for searching, not for every write: patch collections never are
        assert store.prepare_search("c") == APPROXIMATE
    return tmp_path / "s", stored


def test_a_collection_crossing_the_threshold_switches_and_answers_the_same(tmp_path: Path) -> None:
    stored = points(clustered(2400, seed=1), seed=2)
    queries = clustered(40, seed=3)
    with EdgeStore(tmp_path / "s", approximate_above=ABOVE) as store, EdgeStore(tmp_path / "x", approximate_above=0) as exact:
        for s in (store, exact):
            s.create_collection("c", DIM)
        store.upsert("c", stored[:ABOVE])
        exact.upsert("c", stored)
        assert store.search_mode("c") == EXACT
        store.search("c", queries[:1], K)
        assert store.search_mode("c") == EXACT  # at the threshold, not above it
        store.upsert("c", stored[ABOVE:])
        answers = hits(store, queries)
        assert store.search_mode("c") == APPROXIMATE
        assert exact.search_mode("c") == EXACT
        # Same neighbours as exact search, and the same distances bit for bit: rescoring is the engine's exact search.
        assert answers == hits(exact, queries)
        assert [[i for i, _ in row] for row in answers] == exact_answers(
            np.stack([p.vector for p in stored]), [p.id for p in stored], queries
        )


def test_points_written_after_the_switch_are_found_and_deleted_ones_are_not(crossed: tuple[Path, list[Point]]) -> None:
    path, stored = crossed
    with EdgeStore(path, approximate_above=ABOVE) as store:
        assert store.prepare_search("c") == APPROXIMATE
        late = points(clustered(50, seed=4), seed=5)
        store.upsert("c", late)
        for point in late[:10]:
            assert store.search("c", point.vector[None, :], 1)[0][0].id == point.id
        doomed = [p.id for p in stored[:200]]
        store.delete_points("c", doomed)
        answers = store.search("c", np.stack([p.vector for p in stored[:200]]), K)
        assert all(len(row) == K for row in answers)
        assert not {h.id for row in answers for h in row} & set(doomed)
        # A point moved by a second upsert is found where it is now, once.
        moved = Point(id=stored[300].id, vector=late[0].vector, payload={"moved": True})
        store.upsert("c", [moved])
        found = store.search("c", late[0].vector[None, :], 2)[0]
        assert {h.id for h in found} == {moved.id, late[0].id}


def test_reopening_keeps_the_index_and_the_answers(crossed: tuple[Path, list[Point]]) -> None:
    path, stored = crossed
    queries = clustered(20, seed=6)
    with EdgeStore(path, approximate_above=ABOVE) as store:
        before = hits(store, queries)
        store.upsert("c", points(clustered(30, seed=7), seed=8))  # written after the save: saved again at close
        after_write = hits(store, queries)
    assert (path / "collections" / "c" / "approximate.json").exists()
    assert ApproximateIndex.load(path / "collections" / "c") is not None  # closed cleanly: reopened, not rebuilt
    with EdgeStore(path, approximate_above=ABOVE) as store:
        assert store.search_mode("c") == APPROXIMATE  # loaded with the shard, before any search
        assert hits(store, queries) == after_write
    assert before  # the first store answered too


def test_an_index_written_to_after_its_save_is_rebuilt_not_used(crossed: tuple[Path, list[Point]]) -> None:
    """What a crash after a write leaves: `approximate.json` says not clean, so the index is rebuilt."""
    path, stored = crossed
    with EdgeStore(path, approximate_above=ABOVE) as store:
        store.prepare_search("c")
        store.delete_points("c", [stored[0].id])
        assert ApproximateIndex.load(path / "collections" / "c") is None  # marked before close saves it
        store._switches["c"]._dirty = False  # noqa: SLF001 - as if killed: close saves nothing
    assert ApproximateIndex.load(path / "collections" / "c") is None
    with EdgeStore(path, approximate_above=ABOVE) as store:
        assert store.search_mode("c") == EXACT
        found = store.search("c", stored[0].vector[None, :], 3)[0]
        assert store.search_mode("c") == APPROXIMATE  # rebuilt on the first search
        assert stored[0].id not in {h.id for h in found}


def test_a_half_written_save_is_never_read(crossed: tuple[Path, list[Point]]) -> None:
    path, _ = crossed
    folder = path / "collections" / "c"
    (folder / ".approximate-deadbeef.faiss.0.tmp.npy").write_bytes(b"half")
    (folder / "approximate-deadbeef.faiss").write_bytes(b"not named by approximate.json")
    with EdgeStore(path, approximate_above=ABOVE) as store:
        assert store.search_mode("c") == APPROXIMATE
        store.upsert("c", points(clustered(5, seed=9), seed=10))
    assert not (folder / "approximate-deadbeef.faiss").exists()  # swept by the next save


def test_switch_off_stays_exact(crossed: tuple[Path, list[Point]]) -> None:
    path, stored = crossed
    with EdgeStore(path, approximate_above=0) as store:
        store.search("c", stored[0].vector[None, :], K)
        assert store.search_mode("c") == EXACT
        store.delete_points("c", [stored[0].id])
    # Writes made while off never reach the saved index, so turning it back on rebuilds.
    with EdgeStore(path, approximate_above=ABOVE) as store:
        assert store.search_mode("c") == EXACT
        assert stored[0].id not in {h.id for h in store.search("c", stored[0].vector[None, :], 3)[0]}
        assert store.search_mode("c") == APPROXIMATE


def test_metrics_show_which_settings_search_approximately(tmp_path: Path, hazelnut: Path) -> None:
    from tests.integration.test_api import files_of, jpgs, make_client, wait_job

    train = jpgs(hazelnut / "train" / "good")
    with make_client(tmp_path, NOMINAL_APPROXIMATE_ABOVE=4) as client:
        for name, images in (("small", train[:3]), ("large", train[3:9])):
            assert client.put(f"/v1/settings/{name}", json={}).status_code == 201
            job = client.post(f"/v1/settings/{name}/images", files=files_of(images)).json()
            assert wait_job(client, job["job_id"])["state"] == "succeeded"
        probe = files_of([hazelnut / "test" / "colour" / "00.jpg"])
        assert client.post("/v1/settings/large/inspect", files=probe).status_code == 200
        text = client.get("/metrics").text
    assert 'nominal_search_approximate{setting="large"} 1.0' in text
    assert 'nominal_search_approximate{setting="small"} 0.0' in text


def test_a_search_during_a_build_is_answered_exactly_without_waiting(tmp_path: Path) -> None:
    import threading

    stored = points(clustered(2400, seed=1), seed=2)
    queries = clustered(5, seed=3)
    with EdgeStore(tmp_path / "s", approximate_above=ABOVE) as store:
        store.create_collection("c", DIM)
        store.upsert("c", stored)
        store.search_mode("c")  # opens the shard and its switch
        held, release = threading.Event(), threading.Event()

        def build_in_progress() -> None:  # holds the lock a build holds
            with store._switches["c"].lock:  # noqa: SLF001
                held.set()
                release.wait(10)

        worker = threading.Thread(target=build_in_progress)
        worker.start()
        held.wait(10)
        try:
            answers = [[h.id for h in row] for row in store.search("c", queries, K)]
            assert store.search_mode("c") == EXACT
        finally:
            release.set()
            worker.join()
        assert answers == exact_answers(np.stack([p.vector for p in stored]), [p.id for p in stored], queries)
        store.search("c", queries, K)
        assert store.search_mode("c") == APPROXIMATE
