"""Integration fixtures: one real backbone per test session, and a service on a fresh embedded store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
