"""Tiles: large or elongated images cut into overlapping squares at the backbone's native scale.

A line-scan strip (AITEX fabric: 4096 x 256 px) or a 5-20 MP camera image loses its
defects when squashed into one 224 px square: a 20 px flaw becomes 1-2 px. Patch
scoring therefore cuts such an image into overlapping squares of the backbone's input
side (each seen pixel for pixel, as the backbone was trained), scores every tile's
patches against a bank built from the tiles of the PASS images, takes the image score
over all tiles' patches (the maximum patch distance is the maximum over tiles), and
stitches the tiles' distance maps back into one heat map of the whole image.

Modes (a machine setting's `tiling`):

- ``off``: every image is one square resize (the historical behaviour);
- ``on``: every image is tiled;
- ``auto`` (the default): an image is tiled when it is far from square (long side at
  least `AUTO_ASPECT` x the short side) or far above the backbone's input (short side at
  least `AUTO_SCALE` x the input side); others are resized as before. One setting's
  images come from one camera, so they all take the same branch.

Where tiles are cut:

- an image `auto` tiles for its shape alone (far from square, not far above the input)
  is scaled so that its short side is one tile, and cut into one row of tiles along its
  long side: the aspect ratio is kept instead of squashed, at the cost of one backbone
  pass per tile (KolektorSDD's 500 x 1254 px commutators: 4 tiles, image ROC-AUC 0.918
  against 0.836 squashed, mean of three recipe seeds);
- otherwise an image whose short side is below 1.5 tile sides is first scaled so that
  its short side is exactly one tile: a 256 px high strip becomes one row of 224 px tiles
  (scale 0.875, about the native scale) instead of two rows overlapping by 87%, which
  would double the work for nothing; a thinner one is scaled up. Larger images are cut
  at scale 1 (`on`, and `auto` on 5-20 MP cameras).

`RULE` numbers these choices. A bank records the rule it was built with and is scored
by it for good (`rule=1`: before December 2026 `auto` tiled from 3:1 and cut every
tiled image by the second point alone), so an upgrade never scores a squashed bank
with tiled queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

Tiling = Literal["auto", "on", "off"]
TILING_MODES: tuple[str, ...] = ("auto", "on", "off")
# Long side / short side from which `auto` tiles an image (AITEX strips: 16; KolektorSDD: 2.5): a
# squash to one square shrinks one axis at least twice as much as the other. Rule 1 used 3.0.
AUTO_ASPECT = 2.0
_AUTO_ASPECT_RULE_1 = 3.0
# The `auto` rule new banks are built with (see the module docstring); banks record theirs.
RULE = 2
RULES = (1, 2)
# Short side / backbone input side from which `auto` tiles an image: 1,792 px at 224, so a 5-20 MP
# camera (short side 2,000-3,600 px) is tiled, while 640-1,024 px images (MVTec AD, DeepPCB), where
# a squashed 224 px view is the measured recipe and tiling would cost 16-25 backbone passes a
# verdict, are tiled only when a setting asks.
AUTO_SCALE = 8.0
# Neighbouring tiles share at least this fraction of a tile side.
OVERLAP = 0.25
# Short side below this many tile sides: scaled to exactly one tile across.
ONE_ROW = 1.5


def check_tiling(mode: str) -> str:
    if mode not in TILING_MODES:
        raise ValueError(f"tiling must be one of {', '.join(TILING_MODES)}, got {mode!r}")
    return mode


def check_rule(rule: int) -> int:
    if rule not in RULES:
        raise ValueError(f"tiling rule must be one of {', '.join(map(str, RULES))}, got {rule!r}")
    return rule


def wants_tiles(width: int, height: int, tile: int, mode: str, rule: int = RULE) -> bool:
    """Whether an image of this size is tiled under `mode` (see the module docstring)."""
    check_tiling(mode)
    if mode != "auto":
        return mode == "on"
    short, long = min(width, height), max(width, height)
    aspect = AUTO_ASPECT if check_rule(rule) >= 2 else _AUTO_ASPECT_RULE_1
    return long >= aspect * short or short >= AUTO_SCALE * tile


def positions(length: int, tile: int, overlap: float = OVERLAP) -> list[int]:
    """Start offsets of tiles along one axis: first at 0, last flush with the end, evenly spaced.

    Consecutive tiles overlap by at least `overlap` of a tile, so every pixel is covered.
    """
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one image lie.

    Attributes:
        original: (width, height) of the image as decoded.
        scaled: (width, height) the tiles are cut from (the original, or scaled so its
            short side is one tile when it is below `ONE_ROW` tiles).
        tile: tile side in pixels (the backbone's input side).
        origins: (left, top) of each tile in the scaled image, row by row.
    """

    original: tuple[int, int]
    scaled: tuple[int, int]
    tile: int
    origins: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.origins)

    def cut(self, image: Image.Image) -> list[Image.Image]:
        """The tiles of `image` (which must have size `original`), each `tile` x `tile`."""
        if image.size != self.original:
            raise ValueError(f"layout is for a {self.original} image, got {image.size}")
        if self.scaled != self.original:
            image = image.resize(self.scaled, Image.Resampling.BILINEAR)
        return [image.crop((left, top, left + self.tile, top + self.tile)) for left, top in self.origins]

    def stitch(self, tile_maps: Sequence[np.ndarray]) -> np.ndarray:
        """One (height, width) map of the scaled image from per-tile (tile, tile) maps; overlaps averaged."""
        if len(tile_maps) != len(self.origins):
            raise ValueError(f"{len(self.origins)} tiles in the layout, got {len(tile_maps)} maps")
        width, height = self.scaled
        total = np.zeros((height, width), dtype=np.float64)
        count = np.zeros((height, width), dtype=np.float64)
        for (left, top), part in zip(self.origins, tile_maps):
            total[top : top + self.tile, left : left + self.tile] += part
            count[top : top + self.tile, left : left + self.tile] += 1.0
        return (total / np.maximum(count, 1.0)).astype(np.float32)

    def tile_centre(self, index: int, row: int, col: int, grid: tuple[int, int]) -> tuple[int, int]:
        """(x, y) in original-image pixels of cell (row, col) of tile `index`'s patch grid."""
        left, top = self.origins[index]
        x = left + (col + 0.5) * self.tile / grid[1]
        y = top + (row + 0.5) * self.tile / grid[0]
        sx, sy = self.original[0] / self.scaled[0], self.original[1] / self.scaled[1]
        return int(x * sx), int(y * sy)


def layout(width: int, height: int, tile: int, overlap: float = OVERLAP, *, one_row: bool = False) -> TileLayout:
    """The tile layout of a (width, height) image for tiles of side `tile`; `one_row` scales its short
    side to one tile whatever its size (the aspect ratio kept, one row of tiles)."""
    if width < 1 or height < 1 or tile < 1:
        raise ValueError(f"sizes must be positive, got image {width} x {height}, tile {tile}")
    short = min(width, height)
    scale = tile / short if one_row or short < ONE_ROW * tile else 1.0
    scaled = (max(tile, round(width * scale)), max(tile, round(height * scale)))
    origins = tuple((x, y) for y in positions(scaled[1], tile, overlap) for x in positions(scaled[0], tile, overlap))
    return TileLayout(original=(width, height), scaled=scaled, tile=tile, origins=origins)


def layout_for(image: Image.Image, tile: int, mode: str, rule: int = RULE) -> TileLayout | None:
    """The image's tile layout under `mode` and `rule`, or None when it is not tiled (one square resize)."""
    width, height = image.size
    if not wants_tiles(width, height, tile, mode, rule):
        return None
    for_shape_alone = mode == "auto" and rule >= 2 and min(width, height) < AUTO_SCALE * tile
    return layout(width, height, tile, one_row=for_shape_alone)


def metric_size(shape: tuple[int, int], pixels: int = 256 * 256) -> tuple[int, int]:
    """(height, width) at most `pixels` in area with `shape`'s aspect ratio: where pixel metrics compare maps."""
    height, width = shape
    scale = min(1.0, math.sqrt(pixels / float(height * width)))
    return max(1, round(height * scale)), max(1, round(width * scale))
