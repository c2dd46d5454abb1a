"""Decoding and embedding, without a store: what a worker that writes nothing needs, and the service uses.

An `Embedder` turns images into points (ids from content, vectors from the
version's backbone, payloads) and knows nothing of collections, aliases or
records; `NominalService` composes one, and a Celery worker on the embedded
deployment holds only an `Embedder` (the store belongs to another process).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from indexing.backbones import Backbone, FeatureMaps, load_backbone
from indexing.errors import BackboneMismatch, BadImage
from indexing.images import DEFAULT_MAX_PIXELS, ImageInput, decode
from indexing.settings import CollectionVersion, utc_now
from indexing.store.base import Point
from indexing.compute import INLINE, Compute


@dataclass(frozen=True)
class Skipped:
    """An input left out of a batch, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class EmbeddedBatch:
    """Points ready to upsert, plus the inputs that could not be used."""

    points: list[Point]
    skipped: list[Skipped] = field(default_factory=list)
    # The feature maps of the images embedded (in the order of `points`), when asked for (`embed_decoded`).
    maps: FeatureMaps | None = None


class BackbonePool:
    """One loaded model per backbone name per process, built on first use.

    Loading is serialised so concurrent first requests do not build two copies.
    `compute` is where the models run (`indexing.compute`): each backbone loaded
    here runs its forward passes there, and so does the patch work of a service
    built on this pool.
    """

    def __init__(self, loader: Callable[[str], Backbone] = load_backbone, *, compute: Compute = INLINE) -> None:
        self._loader = loader
        self.compute = compute
        self._loaded: dict[str, Backbone] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Backbone:
        with self._lock:
            if name not in self._loaded:
                backbone = self.compute.run(self._loader, name)
                backbone.compute = self.compute
                self._loaded[name] = backbone
            return self._loaded[name]


def image_payload(setting: str, image: ImageInput, width: int, height: int) -> dict[str, Any]:
    return {
        "setting": setting,
        "sha256": image.sha256,
        "source": image.source,
        "ingested_at": utc_now(),
        "width": width,
        "height": height,
        "metadata": dict(image.metadata),
    }


_Decoded = tuple[list[Image.Image], list[ImageInput], list[Skipped]]


class Embedder:
    """Decode and embed batches with the backbone a version was built with; stores nothing.

    Args:
        backbones: where models come from; share one pool per process.
        max_pixels: decoded-size limit per image (decompression bombs).
        batch_size: images per forward pass.
    """

    def __init__(
        self, backbones: BackbonePool | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = 32
    ) -> None:
        self.backbones = backbones or BackbonePool()
        self.max_pixels = max_pixels
        self.batch_size = batch_size

    def backbone_for(self, version: CollectionVersion) -> Backbone:
        """The loaded model `version` was built with; `BackboneMismatch` if this process has other weights."""
        backbone = self.backbones.get(version.backbone)
        if backbone.identity != version.backbone_identity:
            raise BackboneMismatch(
                f"{version.collection} was built with {version.backbone_identity} but this process loads "
                f"{backbone.identity}: load the same weights, or re-index the setting"
            )
        return backbone

    def embed_points(
        self,
        setting: str,
        backbone: Backbone,
        images: Sequence[ImageInput],
        *,
        skip_bad: bool,
    ) -> EmbeddedBatch:
        """Decode and embed one batch into points (ids from content); nothing is stored.

        Kept separate from storage so a worker without the store can embed and
        hand the points to the process that owns it.
        """
        return self.embed_decoded(setting, backbone, self.decode_batch(images, skip_bad=skip_bad))

    def decode_batch(self, images: Sequence[ImageInput], *, skip_bad: bool) -> "_Decoded":
        """Decode one batch for `embed_decoded`; a thread can do this while the model runs on another."""
        decoded, kept, skipped = [], [], []
        for image in images:
            try:
                decoded.append(decode(image, max_pixels=self.max_pixels))
                kept.append(image)
            except BadImage as error:
                if not skip_bad:
                    raise
                skipped.append(Skipped(source=image.source, reason=error.reason))
        return decoded, kept, skipped

    def embed_decoded(self, setting: str, backbone: Backbone, batch: "_Decoded", *, maps: bool = False) -> EmbeddedBatch:
        """`embed_points` for a batch `decode_batch` already decoded; nothing is stored. `maps`: the batch's
        feature maps too, from the same forward pass (what a patch bank is made of)."""
        decoded, kept, skipped = batch
        if not kept:
            return EmbeddedBatch(points=[], skipped=skipped)
        if maps:
            vectors, feature_maps = backbone.embed_with_maps(decoded, batch_size=self.batch_size)
        else:
            vectors, feature_maps = backbone.embed(decoded, batch_size=self.batch_size), None
        points = [
            Point(id=image.id, vector=vector, payload=image_payload(setting, image, *pixels.size))
            for image, vector, pixels in zip(kept, vectors, decoded)
        ]
        return EmbeddedBatch(points=points, skipped=skipped, maps=feature_maps)

