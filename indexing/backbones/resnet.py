"""ResNet-50 (torchvision) with ImageNet weights from a local file, the torch.hub cache or a download.

No package ships ResNet-50 weights, so on an offline machine the user provides the
file. Looked for in this order, first hit wins:

1. `<weights_dir>/resnet50.pth`: a torchvision ResNet-50 state dict (any ImageNet
   variant; the identity fingerprints the exact file). A file there that is corrupt
   is an error, never skipped in favour of the next source.
2. the torch.hub cache, `$TORCH_HOME/hub/checkpoints/resnet50-11ad3fa6.pth`
   (`ResNet50_Weights.IMAGENET1K_V2`), where torchvision itself downloads it.
3. a download of IMAGENET1K_V2 into that cache, only if `download` is true and the
   server answers a quick probe (offline machines fail at once).

Input is a 224 px square with ImageNet mean/std. The global embedding is the
2048-channel average pool; the feature maps are layer2 (512 channels, stride 8) and
layer3 (1024 channels, stride 16), as in PatchCore.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet, ResNet50_Weights, resnet50
from torchvision.models.resnet import Bottleneck

from indexing.backbones import fusion
from indexing.backbones.base import Backbone, resolve_device
from indexing.backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from indexing.backbones.weights import (
    WEIGHTS_DIR_SETTING,
    download_to_hub_cache,
    fingerprint,
    hub_checkpoint,
    load_strict,
    read_state_dict,
)
from indexing.errors import WeightsUnavailable

NAME = "resnet50"
DIM = 2048
MAP_CHANNELS = (512, 1024)
FILE_NAME = "resnet50.pth"
HUB_WEIGHTS = ResNet50_Weights.IMAGENET1K_V2
PREPROCESS = Preprocess(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=True)


class ResNetEncoder(nn.Module):
    """torchvision ResNet exposing pooled features and its layer2/layer3 outputs."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.model = model

    def _to_layer3(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        layer2 = m.layer2(m.layer1(x))
        return layer2, m.layer3(layer2)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, 224, 224) -> (n, 2048) average-pooled layer4 features."""
        _, layer3 = self._to_layer3(x)
        return self.model.layer4(layer3).mean(dim=(2, 3))

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, 224, 224) -> layer2 (n, 512, 28, 28), layer3 (n, 1024, 14, 14)."""
        return self._to_layer3(x)

    def pooled_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`pooled` and `maps` of one forward pass."""
        layer2, layer3 = self._to_layer3(x)
        return self.model.layer4(layer3).mean(dim=(2, 3)), layer2, layer3


def fuse_for_inference(model: ResNet) -> None:
    """Fold every batch norm into its convolution (see fusion); outputs equal to float rounding."""
    fusion.fuse_attribute_pairs(model, [("conv1", "bn1")])
    for block in model.modules():
        if isinstance(block, Bottleneck):
            fusion.fuse_attribute_pairs(block, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")])
    fusion.fuse_sequentials(model)  # the downsample shortcuts


def weights_file(weights_dir: str | Path | None, *, download: bool = True) -> Path:
    """Find (or fetch) the ResNet-50 weights file; see the module docstring for the order.

    Raises:
        WeightsUnavailable: no file found and no download possible; the message names
            the exact path to put the file at and the setting that points there.
    """
    local = Path(weights_dir).expanduser() / FILE_NAME if weights_dir is not None else None
    if local is not None and local.exists():
        return local
    cached = hub_checkpoint(HUB_WEIGHTS.url)
    if cached.is_file():
        return cached
    wanted = str(local) if local is not None else f"<weights dir>/{FILE_NAME}"
    fix = (
        f"save a torchvision ResNet-50 state dict (e.g. {HUB_WEIGHTS.url}) as {wanted} and point the "
        f"{WEIGHTS_DIR_SETTING} at its folder, or copy it to {cached}"
    )
    if not download:
        raise WeightsUnavailable(f"resnet50 weights not found and downloading is off: {fix}")
    try:
        return download_to_hub_cache(HUB_WEIGHTS.url)
    except WeightsUnavailable as exc:
        raise WeightsUnavailable(f"resnet50 weights not found locally and {exc}: {fix}") from exc


def load(
    *,
    device: str | torch.device | None = None,
    weights_dir: str | Path | None = None,
    download: bool = True,
) -> Backbone:
    """Build ResNet-50 from the first weights file found (strict: every tensor from the file).

    Raises:
        WeightsUnavailable: no usable file; the message says which file to provide.
    """
    path = weights_file(weights_dir, download=download)
    fix = f"replace {path} with a torchvision ResNet-50 state dict ({HUB_WEIGHTS.url})"
    # weights=None builds the architecture only; the strict load replaces every tensor.
    model = resnet50(weights=None)
    load_strict(model, read_state_dict(path, fix=fix), path=path, fix=fix)
    fuse_for_inference(model)
    return Backbone(
        name=NAME,
        identity=f"{NAME}@{fingerprint(path)}",
        dim=DIM,
        encoder=ResNetEncoder(model),
        preprocess=PREPROCESS,
        device=resolve_device(device),
        map_channels=MAP_CHANNELS,
    )
