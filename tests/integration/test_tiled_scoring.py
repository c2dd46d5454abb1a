"""Tiled patch scoring end to end: real weights, a real texture cut into line-scan strips, the embedded store."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from app.api.schemas import SettingPublic
from indexing.image_store import ImageStore
from indexing.images import ImageInput
from indexing.runner import InProcessRunner
from indexing.service import NominalService
from tests.waiting import wait_for_job

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 960, 224  # 4.3:1, tiled by `auto`; 6 tiles of 224 px
DEFECT = (700, 120, 28)  # x, y, side of the painted square


def strip(offset: int) -> np.ndarray:
    """A grey strip of real gravel texture; different offsets give different nominal strips."""
    texture = np.tile(skdata.gravel(), (1, 3))
    return np.ascontiguousarray(texture[offset : offset + HEIGHT, offset : offset + WIDTH])


def as_input(pixels: np.ndarray, name: str) -> ImageInput:
    return ImageInput.from_array(pixels, source=name)


def test_a_defect_painted_on_a_strip_is_found_at_its_place(service: NominalService) -> None:
    service.put_setting("strips", scoring="patch")
    assert service.get_setting("strips").tiling == "auto"
    service.index("strips", [as_input(strip(offset), f"nominal-{offset}") for offset in (0, 40, 80, 120, 160, 200)])
    version = service.versions.active("strips")
    recipe = service.versions.patch_record(version)["patch_config"]
    assert recipe["tiling"] == "auto"

    good = strip(240)
    bad = good.copy()
    x, y, side = DEFECT
    bad[y : y + side, x : x + side] = 255  # a bright square the gravel never shows
    verdicts = service.inspect("strips", [as_input(good, "good"), as_input(bad, "bad")], heatmap=True)
    assert verdicts[1].score > verdicts[0].score * 1.2

    heat = verdicts[1].heatmap
    assert heat is not None
    row, col = heat.worst  # cells of 8 px over the whole strip
    assert abs(col * 8 + 4 - (x + side / 2)) <= 24 and abs(row * 8 + 4 - (y + side / 2)) <= 24
    assert len(heat.grid) == HEIGHT // 8 and len(heat.grid[0]) == WIDTH // 8

    # The stitched, smoothed map covers the whole strip and peaks on the square.
    decoded, _, _ = service.embedder.decode_batch([as_input(bad, "bad")], skip_bad=False)
    found = service._patch_results("strips", version, [as_input(bad, "bad")], decoded, neighbours=0, maps=True)[0]
    assert found.heat is not None and found.heat.shape == (HEIGHT, WIDTH)
    peak_row, peak_col = np.unravel_index(np.argmax(found.heat), found.heat.shape)
    assert abs(peak_col - (x + side / 2)) <= 20 and abs(peak_row - (y + side / 2)) <= 20


def test_a_re_index_builds_the_bank_with_the_setting_s_tiling(service: NominalService, tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "strips"
    folder.mkdir()
    for offset in (0, 60, 120):
        Image.fromarray(strip(offset)).save(folder / f"{offset:03d}.png")
    service.put_setting("strips", scoring="patch", tiling="off")
    service.index("strips", [as_input(strip(200), "seed")])
    assert service.versions.patch_record(service.versions.active("strips"))["patch_config"]["tiling"] == "off"
    assert service.status("strips").reindex_note is None
    service.put_setting("strips", tiling="on")
    assert "tiling 'off' and the setting asks for 'on'" in service.status("strips").reindex_note
    runner = InProcessRunner(service, ImageStore(tmp_path / "images"))
    try:
        assert wait_for_job(runner.board, runner.submit_reindex("strips", str(folder))).state == "succeeded"
    finally:
        runner.close()
    version = service.versions.active("strips")
    assert version.version == 2 and service.versions.patch_record(version)["patch_config"]["tiling"] == "on"
    assert service.status("strips").reindex_note is None
    # Tiled: every strip holds the patches of its 6 tiles, numbered past the first tile's 784.
    patches = [p.payload["patch"] for p in service.store.scroll(service.versions.patch_record(version)["collection"])]
    assert max(patches) >= 784
    verdict = service.inspect("strips", [as_input(strip(240), "probe")], heatmap=True)[0]
    assert len(verdict.heatmap.grid) == HEIGHT // 8 and len(verdict.heatmap.grid[0]) == WIDTH // 8


def test_a_bank_built_under_the_old_auto_rule_keeps_it_until_a_re_index(service: NominalService, tmp_path) -> None:
    """2.5:1 images: squashed by banks built when `auto` started at 3:1, one row of tiles since.
    Scoring a squashed bank with tiled queries (or the reverse) would answer nonsense verdicts."""
    from dataclasses import replace

    from PIL import Image

    def commutator(offset: int) -> np.ndarray:  # 224 x 560: 2.5:1, upright like a KolektorSDD image
        return np.ascontiguousarray(np.tile(skdata.gravel(), (2, 1))[offset : offset + 560, offset : offset + 224])

    folder = tmp_path / "parts"
    folder.mkdir()
    for offset in (0, 60, 120):
        Image.fromarray(commutator(offset)).save(folder / f"{offset:03d}.png")
    service.put_setting("parts", scoring="patch")
    service.versions.patch_config = replace(service.versions.patch_config, tiling_rule=1)  # as before the upgrade
    service.index("parts", [as_input(commutator(o), f"nominal-{o}") for o in (0, 60, 120)])
    service.versions.patch_config = replace(service.versions.patch_config, tiling_rule=2)  # the upgrade
    old = service.versions.patch_record(service.versions.active("parts"))
    assert old["patch_config"]["tiling_rule"] == 1
    assert max(p.payload["patch"] for p in service.store.scroll(old["collection"])) < 784  # one squashed grid
    verdict = service.inspect("parts", [as_input(commutator(200), "part")], heatmap=True)[0]
    assert len(verdict.heatmap.grid) == len(verdict.heatmap.grid[0]) == 28  # still scored squashed, as its bank
    # The operator is told, on every surface that shows a setting (API, CLI, page read `reindex_note`).
    note = SettingPublic.of(service.status("parts")).reindex_note
    assert note is not None and "earlier automatic tiling" in note and "2:1" in note

    runner = InProcessRunner(service, ImageStore(tmp_path / "images"))
    try:
        assert wait_for_job(runner.board, runner.submit_reindex("parts", str(folder))).state == "succeeded"
    finally:
        runner.close()
    new = service.versions.patch_record(service.versions.active("parts"))
    assert new["patch_config"]["tiling_rule"] == 2 and service.status("parts").reindex_note is None
    assert max(p.payload["patch"] for p in service.store.scroll(new["collection"])) >= 784  # tiles past the first
    verdict = service.inspect("parts", [as_input(commutator(200), "part")], heatmap=True)[0]
    assert (len(verdict.heatmap.grid), len(verdict.heatmap.grid[0])) == (70, 28)  # the whole image, aspect kept
