"""`nominal watch` as a plant runs it: a real process, a camera writing files, a webhook receiver that is
down at first, a restart in the middle. Every image is judged and reported exactly once."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.cli.main import main

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A webhook receiver on 127.0.0.1, started when the test says so."""

    def __init__(self, port: int) -> None:
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def until(condition, what: str, timeout: float = 240.0, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the watcher exited: {log.read_text()[-3000:] if log else ''}")
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen in {timeout} s: {log.read_text()[-3000:] if log else ''}")


def name_of(path: Path) -> str:
    return f"{path.parent.name}-{path.name}"  # good-00.jpg, colour-00.jpg: the set names the same numbers


def drop(path: Path, folder: Path, how: str) -> None:
    """Write an image into the watched folder the way cameras do."""
    data = path.read_bytes()
    target = folder / name_of(path)
    if how == "rename":  # written under a temporary name, then renamed in
        temporary = folder / f"{target.name}.part"
        temporary.write_bytes(data)
        os.replace(temporary, target)
    else:  # written in place, slowly: half, a pause, the rest
        with target.open("wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            time.sleep(2.0)
            out.write(data[len(data) // 2:])


def test_watch_judges_each_file_once_across_a_restart_and_a_late_webhook(tmp_path: Path, hazelnut: Path, capsys) -> None:
    data, inbox, done, results = tmp_path / "data", tmp_path / "inbox", tmp_path / "done", tmp_path / "results.csv"
    inbox.mkdir()
    good = sorted((hazelnut / "test" / "good").glob("*.jpg"))
    defects = sorted((hazelnut / "test" / "colour").glob("*.jpg"))
    assert main(["--data", str(data), "index", "hz", str(hazelnut / "train" / "good")]) == 0
    assert main(["--data", str(data), "calibrate", "hz", "--pass", str(hazelnut / "test" / "good"),
                 "--fail", str(hazelnut / "test" / "colour")]) == 0
    capsys.readouterr()
    port = free_port()
    log = tmp_path / "watch.log"
    command = [sys.executable, "-m", "app.cli.main", "--data", str(data), "watch", "hz", str(inbox),
               "--results", str(results), "--webhook", f"http://127.0.0.1:{port}/hook", "--move-to", str(done),
               "--settle", "0.5", "--poll", "0.2"]

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT)

    def remaining() -> list[str]:
        return [p.name for p in inbox.iterdir() if p.is_file()]

    watcher = start()
    receiver = None
    try:
        first = [(good[0], "rename"), (defects[0], "slow"), (good[1], "rename"), (defects[1], "rename"),
                 (defects[2], "slow")]
        for path, how in first:
            drop(path, inbox, how)
        until(lambda: not remaining(), "judging the first files", process=watcher, log=log)
        until(lambda: "webhook" in log.read_text() and "attempt" in log.read_text(), "a failed webhook attempt",
              process=watcher, log=log)
        receiver = Receiver(port)  # the receiver comes up late: queued verdicts reach it in the background
        until(lambda: len(receiver.bodies) >= len(first), "the late webhook deliveries", process=watcher, log=log)

        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=60) == 0, log.read_text()[-3000:]
        watcher = start()
        second = [(good[2], "rename"), (defects[3], "slow"), (good[3], "rename"), (defects[4], "rename")]
        for path, how in second:
            drop(path, inbox, how)
        (inbox / "notes.txt").write_text("not an image: left alone")
        truncated = inbox / "broken.jpg.part"
        truncated.write_bytes(good[4].read_bytes()[:2000])
        os.replace(truncated, inbox / "broken.jpg")
        dropped = [name_of(p) for p, _ in first + second] + ["broken.jpg"]
        until(lambda: remaining() == ["notes.txt"], "judging the second files", process=watcher, log=log)
        until(lambda: len(receiver.bodies) >= len(dropped), "every webhook delivery", process=watcher, log=log)
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if watcher.poll() is None:
            watcher.kill()
        if receiver is not None:
            receiver.close()

    with results.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["file"] for r in rows) == sorted(dropped), "each file judged and written once"
    assert len({r["id"] for r in rows}) == len(rows)
    expected = {name_of(p): "PASS" for p in good} | {name_of(p): "FAIL" for p in defects} | {"broken.jpg": "ERROR"}
    for row in rows:
        assert row["verdict"] == expected[row["file"]], row
        assert Path(row["moved_to"]) == done / row["verdict"].lower() / row["file"]
        assert Path(row["moved_to"]).is_file()
        if row["verdict"] != "ERROR":
            # FAIL when the score reaches the threshold written beside it (a fused score may be below 0).
            assert (float(row["score"]) >= float(row["threshold"])) == (row["verdict"] == "FAIL"), row
            assert 0 < float(row["p_value"]) <= 1 and row["calibration_id"]
    assert sorted(p.name for p in (done / "pass").iterdir()) == sorted(name_of(p) for p, _ in first + second if p in good)
    assert sorted(p.name for p in (done / "fail").iterdir()) == sorted(name_of(p) for p, _ in first + second if p in defects)

    delivered = {b["id"]: b for b in receiver.bodies}
    assert len(receiver.bodies) == len(delivered), "no verdict was posted twice"
    assert set(delivered) == {r["id"] for r in rows}, "the webhook and the CSV agree"
    for row in rows:
        body = delivered[row["id"]]
        assert (body["file"], body["verdict"], body["setting"]) == (row["file"], row["verdict"], "hz")
        if row["verdict"] != "ERROR":
            assert body["result"]["score"] == pytest.approx(float(row["score"]))
    # Every verdict is in the history too.
    assert main(["--data", str(data), "history", "hz", "--json"]) == 0
    history = json.loads(capsys.readouterr().out)["inspections"]
    assert sorted(Path(i["source"]).name for i in history) == sorted(d for d in dropped if d != "broken.jpg")
