"""Fused scoring: one score from the patch, global and (for aligned parts) positional scores of an image.

No one scorer wins on every kind of image (README, "Detection quality"): the largest patch distance
finds small defects, the global kNN distance finds a part that is wrong as a whole, and per-position
statistics (`indexing.positional`) find a patch that would be normal elsewhere on an aligned part.
A fused setting keeps all three and scores an image by the mean of the three scores, each
standardised by its own nominal images' scores (z-scores: the score minus their mean, over their
standard deviation), so that no scorer's scale outweighs another's.

The positional part joins only once a setting has decided, from its first `ALIGNMENT_IMAGES`
nominal images, that its parts are aligned (`PositionalRecord.joins`), and never for images cut
into tiles; otherwise the score is the patch and global parts' mean. The scorer a calibration
records names the parts (`scorer_name`: "fused:patch+positional+global"), so a threshold made
before the decision is not applied after it.

The three scores come from one backbone pass per image scored whole (`Backbone.embed_with_maps`).

The heat map of an image scored whole is the mean of its patch map and its positional map (each patch's
distance to its position's Gaussian), each standardised as its part's score is, wherever the setting has
positional statistics, aligned or not: the map ranks places within and across images, and on the visible
suite this fused map is above the patch map alone on every set with masks (pixel ROC-AUC, seed 0: DeepPCB
0.869 against 0.823, PIPED 0.955 against 0.942, Hazelnut Toy 0.989 against 0.988; README, "The fused heat
map"); the positional map alone was below it on Hazelnut Toy and DeepPCB and above it on PIPED. The global
part, one number an image, stays out of the map: added to it, it lifted every pixel of a suspect image and
cost 0.003-0.06.

On the visible suite (`benchmarks/quality.py`, README) the fused score was at or above the best
anomalib column on all eight sets, and at or above the better of patch and global on the stress
sets whose parts move.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from indexing.backbones import Backbone
from indexing.calibration import FUSED_PREFIX
from indexing.heatmap import heat_map
from indexing.images import ImageInput
from indexing.patch_bank import PatchBank
from indexing.patch_mode import PatchConfig, PatchIndex, PatchResult
from indexing.positional import PositionalMemory, PositionalRecord
from indexing.scoring import knn_score, leave_one_out_scores
from indexing.settings import CollectionVersion
from indexing.store.base import Neighbour, VectorStore


# nearest(version, vectors, image ids, k): each vector's k nearest nominal images, its own left out.
Nearest = Callable[[CollectionVersion, np.ndarray, Sequence[str], int], list[list[Neighbour]]]


@dataclass(frozen=True)
class Standard:
    """A scorer's nominal scores, summarised: a score's z-score is (score - mean) / spread."""

    mean: float
    spread: float

    @classmethod
    def of(cls, reference: Sequence[float] | np.ndarray) -> "Standard":
        values = np.asarray(reference, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(0.0, 1.0)
        return cls(float(values.mean()), float(values.std()))

    def __call__(self, score: float | np.ndarray) -> float | np.ndarray:  # an array: a map's cells
        return (score - self.mean) / max(self.spread, 1e-12)


def parts_of(positional: PositionalRecord) -> tuple[str, ...]:
    """The scorers a fused score averages: positional statistics join once the parts were found aligned."""
    return ("patch", "positional", "global") if positional.joins else ("patch", "global")


def scorer_name(parts: Sequence[str]) -> str:
    """What a calibration of these fused scores records as its scorer (`Calibration.scoring`)."""
    return FUSED_PREFIX + "+".join(parts)


@dataclass(frozen=True)
class FusedResult:
    """One image's fused score, its parts' own scores, and the patch result (grid, heat map, neighbours)."""

    score: float
    parts: dict[str, float]
    patch: PatchResult
    embedding: np.ndarray


@dataclass(frozen=True)
class Standards:
    """Each part's `Standard` for one state of a version, and the fused scores of its nominal images."""

    parts: tuple[str, ...]
    by_part: dict[str, Standard]
    nominal: dict[str, float]  # image id -> fused leave-one-out score, for images every part scored

    def fuse(self, scores: dict[str, float]) -> float:
        return float(np.mean([self.by_part[part](scores[part]) for part in self.parts]))


class FusedScorer:
    """Scores images of fused settings: the patch bank's scores, the version's kNN and its positional statistics.

    Args:
        store: the open store (the version's global vectors).
        patches: the patch banks.
        positional: the positional statistics.
        nearest: the service's kNN (`Nearest`), so a fused score's global part is the global mode's score.
    """

    def __init__(self, store: VectorStore, patches: PatchIndex, positional: PositionalMemory, nearest: Nearest) -> None:
        self.store = store
        self.patches = patches
        self.positional = positional
        self.nearest = nearest
        self._standards: dict[str, tuple[tuple, Standards]] = {}
        self._lock = threading.Lock()

    def record(self, patch: dict[str, Any]) -> PositionalRecord:
        return self.positional.record(patch["collection"])

    def score(
        self,
        version: CollectionVersion,
        patch: dict[str, Any],
        backbone: Backbone,
        images: Sequence[ImageInput],
        decoded: Sequence[Image.Image],
        *,
        k: int,
        neighbours: int = 0,
        grids: bool = False,
        maps: bool = False,
        batch_size: int = 32,
        record: PositionalRecord | None = None,
    ) -> list[FusedResult]:
        """Fused scores of images (leave-one-out for nominal ones, as every part's is). `record`: the version's
        positional record, when the caller read it already (`NominalService.context`)."""
        config = PatchConfig.from_dict(patch.get("patch_config"))
        record = record if record is not None else self.record(patch)
        bank = self.patches.bank(version.setting, patch["collection"], config.dim)  # once: each look counts the store
        standards = self.standards(version, patch, record, k=k, batch_size=batch_size, bank=bank)
        made = None
        if config.whole(decoded, backbone.input_size):  # one backbone pass for all three parts
            embeddings, feature_maps = backbone.embed_with_maps(list(decoded), batch_size=batch_size)
            made = config.maker().patchify(feature_maps)
        else:
            embeddings = backbone.embed(list(decoded), batch_size=batch_size)
        if "positional" in standards.parts and made is None:
            # a tiled image in a setting found aligned: the statistics stop at the next merge
            raise ValueError("an image of this fused setting was cut into tiles: re-index it")
        distances = None  # (images, positions): each patch's distance to its position's Gaussian
        if made is not None and not record.tiled and ("positional" in standards.parts or grids or maps):
            statistics = self.positional.statistics(record)
            if statistics is not None:
                distances = statistics.distances(made.vectors)
        fused_map = distances is not None and (grids or maps)  # the patch part's own heat map would be replaced
        found = self.patches.score(version.setting, patch["collection"], config, backbone, images, decoded,
                                   neighbours=neighbours, grids=grids or fused_map, maps=maps and not fused_map,
                                   batch_size=batch_size, patches=made, bank=bank)
        ids = [image.id for image in images]
        near = self.nearest(version, embeddings, ids, k)
        out = []
        for number, (result, neighbours_found) in enumerate(zip(found, near)):
            scores = {"patch": result.score, "global": knn_score([n.distance for n in neighbours_found], k)}
            if "positional" in standards.parts:
                assert distances is not None
                scores["positional"] = float(distances[number].max())
            if fused_map:
                result = self._with_positional_map(result, distances[number], standards, record, config,
                                                   backbone.input_size if maps else None)
            out.append(FusedResult(standards.fuse(scores), scores, result, embeddings[number]))
        return out

    @staticmethod
    def _with_positional_map(result: PatchResult, distances: np.ndarray, standards: Standards,
                             record: PositionalRecord, config: PatchConfig, heat_size: int | None) -> PatchResult:
        """The patch result with its map replaced by the fused map (see the module docstring): the mean of the
        patch map and the positional map, each standardised as its part's score is (the positional standard is
        the record's whether or not the part joins the score); smoothed to (heat_size, heat_size) when given."""
        assert result.grid is not None
        positional = Standard(*record.standard)(distances.reshape(result.grid.shape))
        grid = ((standards.by_part["patch"](result.grid) + positional) / 2.0).astype(np.float32)
        heat = None if heat_size is None else heat_map(grid, grid.shape, (heat_size, heat_size), sigma=config.sigma)
        return replace(result, grid=grid, heat=heat)

    def standards(self, version: CollectionVersion, patch: dict[str, Any], record: PositionalRecord, *, k: int,
                  batch_size: int = 32, bank: PatchBank | None = None) -> Standards:
        """Each part's standard, from the nominal images' own scores: the patch bank's leave-one-out scores,
        the global kNN's leave-one-out scores and the positional statistics' reference. Worked out once per
        state of the version (its image count as its record keeps it, the bank's size, the positional
        generation, k) and kept. `bank`: the version's loaded bank, when the caller holds it already."""
        if bank is None:
            bank = self.patches.bank(version.setting, patch["collection"], patch["dim"])
        key = (version.count, len(bank), record.generation, k)
        with self._lock:
            found = self._standards.get(version.collection)
        if found is not None and found[0] == key:
            return found[1]
        config = PatchConfig.from_dict(patch.get("patch_config"))
        by_image = {"patch": self.patches.nominal_scores_by_image(version.setting, patch["collection"], config),
                    "global": self._global_reference(version, k, batch_size)}
        parts = parts_of(record)
        by_part = {part: Standard.of(list(scores.values())) for part, scores in by_image.items()}
        if "positional" in parts:
            mean, spread = record.standard
            by_part["positional"] = Standard(mean, spread)
            by_image["positional"] = self.positional.scores(record)
        standards = Standards(parts, by_part, {})
        common = set.intersection(*(set(by_image[part]) for part in parts))
        nominal = {image: standards.fuse({part: by_image[part][image] for part in parts})
                   for image in by_image["patch"] if image in common}
        standards = Standards(parts, by_part, nominal)
        with self._lock:
            self._standards[version.collection] = (key, standards)  # a grown version's are worked out afresh
        return standards

    def _global_reference(self, version: CollectionVersion, k: int, batch_size: int) -> dict[str, float]:
        """Each nominal image's leave-one-out kNN score among the version's global vectors."""
        return leave_one_out_scores(self.store.scroll(version.collection, with_vectors=True),
                                    lambda vectors, ids: self.nearest(version, vectors, ids, k), k, batch_size=batch_size)
