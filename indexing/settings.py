"""Machine settings: a product/line configuration and how its collections are named.

A machine setting owns versioned collections, one per (setting, backbone,
version), and an alias that names the active one. A re-index builds version
N+1 beside N and moves the alias in one step; inspections never see a
half-built version.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal

from indexing.errors import InvalidName
from indexing.tiling import TILING_MODES, Tiling

SETTING_KIND = "setting"
VERSION_KIND = "version"
CALIBRATION_KIND = "calibration"
# Operator feedback: an image labelled PASS or FAIL after a verdict.
LABEL_KIND = "label"

Scoring = Literal["global", "patch", "fused"]
SCORING_MODES: tuple[str, ...] = ("global", "patch", "fused")
# The modes whose versions keep a patch bank beside their global vectors (`indexing.versions`): a fused setting
# scores by its patches too (`indexing.fused`).
PATCH_BANK_MODES: tuple[str, ...] = ("patch", "fused")


def default_scoring(map_channels: tuple[int, int] | None) -> Scoring:
    """The scoring a setting created without one gets: fused where the backbone has feature maps to make
    patches of, global where it has none (CLIP). Fused was at or above the best anomalib column on every
    visible set (README, "Detection quality"), where global and patch each lost on some."""
    return "fused" if map_channels is not None else "global"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_setting_name(name: str) -> str:
    # "__" separates the parts of a collection name, so a setting may not contain it.
    if not _NAME.match(name) or "__" in name:
        raise InvalidName(
            f"machine setting name {name!r} is not valid: use 1-64 letters, digits, '-' or '_' "
            "(starting with a letter or digit, no '__')"
        )
    return name


def backbone_slug(backbone: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", backbone).strip("-")


def collection_name(setting: str, backbone: str, version: int, *, kind: str = "global") -> str:
    suffix = "" if kind == "global" else f"__{kind}"
    return f"nominal__{setting}__{backbone_slug(backbone)}{suffix}__v{version}"


def alias_name(setting: str, *, kind: str = "global") -> str:
    suffix = "" if kind == "global" else f"__{kind}"
    return f"nominal__{setting}{suffix}__active"


@dataclass(frozen=True)
class MachineSetting:
    """What is configured for one machine setting; persisted as a record in the store."""

    name: str
    backbone: str
    k: int
    # A record written before a setting chose its scoring scored globally; new settings get `default_scoring`.
    scoring: Scoring = "global"
    description: str = ""
    # Patch scoring of large or elongated images by tiles: "auto", "on" or "off" (`indexing.tiling`).
    # Recorded with each patch bank when it is built: a change takes effect at the next re-index.
    tiling: Tiling = "auto"
    created_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)
    calibration_id: str | None = None
    # The active version's collection, written with the alias it mirrors (`NominalService.activate`), so one
    # read of this record tells a verdict everything it needs; None in records from before it was kept.
    active: str | None = None
    active_count: int | None = None  # its number of images, kept with it (uploads and deletions refresh it)

    def __post_init__(self) -> None:
        check_setting_name(self.name)
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {', '.join(SCORING_MODES)}, got {self.scoring!r}")
        if self.tiling not in TILING_MODES:
            raise ValueError(f"tiling must be one of {', '.join(TILING_MODES)}, got {self.tiling!r}")

    @property
    def keeps_patches(self) -> bool:
        """Whether the setting's versions keep a patch bank (`PATCH_BANK_MODES`)."""
        return self.scoring in PATCH_BANK_MODES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MachineSetting":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})

    def updated(self, **changes: Any) -> "MachineSetting":
        return replace(self, updated_at=utc_now(), **changes)


@dataclass(frozen=True)
class CollectionVersion:
    """One built (or building) version of a setting's nominal vectors."""

    setting: str
    version: int
    collection: str
    backbone: str
    backbone_identity: str
    dim: int
    state: Literal["building", "ready"] = "building"
    count: int = 0
    created_at: str = field(default_factory=utc_now)
    kind: str = "global"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CollectionVersion":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})
