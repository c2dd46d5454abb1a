"""Choices several commands take, spelled as the API spells them (`PUT /v1/settings/{name}`)."""

from __future__ import annotations

from enum import Enum


class Scoring(str, Enum):
    """A setting's scoring mode (`indexing.settings.SCORING_MODES`)."""

    global_ = "global"
    patch = "patch"
    fused = "fused"


SCORING_HELP = ("global: kNN on one embedding per image; patch: PatchCore-style patch distances, taken relative to "
                "the nearest nominal images' own, with heat maps; fused: the patch and global scores and, once the "
                "parts are found aligned, per-position statistics, each standardised by the nominal images' own "
                "scores and averaged, with heat maps.")


class Tiling(str, Enum):
    """A patch setting's tiling (`indexing.tiling.TILING_MODES`)."""

    auto = "auto"
    on = "on"
    off = "off"


TILING_HELP = ("patch only: cut large or elongated images into overlapping tiles. auto: images at least 2:1 become one "
               "row of tiles with their aspect ratio kept, 5-20 MP images are cut at the backbone's native scale; on: "
               "every image at native scale; off: every image squashed to one square.")
