"""Real weights on real photos: the backbones load, embed deterministically, and are trained.

Photos come from scikit-image (chelsea the cat, coffee, astronaut, rocket, a
motorcycle). "Trained" is shown two ways: EfficientNet-Lite0's own ImageNet head
calls chelsea a cat, and MobileNetV2 (no head) puts altered copies of chelsea far
closer to chelsea than other photos, a margin that a randomly initialised copy of
the same network does not have, so the check can fail.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from skimage import data
from efficientnet_lite_pytorch import EfficientNet
from torchvision.models import mobilenet_v2, resnet50

from indexing.backbones import MAP_STRIDES, Backbone, FeatureMaps, efficientnet, load_backbone, mobilenet
from indexing.errors import UnknownBackbone
from indexing.images import ImageInput, decode

OFFLINE = ["efficientnet_lite0", "mobilenet_v2"]
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {
        "chelsea": Image.fromarray(data.chelsea()),
        "coffee": Image.fromarray(data.coffee()),
        "astronaut": Image.fromarray(data.astronaut()),
        "rocket": Image.fromarray(data.rocket()),
        "motorcycle": Image.fromarray(data.stereo_motorcycle()[0]),
    }


@pytest.fixture(scope="module")
def backbones() -> dict[str, Backbone]:
    return {name: load_backbone(name, device="cpu") for name in OFFLINE}


@pytest.fixture(scope="module")
def random_resnet50(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    """ResNet-50 from a local file (random weights: no package ships trained ones)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(resnet50(weights=None).state_dict(), folder / "resnet50.pth")
    return load_backbone("resnet50", device="cpu", weights_dir=folder, download=False)


@pytest.mark.parametrize("name", OFFLINE)
def test_embeddings_are_unit_float32_rows(backbones: dict[str, Backbone], photos: dict[str, Image.Image], name: str) -> None:
    backbone = backbones[name]
    vectors = backbone.embed(list(photos.values()))
    assert vectors.shape == (len(photos), backbone.dim) == (5, 1280)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert backbone.embed([]).shape == (0, backbone.dim)


@pytest.mark.parametrize("name", OFFLINE)
def test_same_image_same_vector_alone_or_in_any_batch(
    backbones: dict[str, Backbone], photos: dict[str, Image.Image], name: str
) -> None:
    backbone = backbones[name]
    images = list(photos.values())
    together = backbone.embed(images, batch_size=32)
    in_pairs = backbone.embed(images, batch_size=2)  # uneven last batch
    alone = np.stack([backbone.embed([image])[0] for image in images])
    assert np.abs(together - alone).max() < 1e-5
    assert np.abs(together - in_pairs).max() < 1e-5


def test_efficientnet_head_calls_chelsea_a_cat(backbones: dict[str, Backbone], photos: dict[str, Image.Image]) -> None:
    backbone = backbones["efficientnet_lite0"]
    x = backbone.preprocess.tensor([photos["chelsea"], photos["coffee"]])
    with torch.inference_mode():
        logits = backbone.encoder.model._fc(backbone.encoder.pooled(x))
    assert int(logits[0].argmax()) in IMAGENET_CATS
    assert int(logits[1].argmax()) not in IMAGENET_CATS


def _reference_encoders() -> dict[str, torch.nn.Module]:
    """The networks exactly as their weights files describe them: no folding, no in-place tricks."""
    lite = EfficientNet.from_name("efficientnet-lite0")
    lite.load_state_dict(torch.load(efficientnet.weights_file(), weights_only=True), strict=True)
    features = mobilenet_v2(weights=None).features
    state = torch.load(mobilenet.weights_file(), weights_only=True)
    features.load_state_dict(mobilenet.to_torchvision_keys(state), strict=True)
    return {
        "efficientnet_lite0": efficientnet.LiteEncoder(lite).eval(),
        "mobilenet_v2": mobilenet.MobileNetEncoder(features).eval(),
    }


def test_inference_rewrites_keep_the_outputs(backbones: dict[str, Backbone], photos: dict[str, Image.Image]) -> None:
    """BN folding, padding folding and in-place ReLU6 change nothing beyond float rounding."""
    for name, reference in _reference_encoders().items():
        backbone = backbones[name]
        x = backbone.preprocess.tensor([photos["chelsea"], photos["motorcycle"]])
        with torch.inference_mode():
            pairs = [(backbone.encoder.pooled(x), reference.pooled(x))]
            pairs += list(zip(backbone.encoder.maps(x), reference.maps(x)))
        for fast, exact in pairs:
            assert (fast - exact).abs().max() <= 1e-4 * exact.abs().max(), name


def _chelsea_margin(backbone: Backbone, photos: dict[str, Image.Image]) -> float:
    """Least similarity of chelsea to altered copies of itself minus most similarity to other photos."""
    chelsea = photos["chelsea"]
    width, height = chelsea.size
    altered = [
        ImageOps.mirror(chelsea),
        chelsea.crop((20, 10, width - 10, height - 20)),  # shifted and slightly zoomed
        chelsea.resize((width // 2, height // 2)),
        chelsea.rotate(5),
    ]
    others = [photos[name] for name in ("coffee", "astronaut", "rocket", "motorcycle")]
    vectors = backbone.embed([chelsea, *altered, *others])
    similarity = vectors[1:] @ vectors[0]
    return float(similarity[: len(altered)].min() - similarity[len(altered) :].max())


def test_mobilenet_features_are_trained_and_random_ones_are_not(
    backbones: dict[str, Backbone], photos: dict[str, Image.Image]
) -> None:
    trained = _chelsea_margin(backbones["mobilenet_v2"], photos)
    torch.manual_seed(0)
    untrained = Backbone(
        name="mobilenet_v2_random",
        identity="random",
        dim=mobilenet.DIM,
        encoder=mobilenet.MobileNetEncoder(mobilenet_v2(weights=None).features),
        preprocess=mobilenet.PREPROCESS,
        device=torch.device("cpu"),
        map_channels=mobilenet.MAP_CHANNELS,
    )
    assert trained > 0.2, trained
    assert _chelsea_margin(untrained, photos) < 0.1


def test_efficientnet_features_separate_chelsea_from_other_photos(
    backbones: dict[str, Backbone], photos: dict[str, Image.Image]
) -> None:
    assert _chelsea_margin(backbones["efficientnet_lite0"], photos) > 0.2


def test_decoded_exif_rotation_gives_the_upright_vector(backbones: dict[str, Backbone], photos: dict[str, Image.Image]) -> None:
    """Backbones see pixels only: a PNG stored sideways with EXIF orientation 6 embeds as upright."""
    upright = photos["chelsea"]
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="PNG", exif=exif)
    decoded = decode(ImageInput(data=buffer.getvalue(), source="sideways.png"))
    backbone = backbones["efficientnet_lite0"]
    assert np.abs(backbone.embed([decoded]) - backbone.embed([upright])).max() < 1e-5


EXPECTED_CHANNELS = {"efficientnet_lite0": (40, 112), "mobilenet_v2": (32, 96)}


@pytest.mark.parametrize("name", OFFLINE)
def test_feature_maps_at_strides_8_and_16(backbones: dict[str, Backbone], photos: dict[str, Image.Image], name: str) -> None:
    backbone = backbones[name]
    images = [photos["chelsea"], photos["rocket"], photos["coffee"]]
    maps = backbone.feature_maps(images, batch_size=2)
    _check_maps(maps, n=3, channels=EXPECTED_CHANNELS[name], side=backbone.input_size)
    assert backbone.map_channels == EXPECTED_CHANNELS[name]
    reordered = backbone.feature_maps(images[::-1])
    assert torch.allclose(maps.stride8, reordered.stride8.flip(0), atol=1e-4)
    assert torch.allclose(maps.stride16, reordered.stride16.flip(0), atol=1e-4)
    _check_maps(backbone.feature_maps([]), n=0, channels=EXPECTED_CHANNELS[name], side=backbone.input_size)


def test_resnet50_from_a_local_file(random_resnet50: Backbone, photos: dict[str, Image.Image]) -> None:
    backbone = random_resnet50
    assert backbone.name == "resnet50" and backbone.dim == 2048
    assert backbone.embed([photos["chelsea"]]).shape == (1, 2048)
    _check_maps(backbone.feature_maps([photos["chelsea"]]), n=1, channels=(512, 1024), side=224)
    _check_one_pass(backbone, [photos["chelsea"], photos["rocket"]])


@pytest.mark.parametrize("name", OFFLINE)
def test_one_pass_gives_the_embedding_and_the_maps_of_two(
    backbones: dict[str, Backbone], photos: dict[str, Image.Image], name: str
) -> None:
    """A fused verdict's single forward pass answers what `embed` and `feature_maps` answer apart."""
    _check_one_pass(backbones[name], [photos["chelsea"], photos["rocket"], photos["coffee"]])


def _check_one_pass(backbone: Backbone, images: list[Image.Image]) -> None:
    pooled, maps = backbone.embed_with_maps(images, batch_size=2)
    assert pooled.dtype == np.float32 and np.abs(pooled - backbone.embed(images)).max() < 1e-5
    apart = backbone.feature_maps(images)
    assert torch.allclose(maps.stride8, apart.stride8, atol=1e-5) and torch.allclose(maps.stride16, apart.stride16, atol=1e-5)
    empty, no_maps = backbone.embed_with_maps([])
    assert empty.shape == (0, backbone.dim) and no_maps.stride8.shape[0] == 0


def _check_maps(maps: FeatureMaps, *, n: int, channels: tuple[int, int], side: int) -> None:
    for tensor, count, stride in zip(maps, channels, MAP_STRIDES):
        assert tensor.shape == (n, count, side // stride, side // stride)
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.is_contiguous()


def test_clip_has_no_feature_maps_and_loads_from_a_checkpoint_file(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    """The file path of `openclip:<model>:<file>` (the offline route); weights random, as none ship."""
    import open_clip

    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-S-32-alt").state_dict(), tmp_path / "small.pt")
    backbone = load_backbone("openclip:ViT-S-32-alt:small.pt", weights_dir=tmp_path, device="cpu")
    assert backbone.identity.startswith("openclip:ViT-S-32-alt@sha256:")
    vectors = backbone.embed([photos["chelsea"], photos["rocket"]])
    assert vectors.shape == (2, backbone.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert backbone.map_channels is None
    with pytest.raises(UnknownBackbone, match="patch scoring needs a CNN backbone"):
        backbone.feature_maps([photos["chelsea"]])
    # Without feature maps there is nothing to fuse: a new setting on it scores globally, where a CNN's fuses.
    from indexing.embedder import BackbonePool
    from indexing.service import NominalService
    from indexing.store import EdgeStore

    cnn = load_backbone("efficientnet_lite0", device="cpu")
    with EdgeStore(tmp_path / "store") as store:
        service = NominalService(store, backbones=BackbonePool(lambda name: backbone if name.startswith("openclip") else cnn))
        assert service.put_setting("clip", backbone="openclip:ViT-S-32-alt:small.pt").scoring == "global"
        assert service.put_setting("cnn", backbone="efficientnet_lite0").scoring == "fused"


def test_identities_differ_between_backbones_and_are_stable(
    backbones: dict[str, Backbone], random_resnet50: Backbone
) -> None:
    identities = {name: backbone.identity for name, backbone in backbones.items()}
    identities["resnet50"] = random_resnet50.identity
    assert len(set(identities.values())) == 3
    for name, identity in identities.items():
        assert identity.startswith(f"{name}@sha256:") and len(identity.split(":")[-1]) == 12
    assert identities["efficientnet_lite0"] == "efficientnet_lite0@sha256:579344248a93"
    assert identities["mobilenet_v2"] == "mobilenet_v2@sha256:2f518e773d44"
    again = load_backbone("EfficientNet-Lite0", device="cpu")
    assert again.name == "efficientnet_lite0" and again.identity == identities["efficientnet_lite0"]


def test_resnet50_batch_norm_folding_keeps_torchvisions_outputs(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    """The folded ResNet-50 Nominal runs equals torchvision's unfused `resnet50` with the same weights.

    Random weights (no package ships trained ones), with batch-norm statistics and affine
    parameters randomised too: a fresh network's BN (mean 0, var 1, weight 1, bias 0) is
    nearly the identity, which would hide a wrong fold.
    """
    torch.manual_seed(1)
    reference = resnet50(weights=None)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    folded = load_backbone("resnet50", device="cpu", weights_dir=tmp_path, download=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.encoder.modules())  # all folded away

    reference.eval()
    x = folded.preprocess.tensor([photos["chelsea"], photos["rocket"]])
    taps: dict[str, torch.Tensor] = {}
    reference.layer2.register_forward_hook(lambda m, i, out: taps.__setitem__("layer2", out))
    reference.layer3.register_forward_hook(lambda m, i, out: taps.__setitem__("layer3", out))
    reference.fc = torch.nn.Identity()  # torchvision's forward then ends at the 2048-d average pool
    with torch.inference_mode():
        exact_pooled = reference(x)
        fast_pooled = folded.encoder.pooled(x)
        fast2, fast3 = folded.encoder.maps(x)
    for fast, exact in ((fast_pooled, exact_pooled), (fast2, taps["layer2"]), (fast3, taps["layer3"])):
        assert fast.shape == exact.shape
        assert (fast - exact).abs().max() <= 1e-4 * exact.abs().max(), (fast - exact).abs().max()
    # The embedding is that pooled vector, L2-normalised.
    vectors = folded.embed([photos["chelsea"], photos["rocket"]])
    expected = torch.nn.functional.normalize(exact_pooled, dim=1).numpy()
    assert np.abs(vectors - expected).max() < 1e-4
