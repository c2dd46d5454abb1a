"""Fixtures shared by unit and integration tests: real images, bad inputs, a loaded backbone."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
HAZELNUT = FIXTURES / "hazelnut_toy"


@pytest.fixture(scope="session")
def hazelnut() -> Path:
    return HAZELNUT


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    """A real 20,000 x 20,000 PNG (400 megapixels) that compresses to a few hundred kB."""
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory: pytest.TempPathFactory, bomb_png: bytes) -> dict[str, Path]:
    """One file per kind of bad input a user can hand us."""
    folder = tmp_path_factory.mktemp("bad")
    good = (HAZELNUT / "train" / "good" / "00.jpg").read_bytes()
    files = {
        "not_an_image": b"PASS\nthis is a text file\n",
        "truncated": good[: len(good) // 3],
        "bomb": bomb_png,
    }
    paths = {}
    for name, data in files.items():
        path = folder / f"{name}.png" if name != "truncated" else folder / "truncated.jpg"
        path.write_bytes(data)
        paths[name] = path
    tiny = folder / "one_pixel.png"
    Image.new("RGB", (1, 1)).save(tiny)
    paths["one_pixel"] = tiny
    return paths
