"""The inspection history on its own: what is recorded, paging, retention, and a full disk."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from indexing.history import BadCursor, History
from indexing.images import ImageInput
from indexing.verdicts import Verdict
from tests.disks import fill, tiny_disk as mount_tiny_disk

NOW = round(time.time())  # recent: retention would delete verdicts of 1970


def image(n: int) -> ImageInput:
    return ImageInput(data=f"image {n} ".encode() * 100, source=f"cam/{n:04d}.png")


def verdict(outcome: str, score: float, threshold: float | None = 0.5, p: float | None = 0.3) -> Verdict:
    return Verdict(source="x", image_id="x", verdict=outcome, score=score, threshold=threshold,  # type: ignore[arg-type]
                   calibration_id="cal-1" if threshold is not None else None, elapsed_ms=12.5, p_value=p)


def test_every_verdict_is_recorded_with_what_explains_it(tmp_path: Path) -> None:
    history = History(tmp_path)
    assert history.record("line-3", 2, [image(1)], [verdict("FAIL", 0.9, p=0.01)], at=NOW) == 1
    [item] = history.query("line-3").items
    assert (item.setting, item.at, item.verdict, item.score, item.threshold, item.p_value) == (
        "line-3", NOW, "FAIL", 0.9, 0.5, 0.01)
    assert (item.calibration_id, item.version, item.sha256, item.source, item.latency_ms) == (
        "cal-1", 2, image(1).sha256, "cam/0001.png", 12.5)
    assert history.image_path(item).read_bytes() == image(1).data


def test_images_are_kept_for_fail_and_near_threshold_verdicts_only(tmp_path: Path) -> None:
    history = History(tmp_path, near=0.1)
    cases = [verdict("FAIL", 0.9), verdict("PASS", 0.46), verdict("PASS", 0.2), verdict("FAIL", 0.52),
             verdict("UNCALIBRATED", 0.9, threshold=None, p=0.005), verdict("UNCALIBRATED", 0.3, threshold=None, p=0.4)]
    history.record("s", 1, [image(i) for i in range(len(cases))], cases)
    kept = [history.image_path(i) is not None for i in reversed(history.query("s").items)]
    assert kept == [True, True, False, True, True, False]


def test_pages_newest_first_by_cursor_with_filters(tmp_path: Path) -> None:
    history = History(tmp_path)
    for n in range(25):
        history.record("s", 1, [image(n)], [verdict("FAIL" if n % 5 == 0 else "PASS", 0.1)], at=NOW + n)
    history.record("other", 1, [image(99)], [verdict("PASS", 0.1)], at=NOW + 10)
    seen, cursor = [], None
    while True:
        page = history.query("s", limit=10, cursor=cursor)
        seen += [i.at for i in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [NOW + n for n in reversed(range(25))]
    assert [i.at - NOW for i in history.query("s", verdict="FAIL").items] == [20, 15, 10, 5, 0]
    assert [i.at - NOW for i in history.query("s", since=NOW + 10, until=NOW + 13).items] == [12, 11, 10]
    with pytest.raises(BadCursor, match="next_cursor"):
        history.query("s", cursor="DROP TABLE")


def test_retention_by_age_and_by_bytes(tmp_path: Path) -> None:
    history = History(tmp_path, keep_days=1, max_bytes=3 * len(image(0).data), prune_every=1e9)
    day = 86400.0
    for n in range(6):
        history.record("s", 1, [image(n)], [verdict("FAIL", 0.9)], at=10 * day + n * 0.4 * day)
    result = history.prune(now=12 * day)  # rows before day 11 go: n = 0, 1, 2
    assert result["rows"] == 3
    left = list(reversed(history.query("s").items))
    assert [round(i.at / day, 1) for i in left] == [11.2, 11.6, 12.0]
    assert all(history.image_path(i) is not None for i in left)
    history.max_bytes = 2 * len(image(0).data)
    history.prune(now=12 * day)
    left = list(reversed(history.query("s").items))
    assert [history.image_path(i) is not None for i in left] == [False, True, True], "the oldest image goes first"
    assert len(list((tmp_path / "images" / "s").iterdir())) == 2


@pytest.fixture
def tiny_disk(tmp_path: Path):
    with mount_tiny_disk(tmp_path / "tiny", "512k") as mount:
        yield mount


def test_a_full_disk_drops_records_without_raising_and_recording_resumes(tiny_disk: Path) -> None:
    history = History(tiny_disk / "history")
    history.record("s", 1, [image(0)], [verdict("FAIL", 0.9)])
    filler = fill(tiny_disk)
    big = [ImageInput(data=uuid.uuid4().bytes * 8000, source=f"b{n}.png") for n in range(20)]
    recorded = history.record("s", 1, big, [verdict("FAIL", 0.9)] * 20)  # must not raise
    assert recorded < 20 and history.dropped == 20 - recorded
    filler.unlink()
    assert history.record("s", 1, [image(7)], [verdict("FAIL", 0.9)]) == 1
    db = sqlite3.connect(tiny_disk / "history" / "history.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not list((tiny_disk / "history" / "images" / "s").glob(".*.part")), "no partial image left behind"


def test_the_review_queue_samples_near_threshold_and_fail_verdicts_under_an_hourly_cap(tmp_path: Path) -> None:
    history = History(tmp_path, near=0.1, review_per_hour=4)  # two an hour for each reason
    burst = [verdict("FAIL", 0.9 + i / 100) for i in range(6)]  # a burst of clear FAILs
    near = [verdict("PASS", 0.47), verdict("FAIL", 0.53), verdict("PASS", 0.48)]  # both sides of 0.5
    plain = [verdict("PASS", 0.1), verdict("UNCALIBRATED", 0.9, threshold=None, p=0.001)]
    cases = burst + near + plain
    history.record("s", 1, [image(i) for i in range(len(cases))], cases, at=NOW)
    queue, total = history.review_queue("s")
    assert total == 4 and [(i.verdict, i.score, i.review_reason) for i in queue] == [
        ("FAIL", 0.9, "fail"), ("FAIL", 0.91, "fail"), ("PASS", 0.47, "near"), ("FAIL", 0.53, "near")]
    assert all(i.review == "queued" for i in queue)
    # An hour later the cap has room again; another setting has its own.
    history.record("s", 1, [image(50)], [verdict("PASS", 0.49)], at=NOW + 3601)
    history.record("t", 1, [image(51)], [verdict("FAIL", 0.95)], at=NOW)
    assert history.review_queue("s")[1] == 5 and history.review_queue("t")[1] == 1
    assert history.review_queue("s", limit=2)[0] == queue[:2]


def test_a_review_answer_is_kept_once_and_leaves_the_queue_as_do_pruned_images(tmp_path: Path) -> None:
    history = History(tmp_path, review_per_hour=10)
    history.record("s", 1, [image(i) for i in range(3)], [verdict("FAIL", 0.9 + i / 10) for i in range(3)], at=NOW)
    first, second, third = history.review_queue("s")[0]
    assert history.set_review("s", first.id, "FAIL", at=NOW + 5)
    assert not history.set_review("s", first.id, "PASS")  # the first answer stands
    assert history.get("s", first.id).review == "FAIL" and history.get("s", first.id).reviewed_at == NOW + 5
    assert history.set_review("s", second.id, "skip")
    with pytest.raises(ValueError, match="label"):
        history.set_review("s", third.id, "MAYBE")
    assert [i.id for i in history.review_queue("s")[0]] == [third.id]
    history.max_bytes = 0
    history.prune(now=NOW)
    assert history.review_queue("s") == ([], 0)  # its image is gone: nothing to show an operator
    history.delete_setting("s")
    assert history.get("s", first.id) is None


def test_a_history_file_from_before_the_review_queue_gains_its_columns(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "history.sqlite")
    db.executescript("""CREATE TABLE inspections (id INTEGER PRIMARY KEY AUTOINCREMENT, setting TEXT NOT NULL,
        at REAL NOT NULL, verdict TEXT NOT NULL, score REAL, threshold REAL, p_value REAL, calibration_id TEXT,
        version INTEGER, sha256 TEXT NOT NULL, source TEXT NOT NULL, latency_ms REAL NOT NULL, image TEXT,
        image_bytes INTEGER NOT NULL DEFAULT 0);
        INSERT INTO inspections (setting, at, verdict, sha256, source, latency_ms) VALUES ('s', 1, 'PASS', 'h', 'x', 1);""")
    db.commit()
    db.close()
    history = History(tmp_path, keep_days=None)
    assert history.query("s").items[0].review is None
    history.record("s", 1, [image(1)], [verdict("FAIL", 0.9)], at=NOW)
    assert history.review_queue("s")[1] == 1
