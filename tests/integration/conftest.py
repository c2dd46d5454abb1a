"""Integration fixtures: one real backbone per test session, and a service on a fresh embedded store."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from indexing.images import ImageInput
from indexing.service import BackbonePool, NominalService
from indexing.store import EdgeStore


@pytest.fixture(scope="session")
def pool() -> BackbonePool:
    """Models load once per session; every service in the tests shares them."""
    return BackbonePool()


@pytest.fixture
def service(tmp_path: Path, pool: BackbonePool) -> Iterator[NominalService]:
    store = EdgeStore(tmp_path / "store")
    try:
        yield NominalService(store, backbones=pool)
    finally:
        store.close()


def images_in(folder: Path) -> list[ImageInput]:
    return [ImageInput.from_path(p) for p in sorted(folder.iterdir()) if p.suffix in {".jpg", ".png"}]


@pytest.fixture(scope="session")
def hazelnut_sets(hazelnut: Path) -> dict[str, list[ImageInput]]:
    return {
        "train": images_in(hazelnut / "train" / "good"),
        "good": images_in(hazelnut / "test" / "good"),
        "defect": images_in(hazelnut / "test" / "colour"),
    }


@dataclass(frozen=True)
class RedisSpace:
    """A key prefix of one test's own on the test Redis, which other runs may share."""

    url: str
    client: redis.Redis
    prefix: str


@pytest.fixture
def redis_space() -> Iterator[RedisSpace]:
    """The test Redis (DB 5, or NOMINAL_TEST_REDIS_URL) with a fresh key prefix; its keys are deleted afterwards.

    Skips, saying where it looked, when no Redis answers (`.ci/run` starts one).
    """
    url = os.environ.get("NOMINAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {url} (start one: see shared NOTES, or run .ci/run)")
    prefix = f"nominal-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield RedisSpace(url=url, client=client, prefix=prefix)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
