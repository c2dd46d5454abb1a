"""PRO (per-region overlap to 30% FPR): the MVTec AD pixel metric, against a case worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.heatmap import pixel_pro


def _case() -> tuple[list[np.ndarray], list[np.ndarray]]:
    # Image A: one defect region of two diagonal pixels (one region when 8-connected),
    # found at 0.9 and 0.5; one false alarm at 0.7. Image B: a one-pixel defect at 0.8.
    heat_a, mask_a = np.zeros((4, 4)), np.zeros((4, 4), bool)
    mask_a[0, 0] = mask_a[1, 1] = True
    heat_a[0, 0], heat_a[1, 1], heat_a[3, 3] = 0.9, 0.5, 0.7
    heat_b, mask_b = np.zeros((4, 4)), np.zeros((4, 4), bool)
    mask_b[2, 2] = True
    heat_b[2, 2] = 0.8
    return [heat_a, heat_b], [mask_a, mask_b]


def test_pro_matches_the_hand_computed_curve() -> None:
    # 29 defect-free pixels. Thresholds 0.9, 0.8: PRO 0.25 then 0.75 at FPR 0; 0.7: FPR 1/29;
    # 0.5: PRO 1. Area to FPR 0.3 is 0.75/29 + (0.3 - 1/29); normalised by 0.3.
    maps, masks = _case()
    expected = (0.75 / 29 + (0.3 - 1 / 29)) / 0.3
    assert pixel_pro(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_each_region_counts_the_same_whatever_its_size() -> None:
    # A large region found and a small one missed scores the same as the other way round.
    mask = np.zeros((10, 10), bool)
    mask[0:4, 0:4] = True  # 16 px
    mask[8, 8] = True  # 1 px
    big_found = np.where(mask & (np.arange(10)[:, None] < 4), 1.0, 0.0)
    small_found = np.zeros((10, 10))
    small_found[8, 8] = 1.0
    assert pixel_pro([big_found], [mask]) == pytest.approx(pixel_pro([small_found], [mask]))


def test_pro_is_one_for_a_perfect_map_and_interpolates_at_the_limit() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    assert pixel_pro([mask.astype(float)], [mask]) == pytest.approx(1.0)
    # One of four region pixels above every normal pixel, the rest tied with all normals:
    # the curve runs (0, 0.25) -> (1, 1), so at FPR 0.3 PRO is 0.475; area 0.3 * (0.25 + 0.475) / 2.
    heat = np.zeros((4, 4))
    heat[1, 1] = 1.0
    assert pixel_pro([heat], [mask]) == pytest.approx((0.25 + 0.475) / 2)


def test_pro_needs_a_defect_and_a_clean_pixel() -> None:
    assert pixel_pro([np.zeros((3, 3))], [np.zeros((3, 3), bool)]) is None
    assert pixel_pro([np.zeros((3, 3))], [np.ones((3, 3), bool)]) is None
    with pytest.raises(ValueError, match="shape"):
        pixel_pro([np.zeros((3, 3))], [np.zeros((4, 4), bool)])
