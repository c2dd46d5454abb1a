"""`Backbone`: a loaded network with its preprocessing, turning PIL images into vectors or maps.

A `Backbone` is built by `load_backbone` and never changes afterwards. It wraps an
`Encoder` (a plain `nn.Module`, in eval mode, with two verbs: `pooled` and `maps`)
and a `Preprocess`. Batching, device transfer, `inference_mode` and L2
normalisation live here once, so each backbone module only says how its network
computes features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from indexing.backbones.preprocess import Preprocess
from indexing.errors import UnknownBackbone
from indexing.compute import INLINE, Compute

# The two mid-level maps PatchCore takes from ResNet layer2 and layer3.
MAP_STRIDES: tuple[int, int] = (8, 16)


class FeatureMaps(NamedTuple):
    """Mid-level feature maps for a list of images, float32 on the CPU, NCHW.

    Attributes:
        stride8: (n, C1, ceil(S/8), ceil(S/8)) for input side S (28 x 28 at 224).
        stride16: (n, C2, ceil(S/16), ceil(S/16)) (14 x 14 at 224).
    """

    stride8: torch.Tensor
    stride16: torch.Tensor


class Encoder(Protocol):
    """What a backbone module provides; implemented by small `nn.Module` wrappers."""

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input (n, 3, S, S) -> global features (n, dim), not yet L2-normalised."""
        ...

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input (n, 3, S, S) -> the stride-8 and stride-16 feature maps."""
        ...

    def pooled_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`pooled` and `maps` from one forward pass (a fused verdict needs both): (pooled, stride 8, stride 16)."""
        ...


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when available and nothing was asked for, else what was asked for, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use 'cpu' or None")
    return resolved


def stride_taps(strides: Sequence[int]) -> tuple[int, int]:
    """Indices of the last stage output at stride 8 and at stride 16.

    Args:
        strides: the stride of each sequential stage, stem first (e.g. [2, 1, 2, 1, 2, ...]).

    Returns:
        (i8, i16): the output of stage i8 is the deepest map at stride 8, of i16 at 16.
    """
    taps: dict[int, int] = {}
    total = 1
    for index, stride in enumerate(strides):
        total *= stride
        taps[total] = index
    if MAP_STRIDES[0] not in taps or MAP_STRIDES[1] not in taps:
        raise ValueError(f"network strides {list(strides)} never reach 8 and 16")
    return taps[MAP_STRIDES[0]], taps[MAP_STRIDES[1]]


class Backbone:
    """A pretrained network that embeds images.

    Attributes:
        name: canonical name, accepted by `load_backbone` (e.g. "efficientnet_lite0").
        identity: architecture plus weights fingerprint (e.g.
            "efficientnet_lite0@sha256:579344248a93"). Record it with every
            collection: vectors of different identities must never be compared.
        dim: length of the global embedding.
        device: where the network runs.
        preprocess: the resize and normalisation applied to every image.
        map_channels: (C1, C2) channels of `feature_maps`, or None when the
            backbone has no convolutional maps (CLIP); patch scoring needs them.
        encoder: the underlying torch module (eval mode, no gradients), for
            introspection and tests; not part of the stable surface.
        compute: where each batch's forward pass runs (`indexing.compute`); inline
            unless the `BackbonePool` that loaded it says otherwise.
    """

    compute: Compute = INLINE

    def __init__(
        self,
        *,
        name: str,
        identity: str,
        dim: int,
        encoder: torch.nn.Module,  # implementing `Encoder`
        preprocess: Preprocess,
        device: torch.device,
        map_channels: tuple[int, int] | None,
    ) -> None:
        self.name = name
        self.identity = identity
        self.dim = dim
        self.device = device
        self.preprocess = preprocess
        self.map_channels = map_channels
        encoder = encoder.eval().requires_grad_(False).to(device)
        if preprocess.channels_last:
            # Weights in NHWC too: oneDNN then runs every convolution NHWC, without reorders.
            encoder = encoder.to(memory_format=torch.channels_last)
        self.encoder = encoder
        self._encoder = cast(Encoder, encoder)

    @property
    def input_size(self) -> int:
        """Side of the square the images are resized to."""
        return self.preprocess.size

    def __repr__(self) -> str:
        return f"Backbone({self.identity}, dim={self.dim}, device={self.device})"

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Global embeddings, one unit-length row per image.

        Args:
            images: decoded RGB images (see `indexing.images.decode`).
            batch_size: images per forward pass; bounds peak memory.

        Returns:
            float32 array of shape (n, dim); row i belongs to images[i]. An empty
            input gives shape (0, dim). The same image gives the same row (to
            1e-5) whatever batch it is in.
        """
        _check_batch_size(batch_size)
        out = np.empty((len(images), self.dim), dtype=np.float32)

        def forward(batch: Sequence[Image.Image]) -> np.ndarray:
            x = self._input(batch)
            with torch.inference_mode():
                return F.normalize(self._encoder.pooled(x).float(), dim=1).cpu().numpy()

        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            out[start : start + len(batch)] = self.compute.run(forward, batch)
        return out

    def feature_maps(self, images: Sequence[Image.Image], batch_size: int = 32) -> FeatureMaps:
        """The stride-8 and stride-16 feature maps of every image, computed in batches.

        Channels at 224 px: efficientnet_lite0 40 and 112; mobilenet_v2 32 and 96;
        resnet50 512 and 1024 (its layer2 and layer3). The result holds all images
        at once (resnet50: about 2.4 MB per image), so pass large sets in chunks.

        Args:
            images: decoded RGB images.
            batch_size: images per forward pass.

        Returns:
            FeatureMaps(stride8 (n, C1, S/8, S/8), stride16 (n, C2, S/16, S/16)),
            float32, CPU, contiguous NCHW; rows in input order.

        Raises:
            UnknownBackbone: this backbone has no convolutional maps (CLIP).
        """
        return self._maps(images, batch_size, pooled=None)

    def embed_with_maps(self, images: Sequence[Image.Image], batch_size: int = 32) -> tuple[np.ndarray, FeatureMaps]:
        """`embed` and `feature_maps` of the same images from one forward pass each batch (the maps are taken on
        the way to the pooled features): what a fused verdict needs, in about the time of `embed` alone."""
        pooled = np.empty((len(images), self.dim), dtype=np.float32)
        return pooled, self._maps(images, batch_size, pooled=pooled)

    def _maps(self, images: Sequence[Image.Image], batch_size: int, *, pooled: np.ndarray | None) -> FeatureMaps:
        """The feature maps of `images`; with `pooled`, each image's unit global embedding written into it too."""
        _check_batch_size(batch_size)
        if self.map_channels is None:
            raise UnknownBackbone(
                f"{self.name} has no convolutional feature maps: patch scoring needs a CNN backbone "
                "(efficientnet_lite0, mobilenet_v2 or resnet50)"
            )
        side8, side16 = (-(-self.input_size // s) for s in MAP_STRIDES)
        out8 = torch.empty((len(images), self.map_channels[0], side8, side8), dtype=torch.float32)
        out16 = torch.empty((len(images), self.map_channels[1], side16, side16), dtype=torch.float32)

        def forward(batch: Sequence[Image.Image], start: int) -> None:
            x = self._input(batch)
            with torch.inference_mode():
                if pooled is None:
                    map8, map16 = self._encoder.maps(x)
                else:
                    vectors, map8, map16 = self._encoder.pooled_and_maps(x)
                    pooled[start : start + len(x)] = F.normalize(vectors.float(), dim=1).cpu().numpy()
            out8[start : start + len(x)].copy_(map8)
            out16[start : start + len(x)].copy_(map16)

        for start in range(0, len(images), batch_size):
            self.compute.run(forward, images[start : start + batch_size], start)
        return FeatureMaps(out8, out16)

    def _input(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.preprocess.normalise(self.preprocess.pixels(images), self.device)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
