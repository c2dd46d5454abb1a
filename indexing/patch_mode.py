"""Patch-level (PatchCore-style) scoring for the service: build, extend and query patch banks.

`NominalService` delegates here for settings created with `scoring="patch"`; this
module owns the patch recipe (`PatchConfig`), the per-collection bank cache and
the per-image answer (`PatchResult`), and knows nothing of versions or aliases:
the service hands it the collection to use.

Flow, as PatchCore's `fit` reads:
    index:   feature maps -> `PatchMaker.patchify` -> sampler.run(covered=bank) -> store + bank
    inspect: feature maps -> patchify -> `PatchScorer.run` (faiss over the bank) -> score, heat map

The recipe a bank was built with is recorded with its collection version
(`PatchConfig.to_dict`), so changing the defaults never mixes patch vectors made
two ways in one bank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexing.backbones import Backbone
from indexing.datasets import TestImage
from indexing.errors import EmptyCollection
from indexing.heatmap import SIGMA, heat_map, mask_at, overlay_png, pixel_roc_auc
from indexing.images import ImageInput, decode
from indexing.patch_bank import BankCache, PatchBank, patch_point_id, patch_points
from indexing.patch_search import PatchScorer
from indexing.patches import PatchMaker, Projection
from indexing.sampler import GreedyCoresetSampler, IdentitySampler, Sampler
from indexing.store.base import Neighbour, Vectors


@dataclass(frozen=True)
class PatchConfig:
    """How patch vectors are made, subsampled and scored. Defaults chosen on ELPV poly (benchmarks/quality.py --sweep).

    Attributes:
        dim: patch vector length (half per feature-map scale).
        projection: "random" (seeded Gaussian; measured 0.925 vs 0.918 ROC-AUC for
            PatchCore's "pool" on ELPV poly with efficientnet_lite0 at 256-d).
        normalise: L2-normalise patch vectors.
        coreset_ratio: fraction of each indexing batch's patches kept (1.0 keeps all).
        coreset_projection_dim: dimensions the coreset measures distances in.
        reweight_k: PatchCore re-weighting neighbours; 0 is plain max distance.
        sigma: heat-map smoothing in input pixels.
        seed: seeds the projections and the coreset's first pick.
    """

    dim: int = 256
    projection: Projection = "random"
    normalise: bool = True
    coreset_ratio: float = 0.01
    coreset_projection_dim: int = 128
    reweight_k: int = 0
    sigma: float = SIGMA
    seed: int = 0

    def __post_init__(self) -> None:
        self.maker()
        self.sampler()

    def maker(self) -> PatchMaker:
        return PatchMaker(dim=self.dim, projection=self.projection, normalise=self.normalise, seed=self.seed)

    def sampler(self) -> Sampler:
        if self.coreset_ratio >= 1.0:
            return IdentitySampler() if self.coreset_ratio == 1.0 else GreedyCoresetSampler(self.coreset_ratio)
        return GreedyCoresetSampler(self.coreset_ratio, projection_dim=self.coreset_projection_dim, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PatchConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in (data or {}).items() if key in known})


@dataclass(frozen=True)
class PatchResult:
    """The patch-level answer for one image.

    Attributes:
        score: image score (largest patch distance, re-weighted if configured).
        grid: (rows, cols) float32 nearest-bank distance of every patch, when grids
            or maps were asked for (a score alone skips most of that search).
        worst: (row, col) of the most anomalous patch.
        neighbours: nominal images holding the bank patches nearest to the worst
            patch, nearest first (id = image id, payload: source, row, col, patch).
        heat: (size, size) float32 smoothed map at the backbone input size, when asked.
    """

    score: float
    grid: np.ndarray | None
    worst: tuple[int, int]
    neighbours: list[Neighbour] = field(default_factory=list)
    heat: np.ndarray | None = None


class PatchIndex:
    """Patch banks of the store's patch collections, cached per collection.

    Args:
        store: the open vector store (the service's).
        cache: where loaded banks live; one per process.
    """

    def __init__(self, store: Vectors, *, cache: BankCache | None = None) -> None:
        self.store = store
        self.cache = cache or BankCache()

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
    ) -> int:
        """Add the coreset of these nominal images' patches to the bank; returns patches stored.

        The coreset is taken against the bank so far (see `indexing.sampler`), so
        this batch adds the patches the bank does not cover yet. The caller leaves
        out images already indexed: their patches are in the bank.
        """
        if not images:
            return 0
        bank = self.bank(setting, collection, config.dim)
        patches = config.maker().patchify(backbone.feature_maps(list(decoded), batch_size=batch_size))
        per_image = patches.vectors.shape[1]
        flat = patches.vectors.reshape(-1, config.dim)
        with bank.lock:
            keep = config.sampler().run(flat, covered=bank.vectors if len(bank) else None)
            points = []
            for number, image in enumerate(images):
                mine = keep[(keep >= number * per_image) & (keep < (number + 1) * per_image)] - number * per_image
                points += patch_points(image.id, image.source, patches.vectors[number], mine, patches.grid)
            if points:
                self.store.upsert(collection, points)
                bank.add(points)
        return len(points)

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
    ) -> list[PatchResult]:
        """Score images against the bank; a nominal image is scored without its own patches (leave-one-out).

        Leave-one-out is slightly pessimistic with a coreset: patches of other images
        that resembled a nominal image's kept patches were left out of the bank, so
        removing its patches can leave a gap the full-bank coreset would have filled.

        Args:
            neighbours: how many nominal images to name for the worst patch.
            grids: also return each image's patch-distance grid (a full search).
            maps: also return each image's grid and smoothed heat map.
        """
        bank = self.bank(setting, collection, config.dim)
        if len(bank) == 0:
            raise EmptyCollection(
                f"setting {setting!r} has no patch memory bank yet: index PASS images into it (scoring=patch)"
            )
        patches = config.maker().patchify(backbone.feature_maps(list(decoded), batch_size=batch_size))
        scorer = PatchScorer(bank.nn, reweight_k=config.reweight_k, bounds=bank.bounds)
        rows, cols = patches.grid
        results = []
        for image, vectors in zip(images, patches.vectors):
            own = bank.rows_of(image.id)
            found = scorer.run(vectors, exclude=own or None, grid=grids or maps)
            near = self._neighbours(bank, vectors[found.worst], neighbours, own) if neighbours else []
            grid = heat = None
            if found.distances is not None:
                grid = found.distances.reshape(rows, cols)
            if maps:
                heat = heat_map(grid, patches.grid, (backbone.input_size,) * 2, sigma=config.sigma)
            results.append(
                PatchResult(score=found.score, grid=grid, worst=divmod(found.worst, cols), neighbours=near, heat=heat)
            )
        return results

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
        bank = self.bank(setting, collection, config.dim)
        scorer = PatchScorer(bank.nn, reweight_k=config.reweight_k, bounds=bank.bounds)
        scores = []
        for image_id in dict.fromkeys(bank.image_ids):
            own = bank.rows_of(image_id)
            if len(own) == len(bank):
                continue
            scores.append(scorer.run(bank.vectors[own], exclude=own, grid=False).score)
        return np.asarray(scores, dtype=np.float64)

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
) -> tuple[float | None, dict[str, Path]]:
    """One heat-map PNG overlay per test image, and the pixel ROC-AUC where masks exist.

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
        (pixel ROC-AUC or None when no test image has a mask, {image source: PNG path}).
    """
    folder.mkdir(parents=True, exist_ok=True)
    has_masks = any(t.mask_path is not None for t in tests)
    maps, masks, files = [], [], {}
    for number, (test, found) in enumerate(zip(tests, results)):
        if found is None:
            continue
        assert found.grid is not None, "write_heatmaps needs results scored with grids=True"
        heat = heat_map(found.grid, found.grid.shape, (size, size), sigma=sigma)
        pixels = decode(test.image, max_pixels=max_pixels)
        path = folder / f"{number:04d}_{_safe(test.group)}_{found.score:.4f}.png"
        png = overlay_png(pixels, heat, threshold=threshold)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_bytes(png)
        os.replace(temp, path)
        files[test.image.source] = path
        if has_masks:
            maps.append(heat)
            masks.append(mask_at(str(test.mask_path), (size, size)) if test.mask_path else np.zeros((size, size), bool))
        if progress is not None:
            progress("heat maps", number + 1, len(tests))
    return (pixel_roc_auc(maps, masks) if has_masks else None), files


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:40]
