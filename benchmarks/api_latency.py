"""Single-image inspect over real HTTP on loopback, against the bare cost of the same work in one process.

The server is `nominal serve` in its own process on the embedded store. The bare
cost is `NominalService.inspect` (decode, backbone forward, exact store query,
verdict) on a second embedded store holding the same images, in this process.
Requests alternate between the two in rounds, so machine noise hits both alike.

    python benchmarks/api_latency.py                 # 200 requests each, then 8 concurrent clients
    python benchmarks/api_latency.py --requests 50   # a quick run

Target: p50(HTTP) / p50(bare) <= 1.2.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexing.images import ImageInput  # noqa: E402
from indexing.service import NominalService  # noqa: E402
from indexing.store import EdgeStore  # noqa: E402

HAZELNUT = ROOT / "tests" / "fixtures" / "hazelnut_toy"
TARGET = 1.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "NOMINAL_DATA": str(data), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def wait_ready(client: httpx.Client, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become ready")


def fill_over_http(client: httpx.Client, train: list[Path]) -> None:
    client.put("/v1/settings/bench", json={"k": 1}).raise_for_status()
    job = client.post("/v1/settings/bench/images", files=[("files", (p.name, p.read_bytes())) for p in train]).json()
    while client.get(f"/v1/jobs/{job['job_id']}").json()["state"] not in ("succeeded", "failed"):
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class CountedStore:
    """The bare path's store, counting the calls made on it (each a round trip on a Qdrant server)."""

    def __init__(self, store: EdgeStore) -> None:
        self._store = store
        self.calls = 0
        self.shared = store.shared

    def __getattr__(self, name: str):  # noqa: ANN204
        method = getattr(self._store, name)

        def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls += 1
            return method(*args, **kwargs)

        return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    train = sorted((HAZELNUT / "train" / "good").glob("*.jpg"))
    queries = sorted((HAZELNUT / "test").rglob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="nominal-bench-") as scratch:
        port = free_port()
        server = start_server(Path(scratch) / "served", port)
        bare_store = EdgeStore(Path(scratch) / "bare")
        try:
            counted = CountedStore(bare_store)
            bare = NominalService(counted)
            bare.put_setting("bench", k=1)
            bare.index("bench", [ImageInput.from_path(p) for p in train])
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                wait_ready(client)
                fill_over_http(client, train)
                payloads = [(p.name, p.read_bytes()) for p in queries]
                inputs = [ImageInput(data=data, source=name) for name, data in payloads]
                for i in range(5):  # warm both paths
                    bare.inspect("bench", [inputs[i]])
                    client.post("/v1/settings/bench/inspect", files=[("files", payloads[i])]).raise_for_status()
                counted.calls = 0
                bare.inspect("bench", [inputs[5]])
                print(f"store calls per warm inspect: {counted.calls} (target <= 2)")

                http_ms, bare_ms = [], []
                for i in range(args.requests):
                    j = i % len(payloads)
                    started = time.perf_counter()
                    bare.inspect("bench", [inputs[j]])
                    bare_ms.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    response = client.post("/v1/settings/bench/inspect", files=[("files", payloads[j])])
                    http_ms.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()

                def one(i: int) -> int:
                    return client.post("/v1/settings/bench/inspect", files=[("files", payloads[i % len(payloads)])]).status_code

                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                    statuses = list(pool.map(one, range(args.requests)))
                concurrent_s = time.perf_counter() - started
        finally:
            bare_store.close()
            server.terminate()
            server.wait(timeout=30)

    ratio = statistics.median(http_ms) / statistics.median(bare_ms)
    print(f"single-image inspect, {args.requests} requests each, same run (ms):")
    print("| path | p50 | p99 | mean |")
    print("| --- | --- | --- | --- |")
    print(f"| bare (in-process inspect) | {percentile(bare_ms, 50):.1f} | {percentile(bare_ms, 99):.1f} | {statistics.mean(bare_ms):.1f} |")
    print(f"| HTTP on loopback | {percentile(http_ms, 50):.1f} | {percentile(http_ms, 99):.1f} | {statistics.mean(http_ms):.1f} |")
    print(f"p50 ratio HTTP / bare: {ratio:.3f} (target <= {TARGET}): {'MET' if ratio <= TARGET else 'MISSED'}")
    errors = sum(status != 200 for status in statuses)
    print(f"{args.concurrency} concurrent clients: {args.requests / concurrent_s:.1f} images/s, "
          f"{errors} errors of {args.requests}")


if __name__ == "__main__":
    main()
