"""Image inputs: identity by content, and decoding that refuses what cannot be trusted.

An `ImageInput` carries the encoded bytes exactly as received. Its identity is the
SHA-256 of those bytes, so the same file uploaded twice maps to the same point id
and is stored once. Decoding applies EXIF orientation and converts every mode
(grey, palette, CMYK, 16-bit, alpha) to 8-bit RGB, which is what backbones expect.
"""

from __future__ import annotations

import hashlib
import io
import re
import uuid
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from indexing.errors import BadImage

# Smaller than this and a backbone sees mostly interpolation; refuse rather than guess.
MIN_SIDE = 16
# 50 MP covers every industrial camera we know of; a 20k x 20k "bomb" is 400 MP.
DEFAULT_MAX_PIXELS = 50_000_000
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def content_id(sha256_hex: str) -> str:
    """Point id for an image: the first 128 bits of its SHA-256 as a UUID."""
    return str(uuid.UUID(bytes=bytes.fromhex(sha256_hex)[:16]))


@dataclass(frozen=True)
class ImageInput:
    """One image as received: its encoded bytes, where it came from, and user metadata."""

    data: bytes
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def id(self) -> str:
        return content_id(self.sha256)

    @classmethod
    def from_path(cls, path: str | Path, metadata: dict[str, Any] | None = None) -> "ImageInput":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadImage(str(path), f"cannot read file ({exc.strerror or exc})") from exc
        return cls(data=data, source=str(path), metadata=dict(metadata or {}))

    @classmethod
    def from_array(cls, array: np.ndarray, source: str, metadata: dict[str, Any] | None = None) -> "ImageInput":
        """Encode an in-memory image (e.g. a dataset cell) losslessly as PNG."""
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
        return cls(data=buffer.getvalue(), source=source, metadata=dict(metadata or {}))


def check_header(image: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Every check that needs no pixel decoded: not empty, an accepted format, within the pixel limit, not tiny.

    Raises:
        BadImage: with `unsupported` (format) or `too_large` (pixels) set when that is the reason.
    """
    _open_checked(image, max_pixels=max_pixels).close()


def decode(image: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode to an 8-bit RGB image, or raise `BadImage` saying why not.

    The pixel limit is checked from the header, before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    opened = _open_checked(image, max_pixels=max_pixels)
    try:
        # PIL's default (LOAD_TRUNCATED_IMAGES False) makes a truncated file fail here.
        opened.load()
        oriented = ImageOps.exif_transpose(opened)
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(image.source, f"corrupt or truncated image data ({exc})") from exc
    return to_rgb(oriented)


def _open_checked(image: ImageInput, *, max_pixels: int) -> Image.Image:
    """The lazily opened image (header read, no pixels) once every header check passed."""
    if not image.data:
        raise BadImage(image.source, "empty file")
    try:
        with warnings.catch_warnings():
            # Our own limit (below) decides and names itself; Pillow's default would name its own.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(image.data))
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise BadImage(image.source, f"{size}, above the limit of {max_pixels:,}", too_large=True) from exc
    except (Image.UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadImage(
            image.source, "not an image in a supported format (JPEG, PNG, BMP, TIFF, WebP)", unsupported=True
        ) from exc
    if opened.format not in ACCEPTED_FORMATS:
        raise BadImage(
            image.source, f"format {opened.format} is not accepted (JPEG, PNG, BMP, TIFF, WebP)", unsupported=True
        )
    width, height = opened.size
    if width * height > max_pixels:
        raise BadImage(
            image.source, f"{width}x{height} is {width * height:,} pixels, above the limit of {max_pixels:,}",
            too_large=True,
        )
    if min(width, height) < MIN_SIDE:
        raise BadImage(image.source, f"{width}x{height} is too small (each side must be at least {MIN_SIDE} px)")
    return opened


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparent pixels are composited on black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Scale high-bit-depth data by its actual range so a 12-bit sensor is not crushed.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_size(image: ImageInput) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only."""
    with Image.open(io.BytesIO(image.data)) as opened:
        width, height = opened.size
        orientation = opened.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
