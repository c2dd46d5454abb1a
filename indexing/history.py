"""Inspection history: every verdict, per setting, in a SQLite file beside the store.

One row per verdict: time, setting, verdict, score, threshold, p-value, calibration id,
collection version, image SHA-256 and source, latency. The image itself is kept (one
file per SHA-256 under `images/SETTING/`) for FAIL verdicts, near-threshold verdicts
on both sides (`|score - threshold| <= near * threshold`) and UNCALIBRATED verdicts
with a p-value at or below `keep_p`: the ones an operator reviews or a re-calibration
needs.

Why SQLite: one row is one transaction, so a process killed at any instant leaves
the history with or without that row, never half of it (WAL journal; `synchronous =
NORMAL` makes a commit a write into the WAL, not an fsync: a power cut may lose the
last commits, a crash of the process loses none). Several processes (uvicorn
workers, the CLI reading while the server writes) share the file safely on a local
disk. An image file is written to a temporary name and renamed, before its row is
committed.

Recording never fails a verdict: any error (a full disk, a read-only folder, a locked
database) is logged once a minute at most and counted in `dropped`; the verdict is
answered as if nothing happened.

Retention: rows and images older than `keep_days` are deleted, and when kept images
pass `max_bytes` the oldest are deleted (their rows stay, without the image). Pruning
runs on the recording thread at most once every `prune_every` seconds.

Review queue: a verdict that keeps its image because it is near the threshold (either
side) or a FAIL is sampled into the setting's review queue (`review = 'queued'`), at
most `review_per_hour` per setting per hour, half for each of the two reasons, so a
burst of FAILs never crowds out the uncertain verdicts. The count and the insert are
one SQL statement, so processes sharing the file keep to the cap together. The queue
(`review_queue`) is the queued rows whose image is still kept, oldest first; an
operator's answer (`set_review`: PASS, FAIL or skip) is kept on the row, and what a
label does lives in `indexing.review`. Deleting a setting deletes its rows, so its
queue and labels go with it.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexing.drift import RecentEmbeddings
from indexing.images import ImageInput
from indexing.settings import CollectionVersion, MachineSetting
from indexing.verdicts import Verdict

log = logging.getLogger("nominal.history")

VERDICTS = ("PASS", "FAIL", "UNCALIBRATED")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    setting TEXT NOT NULL,
    at REAL NOT NULL,
    verdict TEXT NOT NULL,
    score REAL,
    threshold REAL,
    p_value REAL,
    calibration_id TEXT,
    version INTEGER,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    image TEXT,
    image_bytes INTEGER NOT NULL DEFAULT 0,
    review TEXT,
    review_reason TEXT,
    reviewed_at REAL
);
CREATE INDEX IF NOT EXISTS inspections_by_setting ON inspections (setting, id);
CREATE INDEX IF NOT EXISTS inspections_by_time ON inspections (at);
"""
# Files written before the review queue lack its columns: added in place (NULL: never queued).
_REVIEW_COLUMNS = (("review", "TEXT"), ("review_reason", "TEXT"), ("reviewed_at", "REAL"))
_REVIEW_INDEXES = """
CREATE INDEX IF NOT EXISTS inspections_sampled ON inspections (setting, review_reason, at);
CREATE INDEX IF NOT EXISTS inspections_review ON inspections (setting, review, id);
"""
REVIEW_LABELS = ("PASS", "FAIL", "skip")


@dataclass(frozen=True)
class Inspection:
    """One recorded verdict. `at` is seconds since the epoch; `image` the kept file's name, or None."""

    id: int
    setting: str
    at: float
    verdict: str
    score: float | None
    threshold: float | None
    p_value: float | None
    calibration_id: str | None
    version: int | None
    sha256: str
    source: str
    latency_ms: float
    image: str | None
    review: str | None = None  # None (not sampled), "queued", or the operator's answer: PASS, FAIL, skip
    review_reason: str | None = None  # why it was queued: "near" (the threshold) or "fail"
    reviewed_at: float | None = None

    @classmethod
    def of_row(cls, row: sqlite3.Row) -> "Inspection":
        return cls(**{key: row[key] for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Page:
    items: list[Inspection]
    next_cursor: str | None


class BadCursor(ValueError):
    pass


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class History:
    """The inspection history of one installation (a folder). Thread-safe; opened on first use.

    Args:
        root: folder of `history.sqlite` and `images/`.
        keep_days: rows and images older than this are deleted (None: kept for ever).
        max_bytes: kept images beyond this many bytes are deleted, oldest first (None: no limit).
        near: relative band around the threshold whose verdicts keep their image.
        keep_p: UNCALIBRATED verdicts with a p-value at or below this keep their image.
        keep_images: False keeps rows only.
        review_per_hour: verdicts sampled into the review queue per setting per hour (half near the
            threshold, half FAIL); 0 turns the queue off.
        embedding_window: global embeddings of the latest verdicts kept in memory per setting
            (`embeddings`, for drift's mean-embedding shift; not stored in the file).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        keep_days: float | None = 90.0,
        max_bytes: int | None = 2_000_000_000,
        near: float = 0.1,
        keep_p: float = 0.01,
        keep_images: bool = True,
        prune_every: float = 60.0,
        embedding_window: int = 1000,
        review_per_hour: int = 60,
    ) -> None:
        self.root = Path(root)
        self.keep_days = keep_days
        self.max_bytes = max_bytes
        self.near = near
        self.keep_p = keep_p
        self.keep_images = keep_images
        self.prune_every = prune_every
        self.review_per_hour = review_per_hour
        self.embeddings = RecentEmbeddings(embedding_window)
        self.dropped = 0
        self.recorded = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._last_prune = 0.0
        self._last_warning = -math.inf

    # ------------------------------------------------------------ connection

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.root / "history.sqlite", timeout=5.0, isolation_level=None,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            present = {row["name"] for row in db.execute("PRAGMA table_info(inspections)")}
            for column, kind in _REVIEW_COLUMNS:
                if column not in present:
                    try:
                        db.execute(f"ALTER TABLE inspections ADD COLUMN {column} {kind}")
                    except sqlite3.OperationalError:  # another process added it first
                        pass
            db.executescript(_REVIEW_INDEXES)
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ------------------------------------------------------------- recording

    def hook(self, setting: MachineSetting, version: CollectionVersion, images: Sequence[ImageInput],
             verdicts: Sequence[Verdict]) -> None:
        """`NominalService.on_verdicts` hook: record (and keep the embeddings in memory), never raise."""
        at = time.time()
        try:
            self.embeddings.add(setting.name, version.version, verdicts, at)
        except Exception as error:  # noqa: BLE001 - drift's memory must never fail a verdict
            self._dropped(error, count=False)
        self.record(setting.name, version.version, images, verdicts, at=at)

    def record(self, setting: str, version: int | None, images: Sequence[ImageInput], verdicts: Sequence[Verdict],
               *, at: float | None = None) -> int:
        """Record verdicts (one per image, in order); returns how many were recorded. Never raises."""
        at = time.time() if at is None else at
        done = 0
        for image, verdict in zip(images, verdicts):
            try:
                self._record_one(setting, version, image, verdict, at)
                done += 1
            except Exception as error:  # noqa: BLE001 - a full disk must never turn a verdict into an error
                self._dropped(error)
        self.recorded += done
        if done and time.monotonic() - self._last_prune >= self.prune_every:
            self._last_prune = time.monotonic()
            try:
                self.prune()
            except Exception as error:  # noqa: BLE001
                self._dropped(error, count=False)
        return done

    def _keeps_image(self, verdict: Verdict) -> bool:
        if not self.keep_images:
            return False
        if verdict.verdict == "FAIL":
            return True
        if verdict.threshold is not None:
            return abs(verdict.score - verdict.threshold) <= self.near * abs(verdict.threshold)
        return verdict.p_value is not None and verdict.p_value <= self.keep_p

    def _review_reason(self, verdict: Verdict) -> str | None:
        """Why a verdict whose image is kept goes to review: "near" the threshold (either side), a "fail", or None."""
        if verdict.threshold is None or not self.review_per_hour:
            return None
        if abs(verdict.score - verdict.threshold) <= self.near * abs(verdict.threshold):
            return "near"
        return "fail" if verdict.verdict == "FAIL" else None

    def _record_one(self, setting: str, version: int | None, image: ImageInput, verdict: Verdict, at: float) -> None:
        name, size, reason = None, 0, None
        if self._keeps_image(verdict):
            name, size = self._keep_image(setting, image)
            reason = self._review_reason(verdict)
        columns = (setting, at, verdict.verdict, _finite(verdict.score), _finite(verdict.threshold),
                   _finite(verdict.p_value), verdict.calibration_id, version, image.sha256, image.source,
                   float(verdict.elapsed_ms), name, size)
        insert = ("INSERT INTO inspections (setting, at, verdict, score, threshold, p_value, calibration_id, version, "
                  "sha256, source, latency_ms, image, image_bytes, review, review_reason) ")
        if reason is None:
            self._db().execute(insert + "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,NULL,NULL)", columns)
            return
        # Sampled under the cap in the same statement that inserts: no other writer slips in between.
        cap = (self.review_per_hour + 1) // 2
        self._db().execute(
            insert + "SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?, CASE WHEN n < ? THEN 'queued' END, CASE WHEN n < ? THEN ? END "
            "FROM (SELECT COUNT(*) AS n FROM inspections WHERE setting = ? AND review_reason = ? AND at > ?)",
            (*columns, cap, cap, reason, setting, reason, at - 3600.0),
        )

    def _keep_image(self, setting: str, image: ImageInput) -> tuple[str, int]:
        suffix = Path(image.source).suffix.lower()
        suffix = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp") else ".img"
        name = f"{setting}/{image.sha256}{suffix}"
        path = self.root / "images" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
            try:
                partial.write_bytes(image.data)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        return name, len(image.data)

    def _dropped(self, error: Exception, *, count: bool = True) -> None:
        if count:
            self.dropped += 1
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            log.warning("inspection history not recorded (%s: %s); verdicts are unaffected, %d dropped so far",
                        type(error).__name__, error, self.dropped)

    # --------------------------------------------------------------- reading

    def query(
        self,
        setting: str,
        *,
        since: float | None = None,
        until: float | None = None,
        verdict: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        """Newest first; `since` inclusive, `until` exclusive; `next_cursor` continues after the last item.

        Raises:
            BadCursor: a cursor this history did not hand out.
        """
        clauses, args = ["setting = ?"], [setting]
        if since is not None:
            clauses.append("at >= ?")
            args.append(since)
        if until is not None:
            clauses.append("at < ?")
            args.append(until)
        if verdict is not None:
            clauses.append("verdict = ?")
            args.append(verdict)
        if cursor is not None:
            clauses.append("id < ?")
            args.append(decode_cursor(cursor))
        if not (self.root / "history.sqlite").exists():
            return Page(items=[], next_cursor=None)
        rows = self._db().execute(
            f"SELECT * FROM inspections WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?", (*args, limit + 1)
        ).fetchall()
        items = [Inspection.of_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(items=items, next_cursor=encode_cursor(items[-1].id) if more and items else None)

    def recent(self, setting: str, *, last: int | None = None, since: float | None = None) -> list[Inspection]:
        """The newest `last` verdicts and/or those at or after `since`, oldest first."""
        if not (self.root / "history.sqlite").exists():
            return []
        clauses, args = ["setting = ?"], [setting]
        if since is not None:
            clauses.append("at >= ?")
            args.append(since)
        sql = f"SELECT * FROM inspections WHERE {' AND '.join(clauses)} ORDER BY id DESC"
        if last is not None:
            sql += " LIMIT ?"
            args.append(last)
        return [Inspection.of_row(row) for row in reversed(self._db().execute(sql, args).fetchall())]

    def get(self, setting: str, inspection_id: int) -> Inspection | None:
        if not (self.root / "history.sqlite").exists():
            return None
        row = self._db().execute("SELECT * FROM inspections WHERE setting = ? AND id = ?",
                                 (setting, inspection_id)).fetchone()
        return None if row is None else Inspection.of_row(row)

    def review_queue(self, setting: str, *, limit: int = 20) -> tuple[list[Inspection], int]:
        """The oldest `limit` queued inspections whose image is still kept, and how many are queued in all."""
        if not (self.root / "history.sqlite").exists():
            return [], 0
        where = "setting = ? AND review = 'queued' AND image IS NOT NULL"
        db = self._db()
        rows = db.execute(f"SELECT * FROM inspections WHERE {where} ORDER BY id LIMIT ?", (setting, limit)).fetchall()
        total = db.execute(f"SELECT COUNT(*) FROM inspections WHERE {where}", (setting,)).fetchone()[0]
        return [Inspection.of_row(row) for row in rows], int(total)

    def set_review(self, setting: str, inspection_id: int, label: str, *, at: float | None = None) -> bool:
        """Keep an operator's answer (PASS, FAIL or skip) on an inspection not reviewed yet; False if it already was."""
        if label not in REVIEW_LABELS:
            raise ValueError(f"label must be one of {', '.join(REVIEW_LABELS)}, got {label!r}")
        done = self._db().execute(
            "UPDATE inspections SET review = ?, reviewed_at = ? WHERE setting = ? AND id = ? "
            "AND (review IS NULL OR review = 'queued')",
            (label, time.time() if at is None else at, setting, inspection_id),
        )
        return done.rowcount == 1

    def image_path(self, inspection: Inspection) -> Path | None:
        if inspection.image is None:
            return None
        path = self.root / "images" / inspection.image
        return path if path.is_file() else None

    # ------------------------------------------------------------- retention

    def prune(self, *, now: float | None = None) -> dict[str, int]:
        """Apply retention now: rows older than `keep_days`, then images beyond `max_bytes`, oldest first."""
        now = time.time() if now is None else now
        removed_rows = removed_images = 0
        with self._lock:
            db = self._db()
            if self.keep_days is not None:
                cutoff = now - self.keep_days * 86400.0
                doomed = [r["image"] for r in db.execute(
                    "SELECT DISTINCT image FROM inspections WHERE at < ? AND image IS NOT NULL", (cutoff,))]
                removed_rows = db.execute("DELETE FROM inspections WHERE at < ?", (cutoff,)).rowcount
                removed_images += self._unlink_unreferenced(db, doomed)
            if self.max_bytes is not None:
                total = db.execute(
                    "SELECT COALESCE(SUM(b), 0) FROM (SELECT MAX(image_bytes) AS b FROM inspections "
                    "WHERE image IS NOT NULL GROUP BY image)").fetchone()[0]
                while total > self.max_bytes:
                    oldest = db.execute("SELECT image, MAX(image_bytes) AS b FROM inspections WHERE image IS NOT NULL "
                                        "GROUP BY image ORDER BY MIN(id) LIMIT 200").fetchall()
                    if not oldest:
                        break
                    for row in oldest:
                        if total <= self.max_bytes:
                            break
                        db.execute("UPDATE inspections SET image = NULL WHERE image = ?", (row["image"],))
                        removed_images += self._unlink_unreferenced(db, [row["image"]])
                        total -= row["b"]
        return {"rows": removed_rows, "images": removed_images}

    def _unlink_unreferenced(self, db: sqlite3.Connection, names: list[str]) -> int:
        removed = 0
        for name in names:
            if db.execute("SELECT 1 FROM inspections WHERE image = ? LIMIT 1", (name,)).fetchone() is None:
                try:
                    (self.root / "images" / name).unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def delete_setting(self, setting: str) -> None:
        self.embeddings.forget(setting)
        if not (self.root / "history.sqlite").exists():
            return
        with self._lock:
            db = self._db()
            names = [r["image"] for r in db.execute(
                "SELECT DISTINCT image FROM inspections WHERE setting = ? AND image IS NOT NULL", (setting,))]
            db.execute("DELETE FROM inspections WHERE setting = ?", (setting,))
            self._unlink_unreferenced(db, names)


def encode_cursor(last_id: int) -> str:
    return f"i{last_id}"


def decode_cursor(cursor: str) -> int:
    if not (isinstance(cursor, str) and cursor.startswith("i") and cursor[1:].isdigit()):
        raise BadCursor(f"cursor {cursor[:40]!r} was not handed out by this history: pass the next_cursor of the previous page")
    return int(cursor[1:])
