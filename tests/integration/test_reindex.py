"""Re-index in-process: a new version built beside the old, checked, switched in one step; cancel; rollback."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from indexing.errors import NoPreviousVersion
from indexing.image_store import ImageStore
from indexing.images import ImageInput
from indexing.reindex import read_source
from indexing.runner import InProcessRunner
from indexing.service import NominalService
from tests.waiting import wait_for_job

pytestmark = pytest.mark.slow



@pytest.fixture
def source(tmp_path: Path, hazelnut: Path) -> Path:
    """The 28 Hazelnut Toy training images, duplicate-free, in a folder of their own."""
    folder = tmp_path / "source"
    shutil.copytree(hazelnut / "train" / "good", folder)
    return folder


@pytest.fixture
def runner(tmp_path: Path, service: NominalService):
    runner = InProcessRunner(service, ImageStore(tmp_path / "images"))
    yield runner
    runner.close()


def seed(service: NominalService, hazelnut_sets, n: int = 4) -> None:
    service.index("hazelnut", hazelnut_sets["good"][:n])


def test_reindex_builds_a_new_version_and_switches_to_it(service, runner, source, hazelnut_sets, bad_images) -> None:
    seed(service, hazelnut_sets)
    shutil.copy(bad_images["truncated"], source / "zz_truncated.jpg")
    (source / "zz_not_an_image.png").write_bytes(b"not an image")
    done = wait_for_job(runner.board, runner.submit_reindex("hazelnut", str(source)))
    assert done.state == "succeeded", done.message
    assert done.result["version"] == 2 and done.result["indexed"] == 28 and done.result["skipped"] == 2
    assert (done.done, done.total) == (30, 30)
    assert sorted(Path(e["source"]).name for e in done.errors) == ["zz_not_an_image.png", "zz_truncated.jpg"]
    assert all(e["reason"] for e in done.errors)
    status = service.status("hazelnut")
    assert status.active.version == 2 and status.count == 28
    assert [(v.version, v.state) for v in service.versions.list("hazelnut")] == [(1, "ready"), (2, "ready")]


def test_a_manifest_carries_metadata_and_missing_files_are_reported(service, runner, source, hazelnut_sets) -> None:
    seed(service, hazelnut_sets)
    names = sorted(p.name for p in source.iterdir())[:5]
    manifest = source / "manifest.csv"
    manifest.write_text("path,lot\n" + "".join(f"{n},L{i}\n" for i, n in enumerate(names)) + "missing.jpg,L9\n")
    assert [i.metadata for i in read_source(manifest)][:2] == [{"lot": "L0"}, {"lot": "L1"}]
    done = wait_for_job(runner.board, runner.submit_reindex("hazelnut", str(manifest)))
    assert done.state == "succeeded", done.message
    assert done.result["indexed"] == 5 and done.errors[0]["source"].endswith("missing.jpg")
    stored = {p.payload["metadata"]["lot"] for p in service.store.scroll(service.versions.active("hazelnut").collection)}
    assert stored == {"L0", "L1", "L2", "L3", "L4"}


def test_old_versions_beyond_keep_are_deleted_and_rollback_returns_to_the_previous(
    tmp_path, service, source, hazelnut_sets
) -> None:
    seed(service, hazelnut_sets)
    runner = InProcessRunner(service, ImageStore(tmp_path / "images"), keep_versions=1)
    try:
        small = tmp_path / "small"
        small.mkdir()
        for p in sorted(source.iterdir())[:3]:
            shutil.copy(p, small / p.name)
        for _ in range(2):
            assert wait_for_job(runner.board, runner.submit_reindex("hazelnut", str(small))).state == "succeeded"
    finally:
        runner.close()
    assert [v.version for v in service.versions.list("hazelnut")] == [2, 3]
    assert service.rollback("hazelnut").version == 2 and service.versions.active("hazelnut").version == 2
    with pytest.raises(NoPreviousVersion, match="no ready version older than v2"):
        service.rollback("hazelnut")


def test_cancel_leaves_the_old_version_active_and_deletes_the_half_built_one(
    service, runner, source, hazelnut_sets
) -> None:
    seed(service, hazelnut_sets)
    for copy in range(4):  # 140 files, one per batch: seconds of work, so the cancel lands mid-way
        shutil.copytree(source, source.parent / f"copy{copy}", ignore=shutil.ignore_patterns("copy*"))
        shutil.move(source.parent / f"copy{copy}", source / f"copy{copy}")
    service.batch_size = 1
    job = runner.submit_reindex("hazelnut", str(source))
    deadline = time.monotonic() + 60
    while (runner.board.get(job.id).done or 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    runner.cancel(job.id)
    done = wait_for_job(runner.board, job)
    assert done.state == "cancelled" and done.done < 140
    assert service.versions.active("hazelnut").version == 1 and service.status("hazelnut").count == 4
    assert [v.version for v in service.versions.list("hazelnut")] == [1]
    assert not any("__v2" in c for c in service.store.collections())


def test_a_reindex_with_no_usable_image_fails_and_switches_nothing(
    tmp_path, service, runner, hazelnut_sets, bad_images
) -> None:
    seed(service, hazelnut_sets)
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in bad_images.values():
        shutil.copy(p, bad / p.name)
    done = wait_for_job(runner.board, runner.submit_reindex("hazelnut", str(bad)))
    assert done.state == "failed" and "nothing switched" in done.message
    assert done.error_count == len(bad_images)
    assert [v.version for v in service.versions.list("hazelnut")] == [1]


def test_inspections_during_a_reindex_are_all_answered(service, runner, source, hazelnut_sets) -> None:
    seed(service, hazelnut_sets)
    probe: list[ImageInput] = hazelnut_sets["defect"][:1]
    answered: list[set[str]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                verdict = service.inspect("hazelnut", probe)[0]
                answered.append({Path(n.payload["source"]).parent.name for n in verdict.neighbours})
            except BaseException as error:  # noqa: BLE001 - collected and asserted below
                failures.append(error)

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        done = wait_for_job(runner.board, runner.submit_reindex("hazelnut", str(source)))
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert done.state == "succeeded", done.message
    assert not failures, failures[:3]
    assert len(answered) >= 2
    # Every answer came from one whole version: v1 (test/good) or v2 (the source folder), never a mix.
    assert all(folders in ({"good"}, {"source"}) for folders in answered), answered


def test_a_patch_setting_is_reindexed_with_its_patch_bank_and_pruning_removes_old_banks(
    service, runner, source, hazelnut_sets
) -> None:
    service.put_setting("hazelnut", scoring="patch")
    seed(service, hazelnut_sets)
    first = service.versions.active("hazelnut")
    first_bank = service.versions.patch_record(first)["collection"]
    for expected_version in (2, 3, 4):
        done = wait_for_job(runner.board, runner.submit_reindex("hazelnut", str(source)))
        assert done.state == "succeeded", done.message
        assert done.result["version"] == expected_version
    active = service.versions.active("hazelnut")
    bank = service.versions.patch_record(active)["collection"]
    assert service.store.count(bank) > 0, "the new version's patch bank is filled, not empty"
    assert service.store.resolve_alias("nominal__hazelnut__patch__active") == bank
    defect = service.inspect("hazelnut", hazelnut_sets["defect"][:1])[0]
    good = service.inspect("hazelnut", hazelnut_sets["good"][5:6])[0]
    assert defect.score > good.score > 0
    assert first_bank not in service.store.collections(), "pruning the old version removed its patch bank too"
    assert len([c for c in service.store.collections() if "__patch__" in c]) == 3, "active + 2 kept for rollback"
    back = service.rollback("hazelnut")
    assert back.version == 3
    assert service.store.resolve_alias("nominal__hazelnut__patch__active") == service.versions.patch_record(back)["collection"]
