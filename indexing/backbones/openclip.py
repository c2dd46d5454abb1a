"""OpenCLIP image towers, named `openclip:<model>:<pretrained>` (e.g. `openclip:ViT-B-32:laion2b_s34b_b79k`).

`<pretrained>` is either an open_clip pretrained tag or a checkpoint file. No package
ships CLIP weights, so offline the user provides the file. Looked for in this order:

1. `<pretrained>` as a path, then `<weights_dir>/<pretrained>`: a checkpoint file.
   Preprocessing then follows the model's own config (its mean/std).
2. for a tag: `<weights_dir>/<model>-<tag>.safetensors` or `.bin` (the file the tag
   points at, saved under that name), then the Hugging Face / open_clip caches.
3. for a tag: a download, only if `download` is true and the server answers a quick
   probe (open_clip's own retry loop would otherwise take about 45 s offline).

Only the image tower is kept. Its projected output is the embedding (512-d for
ViT-B-32). CLIP has no convolutional feature maps at strides 8 and 16, so
`feature_maps` raises `UnknownBackbone`: patch scoring needs a CNN backbone.

The identity is `openclip:<model>:<tag>@sha256:...` for a tag and
`openclip:<model>@sha256:...` for a file, so moving a file does not change it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from indexing.backbones.names import OPENCLIP_PATTERN as PATTERN
from indexing.backbones.base import Backbone, resolve_device
from indexing.backbones.preprocess import Preprocess
from indexing.backbones.weights import WEIGHTS_DIR_SETTING, fingerprint, reachable
from indexing.errors import UnknownBackbone, WeightsUnavailable

PREFIX = "openclip"
# open_clip's names for the weights file in a Hugging Face repo (safetensors preferred).
_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_LOCAL_SUFFIXES = (".safetensors", ".bin")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class ClipEncoder(nn.Module):
    """A CLIP image tower; `pooled` is the projected image embedding (`encode_image`)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) -> (n, embed_dim), not yet L2-normalised."""
        return self.visual(x)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise UnknownBackbone("CLIP image towers have no stride-8/16 maps: patch scoring needs a CNN backbone")

    def pooled_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.maps(x)  # type: ignore[return-value] - refuses, as `maps` does


def parse(name: str) -> tuple[str, str]:
    """`openclip:<model>:<pretrained>` -> (model, pretrained); a path may itself contain ':'.

    Raises:
        UnknownBackbone: the name does not follow the pattern.
    """
    parts = name.split(":", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise UnknownBackbone(f"{name!r} does not follow {PATTERN} (e.g. openclip:ViT-B-32:laion2b_s34b_b79k)")
    return parts[1], parts[2]


def load(
    name: str,
    *,
    device: str | torch.device | None = None,
    weights_dir: str | Path | None = None,
    download: bool = True,
) -> Backbone:
    """Build the image tower of an OpenCLIP model with its pretrained weights.

    Args:
        name: `openclip:<model>:<pretrained>`.
        device: None for CUDA when available, else CPU.
        weights_dir: folder searched for checkpoint files.
        download: allow fetching a tag's weights when they are not found locally.

    Raises:
        UnknownBackbone: malformed name, unknown model, or a `<pretrained>` that is
            neither a file nor a tag of that model.
        WeightsUnavailable: the weights cannot be found, fetched or loaded strictly.
    """
    import open_clip  # slow to import; only paid by those who use CLIP

    model_name, pretrained = parse(name)
    if model_name not in open_clip.list_models():
        raise UnknownBackbone(
            f"unknown open_clip model {model_name!r} in {name!r}; open_clip.list_models() names the "
            f"{len(open_clip.list_models())} known ones (e.g. ViT-B-32, ViT-B-16, ViT-L-14)"
        )
    checkpoint = _as_file(pretrained, weights_dir)
    tag_cfg: dict[str, Any] = {}
    if checkpoint is None:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not tag_cfg:
            raise UnknownBackbone(
                f"{pretrained!r} is neither a file nor a pretrained tag of {model_name}; its tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(model_name))}"
            )
        checkpoint = _tag_file(model_name, pretrained, tag_cfg, weights_dir, download=download)
    model = _create(open_clip, model_name, checkpoint, tag_cfg)
    preprocess = _preprocess(open_clip.get_model_preprocess_cfg(model))
    visual = model.visual  # the text tower is dropped: only images are embedded
    # A file path is left out of the identity, so moving the file does not orphan collections.
    identity_stem = f"{PREFIX}:{model_name}" + (f":{pretrained}" if tag_cfg else "")
    return Backbone(
        name=name,
        identity=f"{identity_stem}@{fingerprint(checkpoint)}",
        dim=_output_dim(visual, preprocess),
        encoder=ClipEncoder(visual),
        preprocess=preprocess,
        device=resolve_device(device),
        map_channels=None,
    )


def _as_file(pretrained: str, weights_dir: str | Path | None) -> Path | None:
    candidates = [Path(pretrained).expanduser()]
    if weights_dir is not None:
        candidates.append(Path(weights_dir).expanduser() / pretrained)
    return next((path for path in candidates if path.is_file()), None)


def _tag_file(
    model_name: str, tag: str, cfg: dict[str, Any], weights_dir: str | Path | None, *, download: bool
) -> Path:
    base = f"{model_name}-{tag}"
    if weights_dir is not None:
        for suffix in _LOCAL_SUFFIXES:
            local = Path(weights_dir).expanduser() / f"{base}{suffix}"
            if local.is_file():
                return local
    cached = _cached(cfg)
    if cached is not None:
        return cached
    source = _source_url(cfg)
    wanted = (Path(weights_dir).expanduser() if weights_dir is not None else Path("<weights dir>")) / f"{base}.bin"
    fix = (
        f"download {source} and save it as {wanted} (a .safetensors file as {wanted.with_suffix('.safetensors')}), "
        f"with the {WEIGHTS_DIR_SETTING} pointing at its folder"
    )
    if not download:
        raise WeightsUnavailable(f"weights for {PREFIX}:{model_name}:{tag} not found and downloading is off: {fix}")
    if not reachable(source):
        raise WeightsUnavailable(f"weights for {PREFIX}:{model_name}:{tag} not found and {source} is unreachable: {fix}")
    from open_clip.pretrained import download_pretrained

    try:
        return Path(download_pretrained(cfg))
    except Exception as exc:  # hub errors come in many types
        raise WeightsUnavailable(f"download of {PREFIX}:{model_name}:{tag} failed ({exc}): {fix}") from exc


def _cached(cfg: dict[str, Any]) -> Path | None:
    """A tag's weights already in the Hugging Face cache or open_clip's URL cache."""
    repo = str(cfg.get("hf_hub", "")).rstrip("/")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        repo_id, file_in_repo = os.path.split(repo) if repo.count("/") > 1 else (repo, "")
        for file_name in (file_in_repo,) if file_in_repo else _HF_FILES:
            hit = try_to_load_from_cache(repo_id, file_name)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    url = str(cfg.get("url", ""))
    if url:
        local = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if local.is_file():
            return local
    return None


def _source_url(cfg: dict[str, Any]) -> str:
    repo = str(cfg.get("hf_hub", "")).rstrip("/")
    if repo:
        repo_id, file_in_repo = os.path.split(repo) if repo.count("/") > 1 else (repo, "")
        return f"https://huggingface.co/{repo_id}/resolve/main/{file_in_repo or _HF_FILES[1]}"
    return str(cfg.get("url", ""))


def _create(open_clip: Any, model_name: str, checkpoint: Path, tag_cfg: dict[str, Any]) -> nn.Module:
    """open_clip model from a checkpoint file, loaded strictly (`require_pretrained`)."""
    force_preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation") if k in tag_cfg}
    try:
        return open_clip.create_model(
            model_name,
            pretrained=str(checkpoint),
            require_pretrained=True,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=force_preprocess or None,
            device="cpu",
        )
    except ImportError as exc:
        raise UnknownBackbone(f"{PREFIX}:{model_name} needs a package that is not installed ({exc})") from exc
    except Exception as exc:  # open_clip raises RuntimeError, KeyError, pickle errors... for a bad file
        text = " ".join(str(exc).split())[:400]
        raise WeightsUnavailable(
            f"checkpoint {checkpoint} could not be loaded into open_clip {model_name} ({type(exc).__name__}: {text}); "
            f"provide an open_clip checkpoint of exactly that model"
        ) from exc


def _output_dim(visual: nn.Module, preprocess: Preprocess) -> int:
    dim = getattr(visual, "output_dim", None)
    if isinstance(dim, int):
        return dim
    with torch.inference_mode():  # towers without the attribute (timm ones) tell by running once
        return int(visual.eval()(torch.zeros(1, 3, preprocess.size, preprocess.size)).shape[-1])


def _preprocess(cfg: dict[str, Any]) -> Preprocess:
    size = cfg.get("size", 224)
    side = int(size if isinstance(size, int) else size[0])
    return Preprocess(
        size=side,
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        resample=_RESAMPLE.get(str(cfg.get("interpolation", "bicubic")), Image.Resampling.BICUBIC),
        channels_last=False,
    )
