"""Pure parts of re-indexing and the worker setup: sources, points across processes, Celery policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.config import Config
from indexing.errors import NoImages, SourceNotAllowed
from indexing.reindex import batch_from_dict, batch_to_dict, batches_of, read_source, read_source_within
from indexing.service import EmbeddedBatch, Skipped
from indexing.store.base import Point
from workers.celery_app import EMBED_QUEUE, celery_settings


def test_a_manifest_resolves_paths_against_its_folder_and_keeps_metadata(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,lot,line\na.png,L1,3\n/abs/b.png,,4\n,L9,5\n")
    items = read_source(tmp_path / "m.csv")
    assert [i.path for i in items] == [str(tmp_path / "a.png"), "/abs/b.png"]
    assert [i.metadata for i in items] == [{"lot": "L1", "line": "3"}, {"line": "4"}]


def test_a_manifest_without_a_path_column_says_what_it_needs(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,lot\na.png,L1\n")
    with pytest.raises(NoImages, match="`path` column"):
        read_source(tmp_path / "m.csv")


def test_a_folder_source_lists_its_images(tmp_path: Path, hazelnut: Path) -> None:
    items = read_source(hazelnut / "test" / "good")
    assert len(items) == 6 and all(i.metadata == {} for i in items)
    assert [len(b) for b in batches_of(items, 4)] == [4, 2]


def test_a_source_named_over_http_must_lie_inside_the_allowed_roots(tmp_path: Path, hazelnut: Path) -> None:
    import shutil

    root, elsewhere = tmp_path / "sources", tmp_path / "elsewhere"
    shutil.copytree(hazelnut / "test" / "good", root / "line-3")
    shutil.copytree(hazelnut / "test" / "good", elsewhere)
    assert len(read_source_within(root / "line-3", [root])) == 6
    assert len(read_source_within(f"{root}/line-3/*.jpg", [root])) == 6
    (root / "inside.csv").write_text("path\nline-3/" + next((root / "line-3").iterdir()).name + "\n")
    assert len(read_source_within(root / "inside.csv", [root])) == 1

    (root / "escape.csv").write_text(f"path\n{next(elsewhere.iterdir())}\n")  # a manifest pointing out
    (root / "link").symlink_to(elsewhere, target_is_directory=True)  # a symlink pointing out
    # Checked before listing: a missing folder outside is refused, not reported as empty.
    outsiders = (elsewhere, f"{elsewhere}/*.jpg", root / ".." / "elsewhere", tmp_path / "missing")
    for outside in (*outsiders, root / "escape.csv", root / "link"):
        with pytest.raises(SourceNotAllowed, match="outside the directories"):
            read_source_within(outside, [root])
    with pytest.raises(SourceNotAllowed, match="none configured"):
        read_source_within(root / "line-3", [])
    with pytest.raises(NoImages):
        read_source_within(root / "missing", [root])


def test_points_survive_the_trip_through_the_result_backend() -> None:
    vector = np.random.default_rng(0).standard_normal(1280).astype(np.float32)
    batch = EmbeddedBatch(
        points=[Point(id="516485a7-15e5-66ab-78ef-2495313836e2", vector=vector, payload={"source": "a.png"})],
        skipped=[Skipped(source="b.png", reason="truncated")],
    )
    back = batch_from_dict(batch_to_dict(batch))
    assert back.points[0].id == batch.points[0].id and back.points[0].payload == {"source": "a.png"}
    np.testing.assert_array_equal(back.points[0].vector, vector)
    assert back.skipped == batch.skipped


def test_celery_delivery_policy() -> None:
    config = Config(_env_file=None, REDIS_URL="redis://127.0.0.1:6379/5", NOMINAL_VISIBILITY_TIMEOUT=300)
    settings = celery_settings(config)
    assert settings["task_acks_late"] and settings["task_reject_on_worker_lost"]
    assert settings["worker_prefetch_multiplier"] == 1
    assert settings["broker_transport_options"]["visibility_timeout"] == 300
    assert settings["broker_transport_options"]["unacked_restore_interval"] <= 30
    assert settings["task_routes"]["nominal.embed_batch"]["queue"] == EMBED_QUEUE


def test_a_blank_redis_url_means_in_process() -> None:
    assert Config(_env_file=None, REDIS_URL=" ").redis_url is None
