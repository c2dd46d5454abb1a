"""Weights files: find, fingerprint, read and load them strictly, or fail saying what to provide.

A backbone is only as good as its weights, and a randomly initialised network still
returns unit vectors of the right shape. So every load here is all-or-nothing: the
file must parse, and `load_state_dict(strict=True)` must fill every parameter and
buffer of the network. Anything else raises `WeightsUnavailable` naming the file and
the fix; nothing falls back to the network's random initialisation.

Downloads are tried only after a quick reachability probe, so an offline machine
fails in well under a second instead of waiting on library retry loops.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from torch import nn

from indexing.errors import WeightsUnavailable

# Named in every "provide the file" message; the app's Config reads it, not this package.
WEIGHTS_DIR_SETTING = "NOMINAL_WEIGHTS_DIR environment variable / --weights-dir option"
PROBE_TIMEOUT_S = 3.0
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's convention: resnet50-11ad3fa6.pth


def fingerprint(path: Path) -> str:
    """`sha256:` plus the first 12 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:12]}"


def read_state_dict(path: Path, *, fix: str) -> dict[str, torch.Tensor]:
    """Read a PyTorch state dict without executing any pickled code.

    Args:
        path: a `.pt`/`.pth` file written by `torch.save(state_dict)`; a checkpoint
            dict holding the weights under "state_dict" is unwrapped.
        fix: what the user should do if the file is unusable (ends the message).

    Returns:
        Parameter name -> tensor, on the CPU.

    Raises:
        WeightsUnavailable: the file is missing, truncated, not a state dict, or
            needs arbitrary unpickling (`weights_only` refuses it).
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsUnavailable(f"weights file {path} does not exist; {fix}") from exc
    except Exception as exc:  # torch raises many types for a corrupt file (pickle, zip, runtime)
        raise WeightsUnavailable(
            f"weights file {path} is corrupt or not a PyTorch state dict ({type(exc).__name__}: "
            f"{_short(exc)}); {fix}"
        ) from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsUnavailable(f"weights file {path} does not hold a state dict of tensors; {fix}")
    return loaded


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], *, path: Path, fix: str) -> None:
    """Fill every parameter and buffer of `module` from `state_dict`, or raise.

    Raises:
        WeightsUnavailable: a key is missing or unexpected, or a shape differs.
    """
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailable(
            f"weights file {path} does not match the {type(module).__name__} architecture "
            f"({_short(exc)}); {fix}"
        ) from exc


def hub_checkpoint(url: str) -> Path:
    """Where `torch.hub` keeps (or would keep) the download of `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlsplit(url).path).name


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the server of `url` answers at all (any HTTP status counts)."""
    parts = urllib.parse.urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}/"
    try:
        with urllib.request.urlopen(urllib.request.Request(root, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def download_to_hub_cache(url: str) -> Path:
    """Download `url` into the torch.hub cache, checking the hash its file name carries.

    Raises:
        WeightsUnavailable: the server is unreachable or the download fails.
    """
    target = hub_checkpoint(url)
    if not reachable(url):
        raise WeightsUnavailable(f"cannot reach {url} (offline?)")
    match = _HASH_IN_NAME.search(target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1) if match else None, progress=False)
    except Exception as exc:  # network errors and hash mismatches alike
        raise WeightsUnavailable(f"download of {url} failed ({_short(exc)})") from exc
    return target


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."
