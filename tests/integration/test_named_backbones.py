"""ResNet-50 and OpenCLIP, the backbones the product names, through the whole path a user takes.

Their weights cannot be downloaded here and no package ships them, so the test writes
weight files itself, with RANDOM weights: this proves the wiring (loading from
NOMINAL_WEIGHTS_DIR, index, inspect, patch scoring with ResNet-50's layer2/layer3 maps,
calibration, re-index, the backbone recorded on each version), not the quality of
their verdicts. Product code never falls back to random weights: a missing or bad file
is `WeightsUnavailable` (tests/unit/test_backbones.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from indexing.backbones import load_backbone
from indexing.errors import UnknownBackbone
from indexing.reindex import reindex
from indexing.service import BackbonePool, NominalService
from indexing.store import EdgeStore

pytestmark = pytest.mark.slow

CLIP = "openclip:ViT-S-32-alt:clip-random.pt"


class Progress:
    def start(self, total: int | None = None) -> None:
        pass

    def __call__(self, stage: str, done: int, total: int) -> None:
        pass

    def report_errors(self, errors: list[dict[str, str]]) -> None:
        assert not errors, errors


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet50.pth and an OpenCLIP checkpoint, random weights, where NOMINAL_WEIGHTS_DIR would point."""
    import open_clip
    from torchvision.models import resnet50

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(resnet50(weights=None).state_dict(), folder / "resnet50.pth")
    torch.save(open_clip.create_model("ViT-S-32-alt").state_dict(), folder / "clip-random.pt")
    return folder


@pytest.fixture
def service(tmp_path: Path, weights_dir: Path) -> Iterator[NominalService]:
    store = EdgeStore(tmp_path / "store")
    pool = BackbonePool(partial(load_backbone, device="cpu", weights_dir=weights_dir, download=False))
    try:
        yield NominalService(store, backbones=pool, batch_size=4)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("backbone", "scoring", "dim"),
    [("resnet50", "global", 2048), ("resnet50", "patch", 2048), (CLIP, "global", None)],
)
def test_a_named_backbone_runs_index_inspect_calibrate_and_reindex(
    service: NominalService, hazelnut: Path, hazelnut_sets, tmp_path: Path, backbone: str, scoring: str, dim: int | None
) -> None:
    train, good, defect = hazelnut_sets["train"][:5], hazelnut_sets["good"][:2], hazelnut_sets["defect"][:2]
    service.put_setting("line", backbone=backbone, k=1, scoring=scoring)
    indexed = service.index("line", train)
    assert indexed.indexed == 5
    version = service.versions.active("line")
    loaded = service.backbones.get(backbone)
    assert version.backbone == loaded.name and version.backbone_identity == loaded.identity
    assert version.dim == (dim or loaded.dim)
    assert loaded.identity.split("@")[0] == ("resnet50" if backbone == "resnet50" else "openclip:ViT-S-32-alt")
    if scoring == "patch":
        assert service.versions.has_patch_bank(version)
        # 512 + 1024 channels are more than a patch vector holds: projected (seeded) to 256-d.
        patch = service.versions.patch_record(version)
        assert (patch["patch_config"]["projection"], patch["dim"]) == ("random", 256)

    first = service.inspect("line", good + defect, heatmap=scoring == "patch")
    assert [v.verdict for v in first] == ["UNCALIBRATED"] * 4 and all(v.score >= 0 for v in first)
    assert all(v.neighbours for v in first)
    if scoring == "patch":
        assert all(v.heatmap is not None for v in first)

    calibration = service.calibrate("line", pass_images=good, fail_images=defect, policy="f1").calibration
    assert calibration.backbone == loaded.identity and calibration.scoring == scoring
    # Random weights may give a threshold the service holds back as degenerate: activate it explicitly.
    service.activate_calibration("line", calibration.id)
    assert {v.verdict for v in service.inspect("line", defect)} <= {"PASS", "FAIL"}

    source = tmp_path / "source"
    shutil.copytree(hazelnut / "test" / "good", source)
    result = reindex(service, Progress(), setting="line", source=str(source))
    assert result["version"] == 2 and result["indexed"] == 6
    again = service.versions.active("line")
    assert again.backbone_identity == loaded.identity and service.status("line").count == 6
    assert service.status("line").setting.backbone == loaded.name
    assert len(service.inspect("line", defect[:1])) == 1


def test_clip_cannot_score_patches_and_says_so_before_anything_is_stored(service: NominalService, hazelnut_sets) -> None:
    service.put_setting("clip-patches", backbone=CLIP, scoring="patch")
    with pytest.raises(UnknownBackbone, match="patch scoring needs a CNN backbone"):
        service.index("clip-patches", hazelnut_sets["train"][:2])
    assert service.versions.list("clip-patches") == []
