"""Patch features: the stride-8 and stride-16 maps of a backbone turned into one vector per patch.

The PatchCore recipe, as `PatchMaker.patchify` plus its preprocessing does it:

1. each map is averaged over its 3 x 3 neighbourhood (avg-pool 3, stride 1, pad 1), so a
   patch describes its surroundings, not one receptive-field centre; or, `aggregation="tent"` (the
   product's recipe, `indexing.patch_mode.PatchConfig`), each neighbour weighted by its closeness;
2. the stride-16 map is bilinearly upsampled to the stride-8 grid;
3. the two maps are concatenated along channels: each L2-normalised per position, so both
   scales weigh the same whatever their channel counts ("balanced"), as they are ("none"),
   or each first projected to `dim // 2` channels ("pool", "random");
4. optionally each patch vector is L2-normalised.

"balanced" and "none" keep each scale's own channels (40 + 112 for EfficientNet-Lite0),
so the features depend on no seed; "pool" is PatchCore's adaptive average pooling over
channels (which, from 40 channels up to 128, repeats channels and so weighs the stride-8
map about 3x more); "random" is a seeded Gaussian projection, which keeps each scale's
distances only about as they are (a 40 x 128 Gaussian stretches some directions and
shrinks others, differently for every seed). The service's choice ("balanced" where the
backbone has at most `dim` channels, else "random" to `dim`; normalised) was measured on
the visible suite with `benchmarks/quality.py`: see `indexing.patch_mode.PatchConfig`.

Example:
    >>> maker = PatchMaker()
    >>> patches = maker.patchify(backbone.feature_maps(images))
    >>> patches.vectors.shape, patches.grid
    ((n, 784, 256), (28, 28))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from indexing.backbones.base import FeatureMaps

Projection = Literal["balanced", "none", "pool", "random"]
PROJECTIONS: tuple[str, ...] = ("balanced", "none", "pool", "random")
Aggregation = Literal["box", "tent"]
AGGREGATIONS: tuple[str, ...] = ("box", "tent")


class Patches(NamedTuple):
    """Patch vectors of a batch of images.

    Attributes:
        vectors: float32 (n, rows * cols, dim); patch p of an image sits at
            (p // cols, p % cols) of the grid.
        grid: (rows, cols) of the patch grid (the stride-8 map: 28 x 28 at 224 px).
    """

    vectors: np.ndarray
    grid: tuple[int, int]


@dataclass(frozen=True)
class PatchMaker:
    """Feature maps -> patch vectors; pure and deterministic (the random projection is seeded).

    Attributes:
        dim: length of a patch vector (even; under "pool" and "random" each scale gets half;
            under "balanced" and "none" it must be the maps' channel count, checked when patchifying).
        projection: "balanced" (each scale's channels, L2-normalised per position), "none" (as
            they are), "pool" (adaptive average pooling over channels) or "random" (seeded
            Gaussian projection of each scale).
        normalise: L2-normalise each patch vector.
        neighbourhood: side of the aggregation window (odd; 1 turns it off).
        aggregation: "box" (PatchCore's plain mean over the window) or "tent" (each neighbour weighted by
            its closeness: 1-2-1 in each direction for a 3 x 3 window, so the centre counts 4x a corner).
        seed: seed of the random projection.
    """

    dim: int = 256
    projection: Projection = "pool"
    normalise: bool = True
    neighbourhood: int = 3
    aggregation: Aggregation = "box"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 2 or self.dim % 2:
            raise ValueError(f"patch dim must be an even number >= 2, got {self.dim}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be an odd size >= 1, got {self.neighbourhood}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")

    def patchify(self, maps: FeatureMaps) -> Patches:
        """Patch vectors of every image of `maps`.

        Args:
            maps: FeatureMaps(stride8 (n, C1, H, W), stride16 (n, C2, h, w)).

        Returns:
            Patches(vectors (n, H * W, dim) float32, grid (H, W)).
        """
        fine, coarse = maps.stride8.float(), maps.stride16.float()
        n, _, rows, cols = fine.shape
        half = self.dim // 2
        with torch.inference_mode():
            # Pooling, projection and bilinear upsampling are all linear, so projecting the
            # coarse map before upsampling gives the same vectors for 4x fewer products
            # ("balanced" normalises the coarse map on its own grid, before upsampling).
            fine = self._project(self._aggregate(fine), half, 0)
            coarse = self._project(self._aggregate(coarse), half, 1)
            coarse = F.interpolate(coarse, size=(rows, cols), mode="bilinear", align_corners=False)
            vectors = torch.cat([fine, coarse], dim=1).permute(0, 2, 3, 1)
            if vectors.shape[-1] != self.dim:
                raise ValueError(f"projection {self.projection!r} makes {vectors.shape[-1]}-d patches from these maps, "
                                 f"not the configured {self.dim}")
            vectors = vectors.reshape(n * rows * cols, self.dim)
            if self.normalise:
                vectors = F.normalize(vectors, dim=1)
        return Patches(vectors.reshape(n, rows * cols, self.dim).contiguous().numpy(), (rows, cols))

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        if self.neighbourhood == 1:
            return x
        if self.aggregation == "tent":
            # Weights 1 + r - |offset| along each axis (r = half the window), renormalised at the border.
            r = self.neighbourhood // 2
            line = torch.tensor([1.0 + r - abs(o) for o in range(-r, r + 1)], dtype=x.dtype)
            kernel = torch.outer(line, line)[None, None]
            channels = x.shape[1]
            summed = F.conv2d(x, kernel.expand(channels, 1, -1, -1), padding=r, groups=channels)
            weight = F.conv2d(torch.ones_like(x[:, :1]), kernel, padding=r)
            return summed / weight
        # count_include_pad=False: a border patch averages its real neighbours, not zeros.
        return F.avg_pool2d(x, self.neighbourhood, stride=1, padding=self.neighbourhood // 2, count_include_pad=False)

    def _project(self, x: torch.Tensor, out_dim: int, scale: int) -> torch.Tensor:
        """(n, C, h, w) -> (n, out_dim, h, w) through the fixed (C, out_dim) projection matrix; "none" keeps
        the C channels as they are, "balanced" L2-normalises them per position."""
        if self.projection == "none":
            return x
        if self.projection == "balanced":
            return F.normalize(x, dim=1)
        matrix = _projection(self.projection, x.shape[1], out_dim, self.seed * 2 + scale)
        return torch.einsum("nchw,co->nohw", x, matrix)


@functools.lru_cache(maxsize=32)
def _projection(kind: str, channels: int, out_dim: int, seed: int) -> torch.Tensor:
    """The (channels, out_dim) matrix of a projection, built once.

    "pool" is PatchCore's `F.adaptive_avg_pool1d` over channels, written as the matrix
    it applies (pooling the identity), so a projection is one matrix product.
    """
    if kind == "pool":
        return F.adaptive_avg_pool1d(torch.eye(channels).unsqueeze(1), out_dim).squeeze(1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(channels, out_dim, generator=generator) / np.sqrt(out_dim)
