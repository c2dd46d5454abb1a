"""Index jobs run in-process: images go by reference, status is readable, bad images are listed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli.main import main
from indexing.image_store import ImageStore
from indexing.images import ImageInput
from indexing.jobs import request_cancel
from indexing.runner import InProcessRunner
from tests.waiting import wait_for_job

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_an_index_job_adds_images_and_lists_the_bad_ones(tmp_path: Path, service, hazelnut_sets, bad_images) -> None:
    images = ImageStore(tmp_path / "images")
    runner = InProcessRunner(service, images)
    try:
        good = hazelnut_sets["train"][:6]
        refs = [images.put(i) for i in good + [ImageInput.from_path(bad_images["truncated"])]]
        job = runner.submit_index("hazelnut", refs)
        assert job.state == "queued" and job.total == 7
        done = wait_for_job(runner.board, job)
    finally:
        runner.close()
    assert done.state == "succeeded", done.message
    assert done.result == {"indexed": 6, "skipped": 1, "count": 6, "collection": done.result["collection"]}
    assert done.error_count == 1 and done.errors[0]["source"].endswith("truncated.jpg")
    assert service.status("hazelnut").count == 6


def test_an_upload_reports_every_image_and_a_cancelled_one_says_what_it_stored(tmp_path: Path, service, hazelnut_sets) -> None:
    """Progress moves per image on a small upload, and a cancel mid-way leaves the job's count equal to
    what the setting holds, with a message that says the stored images stay."""
    seen: list[int] = []
    service.index("per-image", hazelnut_sets["train"], progress=lambda stage, done, total: stage == "embedding" and seen.append(done))
    assert seen == list(range(29)), seen

    images = ImageStore(tmp_path / "images")
    runner = InProcessRunner(service, images)
    try:
        # Every Hazelnut Toy image (51), so that the cancel, sent after the first image, lands mid-upload
        # even on a loaded machine.
        upload = hazelnut_sets["train"] + hazelnut_sets["good"] + hazelnut_sets["defect"]
        job = runner.submit_index("hazelnut", [images.put(i) for i in upload])
        deadline = time.monotonic() + 120
        while (current := runner.board.get(job.id)).done < 1 and not current.finished:
            assert time.monotonic() < deadline, "the upload made no progress"
            time.sleep(0.01)
        request_cancel(runner.board, job.id)
        done = wait_for_job(runner.board, job)
    finally:
        runner.close()
    assert done.state == "cancelled"
    stored = service.status("hazelnut").count
    assert 1 <= done.done == stored < len(upload)
    assert f"{stored} of {len(upload)} images were stored before it stopped" in done.message


def test_a_job_whose_images_are_all_bad_fails_and_says_why(tmp_path: Path, service, bad_images) -> None:
    images = ImageStore(tmp_path / "images")
    runner = InProcessRunner(service, images)
    try:
        refs = [images.put(ImageInput.from_path(p)) for p in bad_images.values()]
        done = wait_for_job(runner.board, runner.submit_index("line-1", refs))
    finally:
        runner.close()
    assert done.state == "failed" and "nothing was indexed" in (done.message or "")
    assert done.error_count == len(bad_images)


def test_the_image_store_keeps_content_once_and_detects_corruption(tmp_path: Path, hazelnut_sets) -> None:
    images = ImageStore(tmp_path / "images")
    image = hazelnut_sets["train"][0]
    ref = images.put(image)
    assert images.put(image) == ref and len(list((tmp_path / "images").rglob("*"))) == 2  # one shard dir, one file
    assert images.load(ref).data == image.data
    images.path(ref.sha256).write_bytes(b"changed")
    with pytest.raises(Exception, match="no longer matches"):
        images.load(ref)


def test_a_reindex_killed_with_its_process_is_reported_failed_and_can_be_run_again(
    tmp_path: Path, hazelnut: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill -9` of `nominal reindex` mid-job: the next process to open the store (here, this one) says what happened."""
    data = tmp_path / "data"
    source = tmp_path / "source"
    source.mkdir()
    for copy in range(4):  # 112 files, so the job is still running when it is killed
        for image in sorted((hazelnut / "train" / "good").iterdir()):
            shutil.copy(image, source / f"{copy}_{image.name}")
    for name in [k for k in os.environ if k.startswith(("NOMINAL_", "REDIS_URL", "QDRANT_"))]:
        monkeypatch.delenv(name)  # the embedded default, jobs in-process
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def nominal(*args: str) -> dict:
        code = main(["--data", str(data), *args, "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return json.loads(captured.out)

    nominal("index", "line-3", str(hazelnut / "test" / "good"))
    doomed = subprocess.Popen([sys.executable, "-m", "app.cli.main", "--data", str(data), "reindex", "line-3", str(source), "--wait"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(j.get("state") == "running" and j.get("done", 0) >= 32 for j in _job_records(data)):
            assert doomed.poll() is None and time.monotonic() < deadline, "the re-index ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=30)

    [job] = nominal("jobs")["jobs"]
    assert job["state"] == "failed" and job["message"].startswith("interrupted"), job
    assert nominal("settings")["settings"][0]["images"] == 6  # still answered from the version before the re-index

    again = nominal("reindex", "line-3", str(source), "--wait")
    assert again["state"] == "succeeded" and again["result"]["count"] == 28  # 4 copies of 28 distinct images
    # The half-built version is gone: what is left belongs to versions 1 and 2 (a fused version keeps a global
    # collection, a patch bank and positional statistics).
    collections = sorted(p.name for p in (data / "collections").iterdir() if not p.name.startswith("."))
    assert {re.search(r"__v(\d+)", name).group(1) for name in collections} == {"1", "2"}, collections
    assert again["result"]["collection"] in collections, collections


def _job_records(data: Path) -> list[dict]:
    """The job records as the store writes them (one JSON file each, replaced atomically), read without opening it."""
    found = []
    for path in (data / "records" / "job").glob("*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
    return found
