"""Heat maps: patch distances drawn over the image, the explanation an operator trusts most.

`heat_map` is PatchCore's anomaly map (patch distances upsampled to the image and
smoothed with a Gaussian of sigma 4); `overlay_png` colours it over the inspected
image; `pixel_roc_auc` scores maps against defect masks (MVTec ground truth).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# PatchCore's smoothing of the upsampled map, in pixels of the backbone input.
SIGMA = 4.0
# Overlay opacity of the colours over the image.
ALPHA = 0.5


def heat_map(distances: np.ndarray, grid: tuple[int, int], size: tuple[int, int], *, sigma: float = SIGMA) -> np.ndarray:
    """Patch distances as an image-sized anomaly map.

    Args:
        distances: (rows * cols,) or (rows, cols) nearest-bank distance of each patch.
        grid: (rows, cols) of the patch grid.
        size: (height, width) of the output, e.g. the backbone input (224, 224).
        sigma: Gaussian smoothing in output pixels; 0 turns it off.

    Returns:
        float32 (height, width) map; higher is more anomalous.
    """
    from scipy.ndimage import gaussian_filter

    # A copy: the distances may be a read-only view (a cached score row), which torch will not wrap.
    grid_map = torch.tensor(np.asarray(distances, dtype=np.float32).reshape(1, 1, *grid))
    upsampled = F.interpolate(grid_map, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return gaussian_filter(upsampled, sigma=sigma).astype(np.float32) if sigma > 0 else upsampled


def overlay_png(image: Image.Image, heat: np.ndarray, *, threshold: float | None = None) -> bytes:
    """The image with the heat map coloured over it (jet: blue = nominal, red = anomalous), as PNG bytes.

    Args:
        image: the inspected image, any size; the map is stretched to it.
        heat: (h, w) anomaly map.
        threshold: the calibrated image threshold. With it the colours span
            0.5x (blue) to 1.5x (red) the threshold, so green-yellow is "at the
            threshold" and colours compare between images; without it the map's
            own minimum and maximum are used.
    """
    from matplotlib import colormaps

    rgb = image.convert("RGB")
    if threshold is not None and threshold > 0:
        low, high = 0.5 * threshold, 1.5 * threshold
    else:
        low, high = float(heat.min()), float(heat.max())
    scaled = ((heat - low) / max(high - low, 1e-12)).astype(np.float32)
    resized = np.asarray(Image.fromarray(scaled, mode="F").resize(rgb.size, Image.Resampling.BILINEAR))
    colours = (colormaps["jet"](np.clip(resized, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)
    blended = Image.blend(rgb, Image.fromarray(colours), ALPHA)
    buffer = io.BytesIO()
    # zlib level 1: a 300 x 300 ELPV overlay encodes in 6 ms instead of 26 ms at the
    # default level 6, for 19% more bytes (136 vs 115 kB); a verdict waits on it.
    blended.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def mask_at(path: str, size: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask file as a (height, width) bool array at `size`; nearest-neighbour resize."""
    with Image.open(path) as mask:
        resized = mask.convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 127


def pixel_roc_auc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float | None:
    """Pixel-level ROC-AUC of anomaly maps against masks (all pixels of all images pooled).

    Good images count with an all-zero mask. None when no pixel is defective.
    """
    from sklearn.metrics import roc_auc_score

    truth = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    if not truth.any() or truth.all():
        return None
    values = np.concatenate([np.asarray(h, dtype=np.float32).ravel() for h in maps])
    return float(roc_auc_score(truth, values))


# PRO is integrated up to this false-positive rate (the MVTec AD standard).
PRO_MAX_FPR = 0.3


def pixel_pro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], *, max_fpr: float = PRO_MAX_FPR) -> float | None:
    """Per-region overlap (PRO) of anomaly maps against masks, integrated up to `max_fpr`, normalised to [0, 1].

    The MVTec AD definition (Bergmann et al., IJCV 2021): every connected defect region
    of every mask (8-connected) is one region; at a threshold t, its overlap is the
    fraction of its pixels whose map value is >= t, and PRO(t) is the mean overlap over
    all regions, so a small defect counts as much as a large one. FPR(t) is the fraction
    of defect-free pixels (all images pooled, good images wholly) at or above t. The area
    under PRO(FPR) from 0 to `max_fpr` (trapezoids, every distinct map value a threshold,
    the last segment interpolated at `max_fpr`) divided by `max_fpr` is the result: 1.0
    when every region is wholly found before any false positive.

    Returns:
        The normalised area; None when no mask holds a defect pixel or no pixel is defect-free.
    """
    from scipy.ndimage import label

    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    values, weights, normal = [], [], []
    regions = 0
    structure = np.ones((3, 3), dtype=int)
    for heat, mask in zip(maps, masks):
        truth = np.asarray(mask, dtype=bool)
        heat = np.asarray(heat, dtype=np.float64)
        if heat.shape != truth.shape:
            raise ValueError(f"map shape {heat.shape} differs from its mask's {truth.shape}")
        labelled, count = label(truth, structure=structure)
        # Each defect pixel weighs 1 / (its region's size): summed over a region that is found, 1.
        sizes = np.bincount(labelled.ravel(), minlength=count + 1).astype(np.float64)
        pixel_weight = np.where(labelled > 0, 1.0 / np.maximum(sizes[labelled], 1.0), 0.0)
        values.append(heat.ravel())
        weights.append(pixel_weight.ravel())
        normal.append(~truth.ravel())
        regions += count
    if not values:
        return None
    value = np.concatenate(values)
    weight = np.concatenate(weights)
    is_normal = np.concatenate(normal)
    n_normal = int(is_normal.sum())
    if regions == 0 or n_normal == 0:
        return None
    order = np.argsort(-value, kind="stable")
    value, weight, is_normal = value[order], weight[order], is_normal[order]
    fpr = np.cumsum(is_normal) / n_normal
    pro = np.cumsum(weight) / regions
    # A threshold passes every pixel of a tie at once: keep the last index of each run of equal values.
    last = np.r_[np.flatnonzero(np.diff(value) != 0), len(value) - 1]
    fpr = np.r_[0.0, fpr[last]]
    pro = np.r_[0.0, pro[last]]
    inside = fpr <= max_fpr
    x, y = fpr[inside], pro[inside]
    if x[-1] < max_fpr and len(x) < len(fpr):
        # Interpolate the curve at max_fpr on the segment that crosses it.
        x1, y1 = fpr[len(x)], pro[len(x)]
        y_end = y[-1] + (y1 - y[-1]) * (max_fpr - x[-1]) / (x1 - x[-1])
        x, y = np.r_[x, max_fpr], np.r_[y, y_end]
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / max_fpr
