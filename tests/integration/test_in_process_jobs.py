"""Index jobs run in-process: images go by reference, status is readable, bad images are listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexing.image_store import ImageStore
from indexing.images import ImageInput
from indexing.runner import InProcessRunner
from tests.waiting import wait_for_job

pytestmark = pytest.mark.slow



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
