"""Backbone registry, preprocessing and weights handling: everything but the networks' outputs.

Fast: no forward pass of a trained network. Errors are checked against real files
(garbage bytes, truncated copies, state dicts with a tensor missing), never mocks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import mobilenet_v2, resnet50

from indexing.backbones import (
    DEFAULT_BACKBONE,
    available_backbones,
    efficientnet,
    load_backbone,
    mobilenet,
    resnet,
)
from indexing.backbones.base import stride_taps
from indexing.backbones.preprocess import HALF, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from indexing.backbones.weights import fingerprint, reachable
from indexing.errors import UnknownBackbone, WeightsUnavailable


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch.hub cache that holds nothing, whatever this machine has cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


# --- registry -----------------------------------------------------------------


def test_available_names_include_default_and_clip_pattern() -> None:
    names = available_backbones()
    assert names[:3] == ["efficientnet_lite0", "mobilenet_v2", "resnet50"]
    assert "openclip:<model>:<pretrained>" in names
    assert DEFAULT_BACKBONE in names


@pytest.mark.parametrize("name", ["vgg16", "", "openclip", "resnet"])
def test_unknown_name_lists_available_names(name: str) -> None:
    with pytest.raises(UnknownBackbone) as caught:
        load_backbone(name)
    for known in ("efficientnet_lite0", "mobilenet_v2", "resnet50", "openclip:<model>:<pretrained>"):
        assert known in str(caught.value)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("openclip:ViT-B-32", "openclip:<model>:<pretrained>"),
        ("openclip:No-Such-Model:laion2b_s34b_b79k", "open_clip.list_models()"),
        ("openclip:ViT-B-32:no_such_tag", "laion2b_s34b_b79k"),  # lists the model's real tags
    ],
)
def test_malformed_openclip_names_say_what_is_wrong(name: str, says: str) -> None:
    with pytest.raises(UnknownBackbone, match=says.replace("(", r"\(").replace(")", r"\)")):
        load_backbone(name, download=False)


# --- resnet50: weights the user must provide -----------------------------------


def test_resnet50_without_file_names_the_file_and_the_setting(tmp_path: Path, empty_hub: Path) -> None:
    with pytest.raises(WeightsUnavailable) as caught:
        load_backbone("resnet50", weights_dir=tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "resnet50.pth") in message
    assert "NOMINAL_WEIGHTS_DIR" in message and "--weights-dir" in message
    assert str(empty_hub / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message


@pytest.mark.skipif(reachable(resnet.HUB_WEIGHTS.url), reason="download.pytorch.org is reachable: would download 100 MB")
def test_resnet50_offline_fails_fast_even_when_downloads_are_allowed(tmp_path: Path, empty_hub: Path) -> None:
    import time

    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match="resnet50.pth"):
        load_backbone("resnet50", weights_dir=tmp_path)
    assert time.perf_counter() - start < 10


def test_resnet50_garbage_file_is_refused_not_replaced_by_random_weights(tmp_path: Path, empty_hub: Path) -> None:
    (tmp_path / "resnet50.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsUnavailable, match="corrupt"):
        load_backbone("resnet50", weights_dir=tmp_path, download=False)


def test_resnet50_state_dict_missing_a_tensor_is_refused(tmp_path: Path, empty_hub: Path) -> None:
    state = resnet50(weights=None).state_dict()
    del state["layer3.0.conv1.weight"]
    torch.save(state, tmp_path / "resnet50.pth")
    with pytest.raises(WeightsUnavailable, match="layer3.0.conv1.weight"):
        load_backbone("resnet50", weights_dir=tmp_path, download=False)


def test_resnet50_state_dict_of_another_network_is_refused(tmp_path: Path, empty_hub: Path) -> None:
    torch.save(mobilenet_v2(weights=None).state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(WeightsUnavailable, match="does not match"):
        load_backbone("resnet50", weights_dir=tmp_path, download=False)


def test_openclip_tag_without_weights_offline_names_what_to_provide(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable) as caught:
        load_backbone("openclip:ViT-B-32:laion2b_s34b_b79k", weights_dir=tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "ViT-B-32-laion2b_s34b_b79k.bin") in message
    assert "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message


def test_openclip_garbage_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "clip.bin").write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(WeightsUnavailable, match="clip.bin"):
        load_backbone("openclip:ViT-B-32:clip.bin", weights_dir=tmp_path)


# --- packaged weights: a damaged copy is refused --------------------------------


def test_efficientnet_truncated_weights_are_refused(tmp_path: Path) -> None:
    damaged = tmp_path / "efficientnet-lite0.pth"
    damaged.write_bytes(efficientnet.weights_file().read_bytes()[:1_000_000])
    with pytest.raises(WeightsUnavailable, match="corrupt"):
        efficientnet.load_from(damaged, device="cpu")


def test_mobilenet_missing_weights_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        mobilenet.load_from(tmp_path / "nothing.pt", device="cpu")


def test_mobilenet_weights_missing_a_tensor_are_refused(tmp_path: Path) -> None:
    state = torch.load(mobilenet.weights_file(), map_location="cpu", weights_only=True)
    del state["features.5.conv.4.running_var"]
    damaged = tmp_path / "partial.pt"
    torch.save(state, damaged)
    with pytest.raises(WeightsUnavailable, match="running_var"):
        mobilenet.load_from(damaged, device="cpu")


def test_mobilenet_key_remap_covers_every_torchvision_tensor() -> None:
    state = torch.load(mobilenet.weights_file(), map_location="cpu", weights_only=True)
    renamed = mobilenet.to_torchvision_keys(state)
    target = mobilenet_v2(weights=None).features.state_dict()
    assert renamed.keys() == target.keys()
    assert all(renamed[k].shape == target[k].shape for k in target)
    assert renamed["2.conv.1.0.weight"] is state["features.2.conv.3.weight"]  # depthwise of an expanded block


def test_packaged_weights_files_exist_and_fingerprints_are_stable() -> None:
    for path in (efficientnet.weights_file(), mobilenet.weights_file()):
        assert path.is_file()
    assert fingerprint(efficientnet.weights_file()) == "sha256:579344248a93"
    assert fingerprint(mobilenet.weights_file()) == fingerprint(mobilenet.weights_file())


def test_fingerprint_follows_content_not_name(tmp_path: Path) -> None:
    source = mobilenet.weights_file()
    copy = tmp_path / "renamed.pt"
    shutil.copyfile(source, copy)
    assert fingerprint(copy) == fingerprint(source)
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert fingerprint(copy) != fingerprint(source)


# --- preprocessing ---------------------------------------------------------------


def test_square_resize_keeps_the_image_border() -> None:
    """A defect in the outermost 5% of a wide image must survive (no centre crop)."""
    wide = np.zeros((100, 400, 3), dtype=np.uint8)
    wide[:, -20:] = (255, 0, 0)  # the right 5%
    pixels = Preprocess(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD).pixels([Image.fromarray(wide)])
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == torch.uint8
    assert pixels[0, 0, :, -8:].min() > 200  # still red at the far right edge
    assert pixels[0, 0, :, :100].max() == 0


def test_normalisation_matches_the_training_recipe() -> None:
    image = Image.fromarray(np.array([[[0, 128, 255]] * 4] * 4, dtype=np.uint8))
    lite = Preprocess(size=4, mean=HALF, std=HALF).tensor([image])
    expected = torch.tensor([0, 128, 255], dtype=torch.float32) / 255 * 2 - 1  # (x/255-0.5)/0.5
    assert torch.allclose(lite[0, :, 0, 0], expected, atol=1e-6)
    imagenet = Preprocess(size=4, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=True).tensor([image])
    expected = (torch.tensor([0, 128, 255]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(imagenet[0, :, 2, 3], expected, atol=1e-5)
    assert imagenet.is_contiguous(memory_format=torch.channels_last) and imagenet.dtype == torch.float32


def test_non_rgb_modes_are_converted_and_non_images_rejected() -> None:
    prep = Preprocess(size=32, mean=HALF, std=HALF)
    grey = Image.new("L", (50, 40), 200)
    rgba = Image.new("RGBA", (50, 40), (200, 200, 200, 255))
    assert torch.equal(prep.pixels([grey]), prep.pixels([rgba]))
    assert prep.pixels([]).shape == (0, 3, 32, 32)
    with pytest.raises(TypeError, match="PIL"):
        prep.pixels([np.zeros((32, 32, 3), dtype=np.uint8)])  # type: ignore[list-item]


def test_stride_taps_pick_the_deepest_stage_at_each_stride() -> None:
    # MobileNetV2 features: stem s2, then blocks; stride 8 ends at index 6, 16 at 13.
    strides = [2, 1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert stride_taps(strides) == (6, 13)
    with pytest.raises(ValueError):
        stride_taps([2, 2])
