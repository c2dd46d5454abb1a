"""Choices several commands take, spelled as the API spells them (`PUT /v1/settings/{name}`)."""

from __future__ import annotations

from enum import Enum


class Scoring(str, Enum):
    """A setting's scoring mode (`indexing.settings.SCORING_MODES`)."""

    global_ = "global"
    patch = "patch"


class Tiling(str, Enum):
    """A patch setting's tiling (`indexing.tiling.TILING_MODES`)."""

    auto = "auto"
    on = "on"
    off = "off"
