"""Re-index and rollback over HTTP, in-process runner (no REDIS_URL): 202 + a job, then a switch."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Config

pytestmark = pytest.mark.slow


def test_reindex_then_rollback_over_http(tmp_path: Path, hazelnut: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(hazelnut / "train" / "good", source)
    config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data", NOMINAL_SOURCE_ROOTS=f"{tmp_path}:{hazelnut}")
    with TestClient(create_app(config)) as client:
        assert client.put("/v1/settings/hz", json={"k": 1}).status_code == 201
        empty = client.post("/v1/settings/hz/reindex", json={"source": str(tmp_path / "nothing")})
        assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "source"]
        for folder in (hazelnut / "test" / "good", source):
            accepted = client.post("/v1/settings/hz/reindex", json={"source": str(folder)})
            assert accepted.status_code == 202, accepted.text
            deadline = time.monotonic() + 120
            while (job := client.get(accepted.json()["url"]).json())["state"] not in ("succeeded", "failed", "cancelled"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert job["state"] == "succeeded", job["message"]
        assert client.get("/v1/settings/hz").json()["images"] == 28
        back = client.post("/v1/settings/hz/rollback")
        assert back.status_code == 200 and (back.json()["images"], back.json()["active_version"]) == (6, 1)
        assert client.post("/v1/settings/hz/rollback").status_code == 409


def test_reindex_over_http_reads_only_inside_the_source_roots(tmp_path: Path, hazelnut: Path) -> None:
    inside = tmp_path / "sources" / "line-3"
    shutil.copytree(hazelnut / "train" / "good", inside)
    for roots, source, status, says in (
        ("", inside, 403, "NOMINAL_SOURCE_ROOTS"),  # off unless configured
        (str(tmp_path / "sources"), hazelnut / "train" / "good", 403, "outside"),
        (str(tmp_path / "sources"), "/etc/*", 403, "outside"),
        (str(tmp_path / "sources"), inside, 202, ""),
    ):
        config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data", NOMINAL_SOURCE_ROOTS=roots)
        with TestClient(create_app(config)) as client:
            client.put("/v1/settings/hz", json={"k": 1})
            answer = client.post("/v1/settings/hz/reindex", json={"source": str(source)})
            assert answer.status_code == status, answer.text
            if status == 403:
                error = answer.json()["detail"][0]
                assert error["loc"] == ["body", "source"] and says in error["msg"]
                assert client.get("/v1/jobs").json()["jobs"] == []  # nothing was queued
            else:
                deadline = time.monotonic() + 120
                while client.get(answer.json()["url"]).json()["state"] not in ("succeeded", "failed", "cancelled"):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)


def test_a_symlink_swapped_after_the_202_cannot_lead_the_job_out_of_the_roots(tmp_path: Path, hazelnut: Path) -> None:
    """The roots are checked where each file is opened, not only when the request is accepted.

    The job is held behind another one so the source can change between the 202 and the read:
    one symlink is swapped to point outside the roots, and a new one pointing outside is added.
    """
    import threading

    from indexing.images import ImageInput
    from indexing.jobs import new_job

    real, line = tmp_path / "sources" / "real", tmp_path / "sources" / "line-3"
    shutil.copytree(hazelnut / "test" / "good", real)
    line.mkdir()
    for image in sorted(real.iterdir()):
        (line / image.name).symlink_to(image)
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    shutil.copy(hazelnut / "test" / "colour" / "00.jpg", secret)
    config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data", NOMINAL_SOURCE_ROOTS=str(tmp_path / "sources"))
    with TestClient(create_app(config)) as client:
        client.put("/v1/settings/hz", json={"k": 1})
        runner = client.app.state.runtime.runner
        release = threading.Event()
        runner._submit(new_job("hold", "hz"), lambda progress: release.wait(60) and {})  # the job queue is busy
        accepted = client.post("/v1/settings/hz/reindex", json={"source": str(line)})
        assert accepted.status_code == 202, accepted.text

        swapped = line / sorted(p.name for p in real.iterdir())[0]
        (line / "tmp-link").symlink_to(secret)
        (line / "tmp-link").replace(swapped)  # atomic swap of an accepted file's symlink
        (line / "zz-new.jpg").symlink_to(secret)  # a file added to the folder, pointing out
        release.set()

        deadline = time.monotonic() + 120
        while (job := client.get(accepted.json()["url"]).json())["state"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The folder now names a file outside: the job refuses to read it and fails before building anything.
        assert job["state"] == "failed" and "outside the directories" in job["message"], job
        assert client.get("/v1/settings/hz").json()["images"] == 0
        secret_id = ImageInput.from_path(secret).id
        assert client.get(f"/v1/settings/hz/images/{secret_id}").status_code == 404


def test_a_file_swapped_after_listing_is_refused_where_it_is_opened(tmp_path: Path, hazelnut: Path) -> None:
    """Between the job's own listing and a worker opening the file, a symlink swap is caught at the open."""
    from indexing.sources import read_source

    root = tmp_path / "sources"
    (root / "line-3").mkdir(parents=True)
    good = sorted((hazelnut / "test" / "good").iterdir())
    for image in good:
        shutil.copy(image, root / image.name)
        (root / "line-3" / image.name).symlink_to(root / image.name)
    secret = tmp_path / "secret.jpg"
    shutil.copy(hazelnut / "test" / "colour" / "00.jpg", secret)
    items = read_source(root / "line-3", [root])
    (root / "line-3" / "tmp").symlink_to(secret)
    (root / "line-3" / "tmp").replace(root / "line-3" / good[0].name)
    from indexing.errors import BadImage

    with pytest.raises(BadImage, match="outside the directories"):
        items[0].load()
    assert items[1].load().data == good[1].read_bytes()
    # An item carries its roots to whichever process opens it (a Celery worker gets it as JSON).
    from indexing.sources import SourceItem

    travelled = SourceItem.from_dict(items[0].to_dict())
    with pytest.raises(BadImage, match="outside the directories"):
        travelled.load()
