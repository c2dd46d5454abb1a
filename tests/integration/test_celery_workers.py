"""Re-index through real `nominal worker` processes and the real Redis, against the embedded store.

Each test has its own Redis key prefix in DB 5 (Redis is shared with other
work), deleted at the end. Workers are subprocesses started as a user would,
in their own process group so a test can SIGKILL one whole worker.

The settings here score globally: their batches are what workers embed. A setting with a patch bank
(patch or fused, the default) is re-indexed by the process that writes its bank (`indexing.reindex`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Config
from app.runtime import build_runner
from indexing.service import NominalService
from tests.waiting import wait_for_job
from workers.celery_app import celery_settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Short, so a killed worker's task comes back within the test; batches take well under a second.
VISIBILITY_TIMEOUT_S = 6


@pytest.fixture
def deployment(tmp_path: Path, redis_space) -> Iterator[dict[str, str]]:
    """Environment of one deployment: its Redis key prefix (keys deleted after) and data directory."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "REDIS_URL": redis_space.url,
        "NOMINAL_REDIS_PREFIX": redis_space.prefix,
        "NOMINAL_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
        "NOMINAL_DATA": str(tmp_path / "data"),
    }
    env.pop("QDRANT_URL", None)
    yield env


class Worker:
    """A `nominal worker` subprocess, in its own process group."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int = 1) -> None:
        self.log = log
        self._handle = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "worker", "--concurrency", str(concurrency), "--loglevel", "INFO"],
            cwd=REPO, env=env, stdout=self._handle, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "nominal worker process" in text and " ready." in text:
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{text[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and children): nothing gets to acknowledge or clean up."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def in_flight(self) -> set[str]:
        """Ids of the batch tasks this worker logged as received and not (yet) as succeeded."""
        text = self.log.read_text(errors="replace")
        return set(re.findall(r"embed_batch\[([0-9a-f-]+)\] received", text)) - set(
            re.findall(r"embed_batch\[([0-9a-f-]+)\] succeeded", text)
        )

    def kill_mid_batch(self, timeout: float = 60.0) -> set[str]:
        """SIGKILL the worker while it holds a batch it has not finished; the ids of those batches.

        A batch takes well under a second and the gaps between batches are short but real, so a
        kill at an arbitrary moment can land between two batches and lose nothing to redeliver.
        The whole process group is frozen (SIGSTOP) to read its log in a state that cannot move on;
        if nothing is in flight it is thawed and tried again a moment later.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.killpg(self.process.pid, signal.SIGSTOP)
            held = self.in_flight()
            if held:
                self.kill()
                return held
            os.killpg(self.process.pid, signal.SIGCONT)
            time.sleep(0.005)
        raise AssertionError(f"worker never held an unfinished batch in {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._handle.close()


@pytest.fixture
def start_worker(deployment: dict[str, str], tmp_path: Path) -> Iterator:
    started: list[Worker] = []

    def start(name: str = "worker") -> Worker:
        worker = Worker(deployment, tmp_path / f"{name}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        # Captured, so pytest shows it only when the test failed (or timed out): what each worker last did.
        print(f"--- {worker.log.name}, last lines ---\n{worker.log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def source(tmp_path: Path, hazelnut: Path, bad_images) -> Path:
    folder = tmp_path / "source"
    shutil.copytree(hazelnut / "train" / "good", folder)
    shutil.copy(bad_images["truncated"], folder / "zz_truncated.jpg")
    return folder


def nominal(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_reindex_with_a_worker_against_the_embedded_store(deployment, start_worker, source, hazelnut) -> None:
    worker = start_worker()
    assert nominal(deployment, "settings", "set", "hz", "--scoring", "global").returncode == 0
    seeded = nominal(deployment, "index", "hz", str(hazelnut / "test" / "good"))
    assert seeded.returncode == 0, seeded.stderr
    worker.wait_ready()

    done = nominal(deployment, "reindex", "hz", str(source), "--wait", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded" and job["result"]["version"] == 2
    assert job["result"]["indexed"] == 28 and (job["done"], job["total"]) == (29, 29)
    assert [Path(e["source"]).name for e in job["errors"]] == ["zz_truncated.jpg"]
    assert "nominal.embed_batch" in worker.log.read_text()  # the worker embedded, this process did not

    listed = json.loads(nominal(deployment, "jobs", "--json").stdout)["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    shown = json.loads(nominal(deployment, "jobs", job["id"], "--json").stdout)
    assert shown["errors"] == job["errors"] and shown["rate"] > 0

    back = nominal(deployment, "rollback", "hz", "--json")
    assert back.returncode == 0 and json.loads(back.stdout)["active_version"] == 1, back.stderr


def test_a_worker_killed_mid_reindex_loses_nothing(
    deployment, start_worker, service: NominalService, source, hazelnut_sets, redis_space
) -> None:
    service.put_setting("hz", scoring="global")
    service.index("hz", hazelnut_sets["good"])
    service.batch_size = 2  # 15 batch tasks: the kill lands mid-way
    first = start_worker("first")
    first.wait_ready()
    runner = build_runner(Config(_env_file=None, **_config_from(deployment)), service)

    seen: set[tuple[int, int]] = set()
    watching = threading.Event()

    def watch_alias() -> None:
        while not watching.is_set():
            status = service.status("hz")
            seen.add((status.active.version, status.count))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_alias)
    watcher.start()
    try:
        job = runner.submit_reindex("hz", str(source))
        wait_until(lambda: runner.board.get(job.id).done >= 4, timeout=120)
        # The worst moment to die: in the middle of a sweep for unacknowledged tasks, holding its lock.
        redis_space.client.lock(f"{redis_space.prefix}unacked_mutex", timeout=_sweep_lock_expiry(deployment)).acquire()
        lost = first.kill_mid_batch()
        killed_at = runner.board.get(job.id).done
        assert killed_at < 29 and service.versions.active("hz").version == 1
        second = start_worker("second")
        second.wait_ready()
        done = wait_for_job(runner.board, job, timeout=180)
    finally:
        watching.set()
        watcher.join()
        runner.close()

    assert done.state == "succeeded", done.message
    assert done.result["indexed"] == 28 and done.error_count == 1
    active = service.versions.active("hz")
    assert active.version == 2 and service.store.count(active.collection) == 28  # one point per distinct image
    # The alias only ever named a complete version: v1 with its 6 images, then v2 with 28.
    assert seen <= {(1, 6), (2, 28)} and (1, 6) in seen, seen
    # The batch the first worker died in was delivered again, to the second.
    assert all(task in second.log.read_text() for task in lost), lost


def test_cancel_through_workers_keeps_the_old_version(deployment, start_worker, service, source, hazelnut_sets) -> None:
    service.put_setting("hz", scoring="global")
    service.index("hz", hazelnut_sets["good"])
    service.batch_size = 1
    worker = start_worker()
    worker.wait_ready()
    runner = build_runner(Config(_env_file=None, **_config_from(deployment)), service)
    try:
        job = runner.submit_reindex("hz", str(source))
        wait_until(lambda: runner.board.get(job.id).done >= 1, timeout=120)
        runner.cancel(job.id)
        done = wait_for_job(runner.board, job, timeout=60)
    finally:
        runner.close()
    assert done.state == "cancelled" and done.done < 29
    assert [v.version for v in service.versions.list("hz")] == [1] and service.versions.active("hz").version == 1


def test_closing_the_runner_cancels_a_reindex_no_worker_will_ever_serve(deployment, service, source, hazelnut_sets) -> None:
    """The API stopping (or `nominal reindex` ending) while its re-index waits on batches: cancelled, not waited on for ever."""
    service.put_setting("hz", scoring="global")
    service.index("hz", hazelnut_sets["good"])
    runner = build_runner(Config(_env_file=None, **_config_from(deployment)), service)  # and no worker started
    job = runner.submit_reindex("hz", str(source))
    wait_until(lambda: runner.board.get(job.id).state == "running", timeout=60)
    closer = threading.Thread(target=runner.close)
    closer.start()
    closer.join(timeout=30)
    assert not closer.is_alive(), "close waited for batches no worker will ever embed"
    assert runner.board.get(job.id).state == "cancelled"
    assert [v.version for v in service.versions.list("hz")] == [1] and service.versions.active("hz").version == 1
    assert len(service.store.collections()) == 1, service.store.collections()  # the half-built version is gone


def _config_from(env: dict[str, str]) -> dict[str, object]:
    return {
        "REDIS_URL": env["REDIS_URL"],
        "NOMINAL_REDIS_PREFIX": env["NOMINAL_REDIS_PREFIX"],
        "NOMINAL_VISIBILITY_TIMEOUT": int(env["NOMINAL_VISIBILITY_TIMEOUT"]),
        "NOMINAL_DATA": env["NOMINAL_DATA"],
    }


def _sweep_lock_expiry(env: dict[str, str]) -> int:
    """Seconds a worker's lock on the sweep for unacknowledged tasks lasts, as the workers are configured."""
    transport = celery_settings(Config(_env_file=None, **_config_from(env)))["broker_transport_options"]
    return int(transport.get("unacked_mutex_expire", 300))  # kombu's default when not configured


def wait_until(condition, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not met in {timeout} s")

