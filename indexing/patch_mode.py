"""Patch-level (PatchCore-style) scoring for the service: build, extend and query patch banks.

`NominalService` delegates here for settings created with `scoring="patch"`; this
module owns the patch recipe (`PatchConfig`), the per-collection bank cache and
the per-image answer (`PatchResult`), and knows nothing of versions or aliases:
the service hands it the collection to use.

Flow, as PatchCore's `fit` reads:
    index:   feature maps -> `PatchMaker.patchify` -> sampler.run(covered=bank) -> store + bank
    inspect: feature maps -> patchify -> `PatchScorer.run` (faiss over the bank) -> largest distance
             -> over the own scores of the nominal images nearest the worst patch -> score, heat map

The recipe a bank was built with is recorded with its collection version
(`PatchConfig.to_dict`), so changing the defaults never mixes patch vectors made
two ways in one bank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexing.backbones import Backbone, FeatureMaps
from indexing.compute import INLINE, Compute
from indexing.datasets import TestImage
from indexing.errors import EmptyCollection
from indexing.heatmap import SIGMA, heat_map, mask_at, overlay_png, pixel_pro, pixel_roc_auc
from indexing.images import ImageInput, decode
from indexing.metric_learning import ScoredPatches
from indexing.bank_cache import BankCache
from indexing.patch_bank import PatchBank, patch_point_id, patch_points
from indexing.patch_search import HybridCombiner, HybridScorer, PatchScore, PatchScorer
from indexing.patches import Aggregation, PatchMaker, Patches, Projection
from indexing.sampler import GreedyCoresetSampler, IdentitySampler, Sampler
from indexing.store.base import Neighbour, Vectors
from indexing.tiling import RULE as TILING_RULE
from indexing.tiling import TileLayout, Tiling, check_rule, check_tiling, layout_for, metric_size


# Nominal images a relative score is taken against (`PatchConfig.local_scale`), chosen on the visible suite.
LOCAL_SCALE = 20


@dataclass(frozen=True)
class PatchConfig:
    """How patch vectors are made, subsampled and scored. Defaults chosen on the visible suite (benchmarks/quality.py).

    Attributes:
        dim: patch vector length (half per feature-map scale under "random" and "pool"); under
            "balanced" and "none", the most channels a backbone may have: `for_backbone`
            records the backbone's own count.
        projection: "balanced" (the default: the backbone's own channels, 40 + 112 for
            efficientnet_lite0, each scale L2-normalised per position so both weigh the same;
            no seed moves the features). Against the seeded projection to 256-d it was the
            mean of three seeds at or above on six of seven scored sets (KolektorSDD +0.015,
            DeepPCB +0.026, AITEX +0.014; ELPV poly -0.003), pixel ROC-AUC and PRO above on
            all four with masks, and its bank is 40% smaller. A backbone with more channels
            than `dim` (resnet50: 1,536) is projected: "random" (seeded Gaussian to `dim`;
            0.925 vs 0.918 for PatchCore's "pool" on ELPV poly at 256-d). "none" keeps the
            channels unnormalised (a lever the suite measures).
        normalise: L2-normalise patch vectors.
        coreset_ratio: fraction of each indexing batch's patches kept (1.0 keeps all).
        coreset_projection_dim: dimensions the coreset measures distances in.
        reweight_k: PatchCore re-weighting neighbours; 0 is plain max distance.
        sigma: heat-map smoothing in input pixels.
        seed: seeds the projections and the coreset's first pick.
        top_k: image score = mean distance of the `top_k` patches farthest from the
            bank (1: the single largest, PatchCore's score).
        tiling: "auto", "on" or "off": whether large or elongated images are cut into
            tiles at the backbone's native scale (`indexing.tiling`). Banks recorded
            before tiling existed read as "off".
        tiling_rule: which `auto` rule the bank was built with (`indexing.tiling.RULE`);
            banks recorded before the rule was numbered read as 1.
        local_scale: k > 0 makes the image score relative: the largest patch distance divided by
            the mean leave-one-out score of the k nominal images nearest the worst patch, so an
            image is judged against the nominal images it resembles (poly cells beside mono
            ones, a busy weave beside a plain one) rather than against the whole bank's. 0 keeps
            the plain distance; banks recorded before it existed read as 0, so their calibrated
            thresholds keep meaning what they meant.
        neighbourhood, aggregation: the window each feature map is averaged over before patches are cut, and how
            (`PatchMaker`). The default, 3 x 3 "tent" (each neighbour weighted by closeness, the centre 4x a
            corner), keeps a thin defect sharper than PatchCore's plain 3 x 3 mean ("box") and still describes
            its surroundings. Fused, mean of three seeds, against the box: DeepPCB +0.036 (pixel ROC-AUC
            +0.043), ELPV mono +0.004, poly +0.005, AITEX +0.005, combined +0.003, Hazelnut Toy and PIPED
            equal, KolektorSDD -0.018 (0.892, still 0.047 above the best anchor). A single cell (1), as PaDiM
            takes its features, gains DeepPCB +0.11 but loses KolektorSDD 0.056 and ELPV combined 0.014
            (README, "The neighbourhood"). Records written before these fields read as the box.
    """

    dim: int = 256
    projection: Projection = "balanced"
    normalise: bool = True
    coreset_ratio: float = 0.01
    coreset_projection_dim: int = 128
    reweight_k: int = 0
    sigma: float = SIGMA
    seed: int = 0
    top_k: int = 1
    tiling: Tiling = "auto"
    tiling_rule: int = TILING_RULE
    local_scale: int = LOCAL_SCALE
    neighbourhood: int = 3
    aggregation: Aggregation = "tent"

    def __post_init__(self) -> None:
        self.maker()
        self.sampler()
        check_tiling(self.tiling)
        check_rule(self.tiling_rule)
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.local_scale < 0:
            raise ValueError(f"local_scale must be 0 (off) or a number of nominal images, got {self.local_scale}")

    def whole(self, images: Sequence[Image.Image], input_size: int) -> bool:
        """Whether every image is scored whole, none cut into tiles (`indexing.tiling.layout_for`)."""
        return all(layout_for(pixels, input_size, self.tiling, self.tiling_rule) is None for pixels in images)

    def scorer(self, bank: PatchBank) -> PatchScorer:
        return PatchScorer(bank.nn, reweight_k=self.reweight_k, bounds=bank.bounds, top_k=self.top_k)

    def maker(self) -> PatchMaker:
        return PatchMaker(dim=self.dim, projection=self.projection, normalise=self.normalise,
                          neighbourhood=self.neighbourhood, aggregation=self.aggregation, seed=self.seed)

    def sampler(self) -> Sampler:
        if self.coreset_ratio >= 1.0:
            return IdentitySampler() if self.coreset_ratio == 1.0 else GreedyCoresetSampler(self.coreset_ratio)
        return GreedyCoresetSampler(self.coreset_ratio, projection_dim=self.coreset_projection_dim, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PatchConfig":
        """The recipe a record holds: one recorded before tiling existed never tiles, one recorded before
        the `auto` rule was numbered keeps rule 1 (`indexing.tiling`), one recorded before the local
        scale existed scores plain distances, one recorded before the neighbourhood was a field averages a
        3 x 3 box."""
        known = set(cls.__dataclass_fields__)
        values = {key: value for key, value in (data or {}).items() if key in known}
        if data is not None:
            values.setdefault("projection", "random")
            values.setdefault("tiling", "off")
            values.setdefault("tiling_rule", 1)
            values.setdefault("local_scale", 0)
            values.setdefault("neighbourhood", 3)  # every bank recorded before these fields averaged a 3 x 3 box
            values.setdefault("aggregation", "box")
        return cls(**values)

    def for_backbone(self, channels: tuple[int, int]) -> "PatchConfig":
        """The recipe a bank of this backbone is built and recorded with: under "balanced" or "none", `dim` is the
        backbone's own channel count, or, where that is more than `dim`, the channels are projected to `dim`
        ("random")."""
        if self.projection not in ("balanced", "none"):
            return self
        if sum(channels) > self.dim:
            return replace(self, projection="random")
        return replace(self, dim=sum(channels))


@dataclass(frozen=True)
class PatchResult:
    """The patch-level answer for one image.

    Attributes:
        score: image score (largest patch distance, re-weighted if configured, over the
            local scale where the recipe has one: `PatchConfig.local_scale`).
        grid: (rows, cols) float32 nearest-bank distance of every patch, when grids
            or maps were asked for (a score alone skips most of that search); over the
            same local scale, so its largest value is the score.
        worst: (row, col) of the most anomalous patch.
        neighbours: nominal images holding the bank patches nearest to the worst
            patch, nearest first (id = image id, payload: source, row, col, patch).
        heat: float32 smoothed map, when asked: (size, size) at the backbone input
            size, or (height, width) of the whole image when it was tiled.
        tiled: (width, height) of the image when it was scored by tiles, else None; its
            `grid` then covers the whole image at one cell per `TILED_CELL` pixels.
    """

    score: float
    grid: np.ndarray | None
    worst: tuple[int, int]
    neighbours: list[Neighbour] = field(default_factory=list)
    heat: np.ndarray | None = None
    tiled: tuple[int, int] | None = None

    def heat_at(self, size: int, sigma: float) -> np.ndarray:
        """The smoothed map where pixel metrics compare it: (size, size) for a squashed image, or the
        tiled image's aspect at most `size`^2 pixels (`indexing.tiling.metric_size`)."""
        assert self.grid is not None, "heat_at needs a PatchResult scored with grids=True"
        if self.tiled is None:
            return heat_map(self.grid, self.grid.shape, (size, size), sigma=sigma)
        width, height = self.tiled
        shape = metric_size((height, width), size * size)
        return heat_map(self.grid, self.grid.shape, shape, sigma=sigma * shape[0] / height)


# Bank rows above which a batch's coreset is measured against the bank's IVF bounds, not every row.
EXACT_COVER_ROWS = 8192
# IVF cells searched per patch for those bounds.
COVER_PROBES = 8


def _coreset(sampler: Sampler, bank: PatchBank, flat: np.ndarray) -> np.ndarray:
    """Rows of `flat` to keep, taken against the bank so far (`indexing.sampler`).

    Up to `EXACT_COVER_ROWS` bank rows, each patch is measured against every row. Above,
    against the rows of the `COVER_PROBES` IVF cells nearest it (`UpperBounds`): at 131,072
    rows a batch of 32 images took 4.8 s instead of 22.9 s, and both grow with the bank, the
    bounds about a fifth as fast. Image ROC-AUC, mean of three seeds with the bounds forced
    from the second batch on: ELPV poly and combined unchanged, PIPED -0.002, KolektorSDD
    -0.013, where the seed alone moves it by 0.038 (`benchmarks/coreset.py`).
    """
    if not len(bank):
        return sampler.run(flat)
    if bank.bounds is not None and len(bank) > EXACT_COVER_ROWS:
        return sampler.run(flat, nearest=bank.bounds.run(flat, probes=COVER_PROBES))
    return sampler.run(flat, covered=bank.vectors)


# Tiled images report their whole-image grid at one cell per this many pixels (the stride-8 map's cell).
TILED_CELL = 8


class PatchIndex:
    """Patch banks of the store's patch collections, cached per collection.

    Args:
        store: the open vector store (the service's).
        cache: where loaded banks live; one per process.
        compute: where patch work runs (`indexing.compute`): features, coreset steps and
            searches; loading a bank and writing its points stay on the caller's thread.
    """

    def __init__(self, store: Vectors, *, cache: BankCache | None = None, compute: Compute = INLINE) -> None:
        self.store = store
        self.cache = cache or BankCache()
        self.compute = compute

    def bank(self, setting: str, collection: str, dim: int) -> PatchBank:
        """The loaded bank of a collection; reloaded when the store holds a different number of points
        (another process extended it)."""
        bank = self.cache.get(self.store, setting, collection, dim)
        if len(bank) != self.store.count(collection):
            self.cache.forget(setting)
            bank = self.cache.get(self.store, setting, collection, dim)
        return bank

    def extend(
        self,
        setting: str,
        collection: str,
        config: PatchConfig,
        backbone: Backbone,
        images: Sequence[ImageInput],
        decoded: Sequence[Image.Image],
        *,
        batch_size: int = 32,
        whole: list[tuple[str, np.ndarray | None]] | None = None,
        maps: FeatureMaps | None = None,
    ) -> int:
        """Add the coreset of these nominal images' patches to the bank; returns patches stored.

        The coreset is taken against the bank so far (see `indexing.sampler`), so
        this batch adds the patches the bank does not cover yet. The caller leaves
        out images already indexed: their patches are in the bank. `whole`, when given,
        gets (image id, every one of its (positions, dim) patch vectors) for each image
        scored whole, and (image id, None) for each cut into tiles: what positional
        statistics are merged from (`indexing.positional`). `maps`: the images' feature maps, made already
        with their embeddings (`Backbone.embed_with_maps`); only for images scored whole, never tiled.
        """
        if not images:
            return 0
        bank = self.bank(setting, collection, config.dim)
        # An image scored whole is its own single tile, so one loop serves both.
        layouts = [layout_for(pixels, backbone.input_size, config.tiling, config.tiling_rule) for pixels in decoded]
        tiles = [
            (image, index, piece)
            for image, pixels, found in zip(images, decoded, layouts)
            for index, piece in enumerate(_pieces(pixels, found))
        ]
        tiled = {image.id for image, found in zip(images, layouts) if found is not None}
        if maps is not None and tiled:
            raise ValueError("feature maps made in advance are of whole images: a tiled image makes its own")
        maker, sampler, stored = config.maker(), config.sampler(), 0
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start : start + batch_size]
            if maps is not None:  # one tile per image: the chunk's images are maps[start : start + batch_size]
                part = FeatureMaps(maps.stride8[start : start + batch_size], maps.stride16[start : start + batch_size])
                patches = self.compute.run(maker.patchify, part)
            else:
                patches = self._patchify(maker, backbone, [piece for _, _, piece in chunk], batch_size)
            per_tile = patches.vectors.shape[1]
            if whole is not None:
                whole += [(image.id, None if image.id in tiled else patches.vectors[number])
                          for number, (image, index, _) in enumerate(chunk) if index == 0]
            flat = patches.vectors.reshape(-1, config.dim)
            with bank.lock:
                keep = self.compute.run(_coreset, sampler, bank, flat)
                points = []
                for number, (image, index, _) in enumerate(chunk):
                    mine = keep[(keep >= number * per_tile) & (keep < (number + 1) * per_tile)] - number * per_tile
                    points += patch_points(
                        image.id, image.source, patches.vectors[number], mine, patches.grid, first=index * per_tile
                    )
                if points:
                    self.store.upsert(collection, points)
                    bank.add(points)
            stored += len(points)
        self.cache.fit(setting)  # the bank grew: the others may no longer fit the budget
        return stored

    def score(
        self,
        setting: str,
        collection: str,
        config: PatchConfig,
        backbone: Backbone,
        images: Sequence[ImageInput],
        decoded: Sequence[Image.Image],
        *,
        neighbours: int = 0,
        grids: bool = False,
        maps: bool = False,
        batch_size: int = 32,
        hybrid: HybridCombiner | None = None,
        patches: Patches | None = None,
        bank: PatchBank | None = None,
    ) -> list[PatchResult]:
        """Score images against the bank; a nominal image is scored without its own patches (leave-one-out).

        Leave-one-out is slightly pessimistic with a coreset: patches of other images
        that resembled a nominal image's kept patches were left out of the bank, so
        removing its patches can leave a gap the full-bank coreset would have filled.

        Args:
            neighbours: how many nominal images to name for the worst patch.
            grids: also return each image's patch-distance grid (a full search).
            maps: also return each image's grid and smoothed heat map.
            hybrid: a trained DenseHybrid head: patch scores are its hybrid scores (grids and maps too).
            patches: the images' patch vectors, made already (`PatchConfig.maker`) from their feature maps
                (a fused verdict's one backbone pass); only for images scored whole, never tiled.
            bank: the collection's bank (`bank`), when the caller holds it already; looked up otherwise.
        """
        bank = bank if bank is not None else self.bank(setting, collection, config.dim)
        if len(bank) == 0:
            raise EmptyCollection(
                f"setting {setting!r} has no patch memory bank yet: index PASS images into it (scoring=patch)"
            )
        # Everything from here is computation on a loaded bank: one hop to the compute thread for the call.
        return self.compute.run(
            self._score_loaded, bank, config, backbone, images, decoded, neighbours, grids, maps, batch_size, hybrid,
            patches,
        )

    def scored_patches(
        self, setting: str, collection: str, config: PatchConfig, backbone: Backbone, images: Sequence[ImageInput],
        decoded: Sequence[Image.Image], *, batch_size: int = 32,
    ) -> list[ScoredPatches]:
        """Each image's patch vectors (every tile's, for an image scored by tiles), their distances to
        the bank (its own patches left out) and its score, the one an unsupervised verdict gives it (relative,
        under the local scale): what a DenseHybrid head is trained on and its gate compares against."""
        bank = self.bank(setting, collection, config.dim)

        def run() -> list[ScoredPatches]:
            scorer = config.scorer(bank)
            out = []
            for image, (vectors, tiled) in zip(images, self._patch_vectors(config, backbone, decoded, batch_size)):
                own = bank.rows_of(image.id)
                found = scorer.run(vectors, exclude=own or None, grid=True)
                assert found.distances is not None
                score = self._judged(bank, config, found.score, vectors[found.worst], own, 0, None)[0]
                out.append(ScoredPatches(vectors=vectors, distances=found.distances, score=score,
                                         in_bank=bool(own), tiled=tiled))
            return out

        return self.compute.run(run)

    def _patch_vectors(
        self, config: PatchConfig, backbone: Backbone, decoded: Sequence[Image.Image], batch_size: int
    ) -> list[tuple[np.ndarray, bool]]:
        """(P, dim) patch vectors of each image, and whether it was cut into tiles: one grid for an image
        squashed to the input, every tile's otherwise."""
        layouts = [layout_for(pixels, backbone.input_size, config.tiling, config.tiling_rule) for pixels in decoded]
        if all(found is None for found in layouts):
            patches = config.maker().patchify(backbone.feature_maps(list(decoded), batch_size=batch_size))
            return [(vectors, False) for vectors in patches.vectors]
        return [(_tile_patches(config, backbone, _pieces(pixels, found), batch_size)[0],
                 found is not None) for pixels, found in zip(decoded, layouts)]

    def _score_loaded(
        self,
        bank: PatchBank,
        config: PatchConfig,
        backbone: Backbone,
        images: Sequence[ImageInput],
        decoded: Sequence[Image.Image],
        neighbours: int,
        grids: bool,
        maps: bool,
        batch_size: int,
        hybrid: HybridCombiner | None = None,
        patches: Patches | None = None,
    ) -> list[PatchResult]:
        layouts = [layout_for(pixels, backbone.input_size, config.tiling, config.tiling_rule) for pixels in decoded]
        if any(found is not None for found in layouts):
            if patches is not None:
                raise ValueError("patch vectors made in advance are of whole images: a tiled image makes its own")
            return [
                self._score_tiled(bank, config, backbone, image, pixels, found, neighbours, grids, maps, batch_size, hybrid)
                for image, pixels, found in zip(images, decoded, layouts)
            ]
        if patches is None:
            patches = config.maker().patchify(backbone.feature_maps(list(decoded), batch_size=batch_size))
        scorer = _scorer(config, bank, hybrid)
        rows, cols = patches.grid
        results = []
        for image, vectors in zip(images, patches.vectors):
            own = bank.rows_of(image.id)
            found = scorer.run(vectors, exclude=own or None, grid=grids or maps)
            score, near, scale = self._judged(bank, config, found.score, vectors[found.worst], own, neighbours, hybrid)
            grid = heat = None
            if found.distances is not None:
                grid = found.distances.reshape(rows, cols) / np.float32(scale)
            if maps:
                heat = heat_map(grid, patches.grid, (backbone.input_size,) * 2, sigma=config.sigma)
            results.append(
                PatchResult(score=score, grid=grid, worst=divmod(found.worst, cols), neighbours=near, heat=heat)
            )
        return results

    def _score_tiled(
        self,
        bank: PatchBank,
        config: PatchConfig,
        backbone: Backbone,
        image: ImageInput,
        pixels: Image.Image,
        found_layout: TileLayout | None,
        neighbours: int,
        grids: bool,
        maps: bool,
        batch_size: int,
        hybrid: HybridCombiner | None = None,
    ) -> PatchResult:
        """One image scored over all its tiles' patches: the score and the worst patch are over every tile."""
        tile_layout = found_layout or _one_tile(pixels, backbone.input_size)
        pieces = _pieces(pixels, found_layout)
        vectors, grid_shape = _tile_patches(config, backbone, pieces, batch_size)
        own = bank.rows_of(image.id)
        found = _scorer(config, bank, hybrid).run(vectors, exclude=own or None, grid=grids or maps)
        score, near, scale = self._judged(bank, config, found.score, vectors[found.worst], own, neighbours, hybrid)
        per_tile = grid_shape[0] * grid_shape[1]
        tile, cell = divmod(found.worst, per_tile)
        x, y = tile_layout.tile_centre(tile, *divmod(cell, grid_shape[1]), grid_shape)
        worst = (y // TILED_CELL, x // TILED_CELL)
        grid = heat = None
        if found.distances is not None:
            side = tile_layout.tile
            raw = [
                heat_map(d.reshape(grid_shape), grid_shape, (side, side), sigma=0.0)
                for d in found.distances.reshape(len(pieces), per_tile) / np.float32(scale)
            ]
            whole = _to_original(tile_layout.stitch(raw), tile_layout)
            width, height = tile_layout.original
            cells = (max(1, -(-height // TILED_CELL)), max(1, -(-width // TILED_CELL)))
            grid = np.asarray(Image.fromarray(whole, mode="F").resize((cells[1], cells[0]), Image.Resampling.BOX))
            if maps:
                from scipy.ndimage import gaussian_filter

                zoom = tile_layout.original[1] / tile_layout.scaled[1]
                heat = gaussian_filter(whole, sigma=config.sigma * zoom).astype(np.float32)
        return PatchResult(score=score, grid=grid, worst=worst, neighbours=near, heat=heat, tiled=tile_layout.original)

    def forget_image(self, setting: str, collection: str, image_id: str) -> None:
        """Delete a nominal image's patches from the bank (the bank reloads on next use)."""
        bank = self.bank_if_loaded(setting, collection)
        if bank is not None:
            ids = [patch_point_id(image_id, int(bank.patches[row])) for row in bank.rows_of(image_id)]
        else:
            # Not loaded here: find the image's points by payload.
            ids = [p.id for p in self.store.scroll(collection) if p.payload.get("image_id") == image_id]
        self.store.delete_points(collection, ids)
        self.cache.forget(setting)

    def bank_if_loaded(self, setting: str, collection: str) -> PatchBank | None:
        return self.cache.peek(setting, collection)

    def nominal_scores(self, setting: str, collection: str, config: PatchConfig) -> np.ndarray:
        """Leave-one-out scores of the nominal images from their stored patches only (no re-embedding).

        Only the coreset patches of each image are stored, so this scores those
        against the bank without that image's patches: the coreset keeps the most
        unusual patches, which are the ones the max is taken over, but the figure is
        an approximation. Calibrate with PASS images for an exact one.
        """
        return np.fromiter(self.nominal_scores_by_image(setting, collection, config).values(), dtype=np.float64)

    def nominal_scores_by_image(self, setting: str, collection: str, config: PatchConfig) -> dict[str, float]:
        """`nominal_scores` keyed by nominal image id, in the bank's order (an image whose patches are the
        whole bank has no leave-one-out score and is left out); relative as a verdict's are under `local_scale`."""
        bank = self.bank(setting, collection, config.dim)

        def leave_one_out() -> dict[str, float]:
            scorer = config.scorer(bank)
            scores = {}
            for image_id in dict.fromkeys(bank.image_ids):
                own = bank.rows_of(image_id)
                if len(own) == len(bank):
                    continue
                found = _leave_one_out(bank, scorer, image_id)
                worst = bank.vectors[own[found.worst]]
                scores[image_id] = self._judged(bank, config, found.score, worst, own, 0, None)[0]
            return scores

        return self.compute.run(leave_one_out)

    def _judged(
        self,
        bank: PatchBank,
        config: PatchConfig,
        distance: float,
        worst: np.ndarray,
        own: list[int],
        neighbours: int,
        hybrid: HybridCombiner | None,
    ) -> tuple[float, list[Neighbour], float]:
        """An image's score from its largest patch distance, the `neighbours` nominal images named for its worst
        patch, and the scale its distances are divided by (so its grid and heat map read on the score's scale,
        as the calibrated threshold does). Under `config.local_scale` (and no trained hybrid head, whose scores
        are its own) the scale is the mean leave-one-out score of the `local_scale` nominal images nearest that
        patch; otherwise 1."""
        local = config.local_scale if hybrid is None else 0
        wanted = max(neighbours, local)
        near = self._neighbours(bank, worst, wanted, own) if wanted else []
        scale = 1.0
        if local and near:
            scorer = config.scorer(bank)
            scale = max(float(np.mean([_own_score(bank, scorer, neighbour.id) for neighbour in near[:local]])), 1e-12)
        return float(distance) / scale, near[:neighbours], scale

    def _patchify(self, maker: PatchMaker, backbone: Backbone, images: list[Image.Image], batch_size: int) -> Patches:
        """Patch vectors of these images, computed on the compute thread (the backbone's forward nests there)."""
        return self.compute.run(lambda: maker.patchify(backbone.feature_maps(images, batch_size=batch_size)))

    @staticmethod
    def _neighbours(bank: PatchBank, patch: np.ndarray, k: int, own: list[int]) -> list[Neighbour]:
        """The k distinct nominal images holding the bank patches nearest to `patch`."""
        # Several nearest patches often come from one image: fetch more and keep distinct owners.
        distances, rows = bank.nn.run(patch[None, :], min(len(bank) - len(own), 8 * k), exclude=own or None)
        found: dict[str, Neighbour] = {}
        for distance, row in zip(distances[0].tolist(), rows[0].tolist()):
            owner = bank.image_ids[row]
            if owner in found:
                continue
            cell_row, cell_col = (int(v) for v in bank.cells[row])
            found[owner] = Neighbour(
                id=owner,
                distance=float(distance),
                payload={
                    "source": bank.sources.get(owner, owner), "patch": int(bank.patches[row]),
                    "row": cell_row, "col": cell_col,
                },
            )
            if len(found) == k:
                break
        return list(found.values())



def write_heatmaps(
    folder: Path,
    tests: Sequence[TestImage],
    results: Sequence[PatchResult | None],
    *,
    size: int,
    sigma: float,
    threshold: float | None,
    max_pixels: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[float | None, float | None, dict[str, Path]]:
    """One heat-map PNG overlay per test image, and the pixel ROC-AUC and PRO where masks exist.

    Files are named `<number>_<group>_<score>.png` so sorting by name keeps the test
    order. Colours are scaled to the threshold when one is given.

    Args:
        folder: created if missing.
        tests: the labelled test images (mask paths for MVTec defects).
        results: their patch results, in the same order.
        size: backbone input side (maps and masks are compared at this size).
        sigma: heat-map smoothing.
        threshold: the calibrated image threshold, for the colour scale.
        max_pixels: decode limit.

    Returns:
        (pixel ROC-AUC, PRO up to 30% FPR (`indexing.heatmap.pixel_pro`), {image source: PNG path});
        both metrics None when no test image has a mask.
    """
    folder.mkdir(parents=True, exist_ok=True)
    has_masks = any(t.mask_path is not None for t in tests)
    maps, masks, files = [], [], {}
    for number, (test, found) in enumerate(zip(tests, results)):
        if found is None:
            continue
        heat = found.heat_at(size, sigma)
        pixels = decode(test.image, max_pixels=max_pixels)
        path = folder / f"{number:04d}_{_safe(test.group)}_{found.score:.4f}.png"
        png = overlay_png(pixels, heat, threshold=threshold)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_bytes(png)
        os.replace(temp, path)
        files[test.image.source] = path
        if has_masks:
            maps.append(heat)
            masks.append(mask_at(str(test.mask_path), heat.shape) if test.mask_path else np.zeros(heat.shape, bool))
        if progress is not None:
            progress("heat maps", number + 1, len(tests))
    if not has_masks:
        return None, None, files
    return pixel_roc_auc(maps, masks), pixel_pro(maps, masks), files


def _pieces(pixels: Image.Image, found: TileLayout | None) -> list[Image.Image]:
    """The pieces an image is scored as: its tiles under `found` (`layout_for`), or the whole image as the one piece."""
    return found.cut(pixels) if found is not None else [pixels]


def _tile_patches(
    config: PatchConfig, backbone: Backbone, pieces: Sequence[Image.Image], batch_size: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """The patch vectors of an image's tiles, all tiles' in order (n_tiles * rows * cols, dim), and one tile's grid."""
    maker = config.maker()
    parts, grid_shape = [], (0, 0)
    for start in range(0, len(pieces), batch_size):
        patches = maker.patchify(backbone.feature_maps(list(pieces[start : start + batch_size]), batch_size=batch_size))
        parts.append(patches.vectors.reshape(-1, config.dim))
        grid_shape = patches.grid
    return np.concatenate(parts), grid_shape


def _own_score(bank: PatchBank, scorer: PatchScorer, image_id: str) -> float:
    """A nominal image's leave-one-out score, kept on the bank until the bank grows."""
    with bank.lock:
        found = bank.own_scores.get(image_id)
        return found if found is not None else _leave_one_out(bank, scorer, image_id).score


def _leave_one_out(bank: PatchBank, scorer: PatchScorer, image_id: str) -> PatchScore:
    """A nominal image's stored patches scored against the rest of the bank; its score is kept in `own_scores`."""
    with bank.lock:  # not against a bank that grows meanwhile: growing empties `own_scores`
        own = bank.rows_of(image_id)
        found = scorer.run(bank.vectors[own], exclude=own, grid=False)
        bank.own_scores[image_id] = found.score
        return found


def _scorer(config: PatchConfig, bank: PatchBank, hybrid: HybridCombiner | None) -> PatchScorer | HybridScorer:
    scorer = config.scorer(bank)
    return scorer if hybrid is None else HybridScorer(scorer, hybrid)


def _one_tile(pixels: Image.Image, side: int) -> TileLayout:
    """The whole image as one tile: an image of a tiled setting small enough to be squashed like any other."""
    width, height = pixels.size
    return TileLayout(original=(width, height), scaled=(side, side), tile=side, origins=((0, 0),))


def _to_original(stitched: np.ndarray, tile_layout: TileLayout) -> np.ndarray:
    """A map of the scaled image brought back to the original image's size."""
    width, height = tile_layout.original
    if stitched.shape == (height, width):
        return stitched
    return np.asarray(Image.fromarray(stitched, mode="F").resize((width, height), Image.Resampling.BILINEAR))


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:40]
