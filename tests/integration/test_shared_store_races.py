"""Several processes writing to one Qdrant server: uploads, calibrations and re-indexes lose nothing.

No Qdrant server runs here, so the "server" is `ServerStore` on qdrant-client's local
mode (as in test_workers_write_to_server.py), shared by several `NominalService`s,
one per thread, each standing for one API process or worker: each has its own
setting locks (`RedisLocks` on the real Redis, as `deployment.services` builds them with
QDRANT_URL and REDIS_URL), and nothing in-process is shared but the store object.
`OneServer` applies each store call atomically and nothing across calls, which is
what a server promises (and keeps qdrant-client's local mode, which is not thread-safe,
from being called by two threads at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from indexing.images import ImageInput
from indexing.locks import RedisLocks
from indexing.reindex import reindex
from indexing.service import BackbonePool, NominalService
from indexing.store import ServerStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect"),
]


class OneServer:
    """A store shared by every "process" of a test: each call atomic, nothing held across calls."""

    shared = True

    def __init__(self) -> None:
        self._store = ServerStore(QdrantClient(":memory:"))
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                result = method(*args, **kwargs)
                # A scroll is read whole under the lock, and handed back as the iterator the protocol promises
                # (a list would restart every `islice` of it from the first point).
                return iter(list(result)) if name == "scroll" else result

        return call


class Progress:
    """A job's progress that takes its time between batches, so other processes act meanwhile."""

    def __init__(self, pause_s: float = 0.0) -> None:
        self.pause_s = pause_s
        self.errors: list[dict[str, str]] = []

    def start(self, total: int | None = None) -> None:
        pass

    def __call__(self, stage: str, done: int, total: int) -> None:
        time.sleep(self.pause_s)

    def report_errors(self, errors: list[dict[str, str]]) -> None:
        self.errors.extend(errors)


def run_all(bodies: list[Callable[[], None]]) -> None:
    """Run each body on its own thread; re-raise the first failure."""
    failures: list[BaseException] = []

    def guarded(body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=guarded, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    if failures:
        raise failures[0]


@pytest.fixture
def processes(pool: BackbonePool, redis_space) -> Callable[[int], list[NominalService]]:
    server = OneServer()

    def make(n: int) -> list[NominalService]:
        return [
            NominalService(server, backbones=pool, batch_size=2, locks=RedisLocks(redis_space.client, redis_space.prefix))
            for _ in range(n)
        ]

    return make


def test_concurrent_first_uploads_and_new_versions_are_numbered_once(processes, hazelnut_sets) -> None:
    services = processes(4)
    images = hazelnut_sets["train"][:4]
    numbers: list[int] = []

    def writer(service: NominalService, image: ImageInput) -> Callable[[], None]:
        def body() -> None:
            service.index("fresh", [image])  # the first upload of a setting creates its version 1
            for _ in range(3):
                numbers.append(service.versions.begin(service.get_setting("fresh")).version)

        return body

    run_all([writer(service, image) for service, image in zip(services, images)])
    versions = services[0].versions.list("fresh")
    assert sorted(numbers) == list(range(2, 14)), numbers  # twelve new versions, no number twice
    assert len({v.collection for v in versions}) == len(versions) == 13
    active = services[0].versions.active("fresh")
    assert active.version == 1 and services[0].status("fresh").count == 4  # every first upload landed


def test_uploads_calibrations_and_reindexes_across_processes_lose_nothing(
    processes, hazelnut: Path, hazelnut_sets
) -> None:
    reindexer, other_reindexer, uploader, calibrator = processes(4)
    reindexer.put_setting("line", k=1)
    reindexer.index("line", hazelnut_sets["train"][:4])
    uploads = hazelnut_sets["defect"][:4]
    landed: list[tuple[str, set[int]]] = []  # (image id, versions being built when its upload began)
    calibrations: list[str] = []
    descriptions: list[str] = []
    done = threading.Event()

    def reindex_from(service: NominalService, folder: Path, times: int) -> Callable[[], None]:
        def body() -> None:
            for _ in range(times):
                reindex(service, Progress(pause_s=0.3), setting="line", source=str(folder), keep=10)

        return body

    def upload() -> None:
        for image in uploads:
            deadline = time.monotonic() + 60
            while not (building := {v.version for v in uploader.versions.list("line") if v.state == "building"}):
                assert time.monotonic() < deadline, "no re-index was ever seen building"
                time.sleep(0.02)
            uploader.index("line", [image])
            landed.append((image.id, building))

    def calibrate() -> None:
        for i in range(6):
            made = calibrator.calibrate("line", policy="quantile")
            assert made.active, made.held_back
            calibrations.append(made.calibration.id)
            descriptions.append(f"calibrated {i}")
            calibrator.put_setting("line", description=descriptions[-1])
        done.set()

    run_all([
        reindex_from(reindexer, hazelnut / "test" / "good", 2),
        reindex_from(other_reindexer, hazelnut / "train" / "good", 1),
        upload,
        calibrate,
    ])

    versions = reindexer.versions.list("line")
    assert [v.version for v in versions] == [1, 2, 3, 4] and all(v.state == "ready" for v in versions)
    setting = reindexer.get_setting("line")
    # Read-modify-writes of the setting record from four processes: the last of each kind holds.
    assert setting.calibration_id == calibrations[-1] and setting.description == descriptions[-1]
    assert setting.backbone == reindexer.versions.active("line").backbone
    by_number = {v.version: v for v in versions}
    for image_id, building in landed:
        for number in building:  # an image uploaded while a version was built is in that version
            assert reindexer.store.retrieve(by_number[number].collection, [image_id]), (image_id, number)
