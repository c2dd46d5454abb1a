"""Tiles of large and elongated images: where they lie, and how their maps are stitched back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexing.patch_mode import PatchConfig
from indexing.tiling import layout, layout_for, metric_size, positions, wants_tiles


@pytest.mark.parametrize("size", [(4096, 256), (3796, 256), (1000, 700), (640, 640)])
def test_tiles_cover_every_pixel_inside_the_image(size: tuple[int, int]) -> None:
    found = layout(*size, 224)
    width, height = found.scaled
    covered = np.zeros((height, width), dtype=int)
    for left, top in found.origins:
        assert 0 <= left <= width - 224 and 0 <= top <= height - 224
        covered[top : top + 224, left : left + 224] += 1
    assert covered.min() >= 1


def test_a_line_scan_strip_is_one_row_of_overlapping_tiles_near_native_scale() -> None:
    strip = layout(4096, 256, 224)  # an AITEX strip: short side 256, scaled by 0.875 to one tile
    assert strip.scaled == (3584, 224) and {top for _, top in strip.origins} == {0}
    # Neighbours overlap by at least a quarter of a tile, and the last tile ends flush with the strip.
    xs = [left for left, _ in strip.origins]
    assert xs[0] == 0 and xs[-1] == 3584 - 224 and max(np.diff(xs)) <= 168
    assert positions(224, 224) == [0]
    # A large image is cut at scale 1.
    assert layout(1000, 700, 224).scaled == (1000, 700)


def test_an_image_thinner_than_a_tile_is_scaled_up_to_one_tile_across() -> None:
    thin = layout(2000, 100, 224)
    assert thin.scaled == (4480, 224) and {top for _, top in thin.origins} == {0}
    tiles = thin.cut(Image.new("L", (2000, 100)))
    assert len(tiles) == len(thin) and all(t.size == (224, 224) for t in tiles)


def test_auto_tiles_only_images_at_least_two_to_one_or_far_above_the_input() -> None:
    assert wants_tiles(4096, 256, 224, "auto")  # line-scan strip
    assert wants_tiles(2448, 2048, 224, "auto")  # a 5 MP camera
    assert not wants_tiles(640, 640, 224, "auto")  # VGA: 16 tiles a verdict, only when asked
    assert not wants_tiles(1024, 1024, 224, "auto")  # MVTec AD size
    assert not wants_tiles(300, 300, 224, "auto")  # ELPV cell
    assert wants_tiles(500, 1250, 224, "auto")  # 2.5:1, a KolektorSDD commutator
    assert not wants_tiles(1280, 720, 224, "auto")  # 16:9, squashed as before
    assert wants_tiles(300, 300, 224, "on") and not wants_tiles(4096, 256, 224, "off")
    assert layout_for(Image.new("L", (300, 300)), 224, "auto") is None
    with pytest.raises(ValueError, match="tiling"):
        wants_tiles(10, 10, 224, "sometimes")


def test_a_hot_spot_in_one_tile_lands_at_its_place_in_the_stitched_map() -> None:
    strip = layout(1000, 224, 224)
    maps = [np.zeros((224, 224), np.float32) for _ in strip.origins]
    index = 2
    left, top = strip.origins[index]
    maps[index][100:110, 50:60] = 1.0
    stitched = strip.stitch(maps)
    assert stitched.shape == (224, 1000)
    row, col = np.unravel_index(np.argmax(stitched), stitched.shape)
    assert 100 <= row < 110 and left + 50 <= col < left + 60
    # Where two tiles overlap, the map is their mean.
    ones = strip.stitch([np.ones((224, 224), np.float32) for _ in strip.origins])
    assert np.allclose(ones, 1.0)


def test_pixel_metrics_compare_tiled_maps_at_a_bounded_size_with_their_aspect() -> None:
    height, width = metric_size((256, 4096))
    assert height * width <= 256 * 256 and abs(width / height - 16) < 0.5
    assert metric_size((100, 100)) == (100, 100)


def test_an_image_tiled_for_its_shape_keeps_its_aspect_ratio_in_one_row_of_tiles() -> None:
    found = layout_for(Image.new("L", (500, 1254)), 224, "auto")  # KolektorSDD: 2.5:1, 500 px short side
    assert found is not None and found.scaled == (224, 562) and len(found) == 4
    assert {left for left, _ in found.origins} == {0}  # one column: the long side is vertical
    # Not squashed: the scaled image has the original's aspect ratio (within a pixel's rounding).
    assert abs(found.scaled[1] / found.scaled[0] - 1254 / 500) < 0.01
    # Under `on` the same image is cut at the backbone's native scale, and so is a 5 MP camera under `auto`.
    assert layout_for(Image.new("L", (500, 1254)), 224, "on").scaled == (500, 1254)
    assert layout_for(Image.new("L", (2448, 2048)), 224, "auto").scaled == (2448, 2048)


def test_a_bank_keeps_the_auto_rule_it_was_built_with() -> None:
    """An upgrade must not score a bank of squashed images with tiled queries."""
    commutator = Image.new("L", (500, 1254))
    recorded_before = PatchConfig.from_dict({"dim": 256, "tiling": "auto"})
    assert recorded_before.tiling_rule == 1 and layout_for(commutator, 224, "auto", recorded_before.tiling_rule) is None
    strip = layout_for(Image.new("L", (1600, 500)), 224, "auto", 1)  # 3.2:1: rule 1 tiled it at native scale
    assert strip is not None and strip.scaled == (1600, 500)
    assert PatchConfig().tiling_rule == 2 and PatchConfig.from_dict(PatchConfig().to_dict()).tiling_rule == 2
    with pytest.raises(ValueError, match="tiling rule"):
        PatchConfig(tiling_rule=7)


def test_banks_recorded_before_tiling_never_tile() -> None:
    assert PatchConfig.from_dict({"dim": 256}).tiling == "off"
    assert PatchConfig.from_dict(None).tiling == "auto"
    assert PatchConfig().tiling == "auto"
