"""Hot folder: a camera writes images into a folder; each is judged once, reported and moved.

`Watcher.run` polls the folder. A file is taken once it is complete: its size and
modification time have not changed for `settle` seconds (a file renamed in arrives
complete and passes the same check). Hidden files and names ending in `.part`,
`.tmp`, `.crdownload` or `.filepart` are never taken: cameras write under such names.

For each file, in this order, every step recorded in a journal (SQLite,
`FOLDER/.nominal-watch/journal.sqlite`) before the next:

1. judge it (`judge`: the embedded service or the HTTP API), and record the verdict;
2. append one line to the results CSV (skipped if the CSV already holds its id:
   read once at start, so a crash between the append and the journal never repeats it);
3. queue the verdict JSON for the webhook, in the journal (a background thread posts
   it, retrying with exponential backoff from 1 s to 60 s; a slow or dead receiver
   never holds up judging; each failed attempt is counted and logged);
4. move the file to `MOVE_TO/pass/`, `MOVE_TO/fail/` (or `uncalibrated/`, and
   `error/` for a file that is not a usable image).

A file that changes while it is judged is judged again once it settles, and one that is
not a usable image is called ERROR only once it has been still for max(5 s, 10 x settle)
(cameras pause mid-write). A restart resumes unfinished files from the step they reached, so no file is skipped
and none is reported twice. A file is recognised by name, size and modification time;
without `--move-to` the judged files stay and are not judged again.
Webhook delivery is at least once: a kill between a receiver's 200 and the journal
update re-sends that verdict, with the same `id`, which receivers use to drop repeats.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib.error
import urllib.request

from indexing.errors import BadImage, NominalError
from indexing.images import IMAGE_SUFFIXES, ImageInput

log = logging.getLogger("nominal.watch")

TEMPORARY_SUFFIXES = (".part", ".tmp", ".crdownload", ".filepart")
CSV_COLUMNS = ["id", "file", "verdict", "score", "threshold", "p_value", "calibration_id", "judged_at", "moved_to", "error"]
STATE_DIR = ".nominal-watch"

# judge(image) -> the verdict as the API's JSON (VerdictPublic). It raises BadImage for a file that is not a
# usable image (reported as ERROR and moved to error/); any other error (the API down, say) leaves the file
# for a later attempt.
Judge = Callable[[ImageInput], dict[str, Any]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    verdict TEXT NOT NULL, result TEXT NOT NULL, judged_at REAL NOT NULL,
    csv_done INTEGER NOT NULL DEFAULT 0, queued INTEGER NOT NULL DEFAULT 0, moved_to TEXT, done INTEGER NOT NULL DEFAULT 0,
    UNIQUE (name, size, mtime_ns)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0, last_error TEXT
);
"""


@dataclass
class WatchStats:
    judged: int = 0
    errors: int = 0
    webhook_sent: int = 0
    webhook_failures: int = 0
    seen: dict[str, tuple[int, int, float]] = field(default_factory=dict)


class Journal:
    """The watcher's record of every file it took: crash-safe (one step, one transaction)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self.lock:
            return self.db.execute(sql, args)

    def known(self, name: str, size: int, mtime_ns: int) -> bool:
        return self.execute("SELECT 1 FROM files WHERE name=? AND size=? AND mtime_ns=?",
                            (name, size, mtime_ns)).fetchone() is not None

    def close(self) -> None:
        with self.lock:
            self.db.close()


class WebhookSender:
    """Posts queued verdicts from the journal's outbox on its own thread, with backoff; never blocks judging."""

    def __init__(self, url: str, journal: Journal, stats: WatchStats, *, timeout: float = 10.0,
                 first_delay: float = 1.0, max_delay: float = 60.0) -> None:
        self.url = url
        self.journal = journal
        self.stats = stats
        self.timeout = timeout
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nominal-webhook", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, *, drain: float = 0.0) -> None:
        deadline = time.monotonic() + drain
        while drain and time.monotonic() < deadline and self.pending():
            time.sleep(0.1)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.timeout + 5)

    def pending(self) -> int:
        return self.journal.execute("SELECT COUNT(*) FROM outbox WHERE delivered=0").fetchone()[0]

    def _post(self, body: str) -> tuple[bool, str]:
        request = urllib.request.Request(self.url, data=body.encode(), method="POST",
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status < 300, f"HTTP {response.status}"
        except urllib.error.HTTPError as failure:
            return False, f"HTTP {failure.code}"
        except (urllib.error.URLError, OSError) as failure:
            return False, f"{type(failure).__name__}: {getattr(failure, 'reason', failure)}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            row = self.journal.execute(
                "SELECT * FROM outbox WHERE delivered=0 ORDER BY next_at, id LIMIT 1").fetchone()
            if row is None or row["next_at"] > time.time():
                wait = 1.0 if row is None else min(1.0, row["next_at"] - time.time())
                self._wake.wait(max(wait, 0.01))
                self._wake.clear()
                continue
            ok, error = self._post(row["body"])
            if ok:
                self.journal.execute("UPDATE outbox SET delivered=1, attempts=attempts+1 WHERE id=?", (row["id"],))
                self.stats.webhook_sent += 1
                continue
            attempts = row["attempts"] + 1
            delay = min(self.max_delay, self.first_delay * 2 ** (attempts - 1))
            self.journal.execute("UPDATE outbox SET attempts=?, next_at=?, last_error=? WHERE id=?",
                                 (attempts, time.time() + delay, error, row["id"]))
            self.stats.webhook_failures += 1
            log.warning("webhook %s: %s (verdict %s, attempt %d; next try in %.0f s)",
                        self.url, error, row["id"], attempts, delay)


class Watcher:
    """Judges each complete image that appears in `folder`, exactly once across restarts."""

    def __init__(
        self,
        folder: str | Path,
        judge: Judge,
        *,
        results: str | Path | None = None,
        webhook: str | None = None,
        move_to: str | Path | None = None,
        settle: float = 1.0,
        poll: float = 0.5,
        setting: str = "",
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NominalError(f"{folder}: not a folder to watch", field="folder")
        self.judge = judge
        self.setting = setting
        self.results = Path(results) if results else None
        self.move_to = Path(move_to) if move_to else None
        self.settle = settle
        self.poll = poll
        self.stats = WatchStats()
        self.journal = Journal(self.folder / STATE_DIR / "journal.sqlite")
        self.sender = WebhookSender(webhook, self.journal, self.stats) if webhook else None
        self._csv_ids = self._ids_in_csv()
        self._stop = threading.Event()

    # ---------------------------------------------------------------- loop

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, once: bool = False) -> WatchStats:
        """Watch until `stop()` (or, with `once`, until every complete file present has been handled)."""
        if self.sender:
            self.sender.start()
        try:
            self._resume()
            while not self._stop.is_set():
                handled = self.scan()
                if once and not handled and not self._waiting():
                    break
                self._stop.wait(self.poll)
        finally:
            if self.sender:
                self.sender.stop(drain=5.0 if once else 0.0)
            self.journal.close()
        return self.stats

    def _waiting(self) -> bool:
        return bool(self.stats.seen)

    def scan(self) -> int:
        """Handle every file that has been complete for `settle` seconds; returns how many were handled."""
        now = time.monotonic()
        handled = 0
        present = set()
        for entry in sorted(os.scandir(self.folder), key=lambda e: e.name):
            if self._stop.is_set():
                break
            if not entry.is_file(follow_symlinks=False) or entry.name.startswith(".") \
                    or entry.name.lower().endswith(TEMPORARY_SUFFIXES) or not is_image_name(entry.name):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            present.add(entry.name)
            signature = (stat.st_size, stat.st_mtime_ns)
            if self.journal.known(entry.name, *signature):
                continue
            first = self.stats.seen.get(entry.name)
            if first is None or first[:2] != signature:
                self.stats.seen[entry.name] = (*signature, now)  # new or still changing: wait until it settles
                continue
            if now - first[2] < self.settle:
                continue
            del self.stats.seen[entry.name]
            self._take(Path(entry.path), *signature)
            handled += 1
        for gone in set(self.stats.seen) - present:
            del self.stats.seen[gone]
        return handled

    # ------------------------------------------------------------ one file

    def _take(self, path: Path, size: int, mtime_ns: int) -> None:
        try:
            image = ImageInput.from_path(path, {"folder": str(self.folder)})
            if len(image.data) != size:
                return  # it changed while read: the next scan sees it settle again
            result = self.judge(image)
            verdict = result["verdict"]
            self.stats.judged += 1
        except BadImage as error:
            if time.time() - mtime_ns / 1e9 < max(5.0, 10 * self.settle):
                # A camera that pauses mid-write longer than `settle` leaves a truncated file for a while:
                # judge it again when it has been still for longer before calling it an ERROR.
                log.info("%s: not a usable image yet (%s); trying again", path.name, error.reason)
                self._stop.wait(self.poll)
                return
            result = {"source": str(path), "verdict": "ERROR", "error": error.reason}
            verdict = "ERROR"
            self.stats.errors += 1
            log.warning("%s: not judged: %s", path.name, error.reason)
        except FileNotFoundError:
            return  # taken away before it was read
        except Exception as error:  # noqa: BLE001 - the judge is unavailable: try the file again later
            log.warning("%s: could not be judged now (%s: %s); trying again", path.name, type(error).__name__, error)
            self._stop.wait(min(5.0, max(self.poll, 1.0)))
            return
        try:
            now = path.stat()
        except FileNotFoundError:
            return
        if (now.st_size, now.st_mtime_ns) != (size, mtime_ns):
            return  # written to while it was judged: judged again once it settles
        row = self.journal.execute(
            "INSERT INTO files (name, size, mtime_ns, verdict, result, judged_at) VALUES (?,?,?,?,?,?)",
            (path.name, size, mtime_ns, verdict, json.dumps(result), time.time()))
        self._finish(row.lastrowid)

    def _resume(self) -> None:
        for row in self.journal.execute("SELECT id FROM files WHERE done=0 ORDER BY id").fetchall():
            self._finish(row["id"])

    def _finish(self, file_id: int) -> None:
        row = self.journal.execute("SELECT * FROM files WHERE id=?", (file_id,)).fetchone()
        result = json.loads(row["result"])
        key = f"{self.setting}-{row['id']}" if self.setting else str(row["id"])
        target = None
        if self.move_to is not None:
            target = row["moved_to"] or str(self._destination(row["name"], row["verdict"]))
            if row["moved_to"] is None:
                self.journal.execute("UPDATE files SET moved_to=? WHERE id=?", (target, row["id"]))
        report = {
            "id": key, "file": row["name"], "verdict": row["verdict"], "score": result.get("score"),
            "threshold": result.get("threshold"), "p_value": result.get("p_value"),
            "calibration_id": result.get("calibration_id"),
            "judged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["judged_at"])),
            "moved_to": target or "", "error": result.get("error", ""),
        }
        if self.results is not None and not row["csv_done"]:
            if key not in self._csv_ids:
                self._append_csv(report)
                self._csv_ids.add(key)
            self.journal.execute("UPDATE files SET csv_done=1 WHERE id=?", (row["id"],))
        if self.sender is not None and not row["queued"]:
            body = json.dumps({**report, "setting": self.setting, "result": result})
            with self.journal.lock:
                self.journal.db.execute("BEGIN")
                self.journal.db.execute("INSERT OR IGNORE INTO outbox (id, body) VALUES (?, ?)", (row["id"], body))
                self.journal.db.execute("UPDATE files SET queued=1 WHERE id=?", (row["id"],))
                self.journal.db.execute("COMMIT")
            self.sender.wake()
        if target is not None:
            source = self.folder / row["name"]
            if source.exists() and not Path(target).exists():
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        self.journal.execute("UPDATE files SET done=1 WHERE id=?", (row["id"],))

    def _destination(self, name: str, verdict: str) -> Path:
        folder = self.move_to / verdict.lower()  # type: ignore[operator]
        target = folder / name
        n = 1
        while target.exists():  # a camera reusing a name never overwrites an earlier part's image
            target = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
            n += 1
        return target

    # ----------------------------------------------------------------- CSV

    def _ids_in_csv(self) -> set[str]:
        if self.results is None or not self.results.exists():
            return set()
        with self.results.open(newline="") as handle:
            return {row["id"] for row in csv.DictReader(handle) if row.get("id")}

    def _append_csv(self, report: dict[str, Any]) -> None:
        new = not self.results.exists() or self.results.stat().st_size == 0  # type: ignore[union-attr]
        self.results.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        with self.results.open("a", newline="") as handle:  # type: ignore[union-attr]
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow({k: "" if report[k] is None else report[k] for k in CSV_COLUMNS})
            handle.flush()
            os.fsync(handle.fileno())


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES
