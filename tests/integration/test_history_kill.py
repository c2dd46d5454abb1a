"""A server killed mid-stream leaves a whole history: no half-written record, and the next start serves it."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.cli.main import main

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "NOMINAL_DATA": str(data), "NOMINAL_NEAR_THRESHOLD": "1000"}  # every image kept: more to write
    server = subprocess.Popen([sys.executable, "-m", "app.cli.main", "serve", "--port", str(port)], env=env,
                              stdout=log.open("a"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise AssertionError(f"the server did not start:\n{log.read_text()[-3000:]}")


def test_a_killed_server_leaves_whole_records_and_the_next_start_serves(tmp_path: Path, hazelnut: Path, capsys) -> None:
    data = tmp_path / "data"
    assert main(["--data", str(data), "index", "hz", str(hazelnut / "train" / "good")]) == 0
    assert main(["--data", str(data), "calibrate", "hz", "--policy", "quantile:0.1"]) == 0
    capsys.readouterr()
    images = sorted((hazelnut / "test").rglob("*.jpg"))
    contents = {hashlib.sha256(p.read_bytes()).hexdigest(): p.read_bytes() for p in images}
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}/v1/settings/hz"

    server = start_server(data, port, log)
    answered: list[str] = []
    stop = threading.Event()

    def stream(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = worker
            while not stop.is_set():
                path = images[n % len(images)]
                n += 2
                try:
                    response = client.post(f"{url}/inspect", files=[("files", (path.name, path.read_bytes()))])
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    answered.append(response.json()["results"][0]["source"])

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    while len(answered) < 12 and server.poll() is None:
        time.sleep(0.02)
    server.send_signal(signal.SIGKILL)  # mid-stream: requests are in flight
    server.wait(timeout=30)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    db = sqlite3.connect(data / "history" / "history.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute("SELECT verdict, score, threshold, p_value, calibration_id, version, sha256, source, image "
                      "FROM inspections").fetchall()
    assert len(rows) >= len(answered), "every verdict a client received was recorded before it was answered"
    for verdict, score, threshold, p, calibration, version, sha, source, image in rows:
        assert verdict in ("PASS", "FAIL") and None not in (score, threshold, p, calibration, version, source)
        assert image is not None
        assert (data / "history" / "images" / image).read_bytes() == contents[sha], "a kept image is whole"
    db.close()

    server = start_server(data, port, log)
    try:
        listed = httpx.get(f"{url}/inspections", params={"limit": 1000}).json()["inspections"]
        assert len(listed) == len(rows)
        again = httpx.post(f"{url}/inspect", files=[("files", (images[0].name, images[0].read_bytes()))], timeout=60)
        assert again.status_code == 200
        assert httpx.get(f"{url}/inspections", params={"limit": 1}).json()["inspections"][0]["id"] > max(
            r["id"] for r in listed)
    finally:
        server.terminate()
        server.wait(timeout=60)
