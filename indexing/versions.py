"""A setting's collection versions: numbering, filling, the atomic switch, pruning, and the patch bank beside each.

Version N of a setting is a collection `nominal__<setting>__<backbone>__vN` with a
record (`VERSION_KIND`) saying its backbone, dimension, state (`building` or
`ready`) and count. The setting's alias names the active one; `activate` moves it
in one step, so verdicts never see a half-built version. A patch-scoring setting's
version also has a patch collection of the same number, created, switched and
deleted with it.

`Versions` is a collaborator of `NominalService` (which edges call) and of a
re-index (`indexing.reindex`), which builds a version beside the active one.
Every numbering, record write and alias move holds the setting's lock, shared
with the service: `RedisLocks` when several processes write to one store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from indexing.backbones import FeatureMaps
from indexing.embedder import Embedder, Skipped, _Decoded
from indexing.errors import EmptyCollection, NoPreviousVersion
from indexing.images import ImageInput
from indexing.locks import SettingLocks
from indexing.patch_mode import PatchConfig, PatchIndex
from indexing.positional import PositionalMemory
from indexing.prefetch import prefetched
from indexing.settings import (
    SETTING_KIND,
    VERSION_KIND,
    CollectionVersion,
    MachineSetting,
    alias_name,
    collection_name,
)
from indexing.store.base import Point, VectorStore

# Nominal images a `BankExtension` (an upload's `fill`, a re-index) gathers before merging them into a fused
# version's positional statistics: a merge costs about as much for 128 images as for 32 (one batched SVD at each
# of 784 positions, and the whole statistics written again).
MERGE_IMAGES = 128

# progress(stage, done, total): called as work advances so edges can show bars or job status.
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class IndexResult:
    setting: str
    collection: str
    received: int
    indexed: int
    skipped: list[Skipped]
    count: int


def no_images(name: str) -> EmptyCollection:
    """The refusal of a setting that has no nominal images to compare with."""
    return EmptyCollection(f"setting {name!r} has no nominal images yet: index PASS images first")


class Versions:
    """The collection versions of every setting in one store.

    Args:
        store: the open vector store (records, aliases and vectors).
        embedder: embeds what is filled in (each version with its own backbone).
        patches: the patch banks (one per patch-scoring version).
        patch_config: the recipe new patch banks are built with; a bank keeps the recipe it was built with.
        locks: the setting locks, shared with the service.
        positional: the positional statistics of fused versions (`indexing.positional`).
    """

    def __init__(
        self, store: VectorStore, *, embedder: Embedder, patches: PatchIndex, patch_config: PatchConfig,
        locks: SettingLocks, positional: PositionalMemory | None = None,
    ) -> None:
        self.store = store
        self.positional = positional or PositionalMemory(store)
        self.embedder = embedder
        self.patches = patches
        self.patch_config = patch_config
        self.locks = locks
        # What never changes once written, read from the store once per process: a ready version's
        # identity (collection, backbone, dim), its patch bank's record, and a patch collection's recipe.
        self._ready: dict[str, CollectionVersion] = {}
        self._patch_records: dict[str, dict[str, Any]] = {}
        self._recipes: dict[str, dict[str, Any] | None] = {}

    def lock(self, name: str):  # noqa: ANN201 - a context manager
        """The lock of one setting's records, numbering and alias (re-entrant)."""
        return self.locks.hold(f"setting:{name}")

    # ----------------------------------------------------------------- reading

    def list(self, name: str, *, kind: str = "global") -> list[CollectionVersion]:
        """Versions of one kind, oldest first: "global" (image vectors) or "patch" (patch banks, same numbers)."""
        prefix = f"nominal__{name}__"
        records = [
            r for r in self.store.list_records(VERSION_KIND)
            if r.get("setting") == name and r.get("kind", "global") == kind
        ]
        found = [CollectionVersion.from_dict(r) for r in records if r["collection"].startswith(prefix)]
        return sorted(found, key=lambda v: v.version)

    def active(self, name: str) -> CollectionVersion | None:
        collection = self.store.resolve_alias(alias_name(name))
        if collection is None:
            return None
        record = self.store.get_record(VERSION_KIND, collection)
        return CollectionVersion.from_dict(record) if record else None

    def ready(self, collection: str) -> CollectionVersion | None:
        """A version by collection name; a ready one is read from the store once per process."""
        found = self._ready.get(collection)
        if found is None:
            record = self.store.get_record(VERSION_KIND, collection)
            if record is None:
                return None
            found = CollectionVersion.from_dict(record)
            if found.state == "ready":
                self._ready[collection] = found
        return found

    def patch_record(self, version: CollectionVersion) -> dict[str, Any] | None:
        """The patch bank's version record of a global version, or None (a global-only version)."""
        name = collection_name(version.setting, version.backbone, version.version, kind="patch")
        return self.store.get_record(VERSION_KIND, name)

    def recorded_recipe(self, collection: str) -> dict[str, Any] | None:
        """The recipe recorded for a patch collection ({} for a bank recorded before recipes were), or None for a
        global collection or one no longer recorded."""
        if collection not in self._recipes:
            record = self.store.get_record(VERSION_KIND, collection)
            self._recipes[collection] = None if record is None or record.get("kind") != "patch" else \
                (record.get("patch_config") or {})
        return self._recipes[collection]

    def has_patch_bank(self, version: CollectionVersion) -> bool:
        """Whether this version also keeps a patch memory bank (its setting scores by patches)."""
        return self.patch_record(version) is not None

    def require_patch(self, version: CollectionVersion, *, cached: bool = False) -> dict[str, Any]:
        """The patch bank's record, or EmptyCollection saying why there is none. `cached`: of a ready version."""
        if cached and version.collection in self._patch_records:
            return self._patch_records[version.collection]
        patch = self.patch_record(version)
        if patch is None:
            raise EmptyCollection(
                f"setting {version.setting!r} scores by patches but version {version.version} has no patch bank "
                "(it was built while the setting scored globally): re-index the setting to build one"
            )
        if cached:
            self._patch_records[version.collection] = patch
        return patch

    def points_present(self, version: CollectionVersion, ids: Iterable[str]) -> int:
        """How many of `ids` the version holds (looked up 1,024 at a time)."""
        wanted = sorted(ids)
        return sum(len(self.store.retrieve(version.collection, wanted[i : i + 1024])) for i in range(0, len(wanted), 1024))

    def sample_queries_answered(self, version: CollectionVersion, ids: Sequence[str]) -> int:
        """How many of these stored points, used as queries, find a neighbour: the version answers searches."""
        sample = self.store.retrieve(version.collection, list(ids), with_vectors=True)
        if not sample:
            return 0
        hits = self.store.search(version.collection, np.stack([p.vector for p in sample]).astype(np.float32), 1)
        return sum(1 for found in hits if found)

    # ----------------------------------------------------------------- building

    def patch_recipe(self, setting: MachineSetting, channels: tuple[int, int] | None) -> PatchConfig:
        """The recipe a patch bank of `setting` is built with now, for a backbone with these map channels
        (None: leave the width as configured)."""
        recipe = replace(self.patch_config, tiling=setting.tiling)
        return recipe.for_backbone(channels) if channels else recipe

    def begin(self, setting: MachineSetting, backbone: str | None = None) -> CollectionVersion:
        """Create the setting's next version, empty and not active, embedded with `backbone` (default: the setting's).

        A patch-scoring setting also gets the patch collection of the same number;
        `fill` fills both and `activate` switches both.
        """
        name = setting.name
        model = self.embedder.backbones.get(backbone or setting.backbone)
        if setting.keeps_patches:
            model.feature_maps([])  # a backbone without feature maps (CLIP) fails here, before anything is created
        with self.lock(name):
            number = max((v.version for v in self.list(name)), default=0) + 1
            version = CollectionVersion(
                setting=name,
                version=number,
                collection=collection_name(name, model.name, number),
                backbone=model.name,
                backbone_identity=model.identity,
                dim=model.dim,
            )
            self.store.create_collection(version.collection, model.dim)
            self.store.put_record(VERSION_KIND, version.collection, version.to_dict())
            if setting.keeps_patches:
                recipe = self.patch_recipe(setting, model.map_channels)
                patch = CollectionVersion.from_dict({
                    **version.to_dict(), "kind": "patch", "dim": recipe.dim,
                    "collection": collection_name(name, model.name, number, kind="patch"),
                })
                self.store.create_collection(patch.collection, patch.dim)
                # A fused setting's bank also merges its images' positional statistics (`indexing.fused`).
                self.store.put_record(VERSION_KIND, patch.collection, {
                    **patch.to_dict(), "patch_config": recipe.to_dict(), "positional": setting.scoring == "fused"})
        return version

    def fill(
        self,
        version: CollectionVersion,
        images: Sequence[ImageInput],
        *,
        skip_bad: bool = True,
        progress: Progress = no_progress,
    ) -> IndexResult:
        """Embed and upsert images into one version (and its patch bank), batch by batch."""
        backbone = self.embedder.backbone_for(version)
        bank = self.bank_extension(version)
        indexed, skipped = 0, []
        progress("embedding", 0, len(images))
        # Small jobs take smaller batches, so that progress moves at least every 2% of the images.
        size = max(1, min(self.embedder.batch_size, math.ceil(len(images) / 50)))
        for batch in self.decoded_batches(images, skip_bad=skip_bad, size=size):
            embedded = self.embedder.embed_decoded(version.setting, backbone, batch,
                                                   maps=bank.wants_maps(batch))
            bank.add(batch, maps=embedded.maps)
            if embedded.points:
                self.store.upsert(version.collection, embedded.points)
            indexed += len(embedded.points)
            skipped.extend(embedded.skipped)
            progress("embedding", indexed + len(skipped), len(images))
        bank.close()
        # An upload that takes the collection past NOMINAL_APPROXIMATE_ABOVE builds its approximate
        # index here, not in the next verdict.
        self.store.prepare_search(version.collection)
        return IndexResult(
            setting=version.setting,
            collection=version.collection,
            received=len(images),
            indexed=indexed,
            skipped=skipped,
            count=self.store.count(version.collection),
        )

    def add_points(self, version: CollectionVersion, points: Sequence[Point]) -> None:
        """Upsert embedded points into a version's collection (a re-index's batches, a worker's)."""
        self.store.upsert(version.collection, points)

    def bank_extension(self, version: CollectionVersion) -> "BankExtension":
        """What adds decoded batches to the version's patch bank (nothing for a global-only version), as `fill` and
        a re-index embed them."""
        return BankExtension(self, version)

    def decoded_batches(
        self, images: Sequence[ImageInput], *, skip_bad: bool, size: int | None = None
    ) -> Iterator[_Decoded]:
        """Decoded batches; the next batch decodes on a thread while the model runs on this one."""
        size = size or self.embedder.batch_size
        batches = [images[i : i + size] for i in range(0, len(images), size)]
        return prefetched(partial(self.embedder.decode_batch, skip_bad=skip_bad), batches)

    def refresh_count(self, version: CollectionVersion) -> None:
        """Write the version's current point count to its record (and to the setting's, if it is the active one)."""
        with self.lock(version.setting):
            record = self.store.get_record(VERSION_KIND, version.collection)
            if record is None:  # discarded meanwhile (a failed re-index's version): nothing to count
                return
            record["count"] = self.store.count(version.collection)
            self.store.put_record(VERSION_KIND, version.collection, record)
            setting = self.store.get_record(SETTING_KIND, version.setting)
            if setting is not None and setting.get("active") == version.collection:
                self.store.put_record(SETTING_KIND, version.setting, {**setting, "active_count": record["count"]})

    # ----------------------------------------------------------------- switching

    def activate(self, version: CollectionVersion, *, expected_count: int | None = None) -> CollectionVersion:
        """Check a built version and make it the active one in one atomic alias move."""
        with self.lock(version.setting):
            count = self.store.count(version.collection)
            if expected_count is not None and count < expected_count:
                raise EmptyCollection(
                    f"version {version.version} of {version.setting!r} holds {count} points, "
                    f"expected {expected_count}: not activated"
                )
            ready = CollectionVersion.from_dict({**version.to_dict(), "state": "ready", "count": count})
            # A version above NOMINAL_APPROXIMATE_ABOVE is switched in with its approximate index built.
            self.store.prepare_search(version.collection)
            patch = self.patch_record(version)
            self.store.put_record(VERSION_KIND, version.collection, ready.to_dict())
            if patch is not None:
                collection = patch["collection"]
                patch = {**patch, "state": "ready", "count": self.store.count(collection)}
                self.store.put_record(VERSION_KIND, collection, patch)
                self.store.set_alias(alias_name(version.setting, kind="patch"), collection)
            self.store.set_alias(alias_name(version.setting), version.collection)
            record = self.store.get_record(SETTING_KIND, version.setting)
            if record is not None:
                # The record mirrors the alias (read in one call per verdict) and the backbone is the version's:
                # a re-index with another backbone changes what the setting is built on.
                setting = MachineSetting.from_dict(record)
                self.store.put_record(
                    SETTING_KIND, setting.name,
                    setting.updated(backbone=version.backbone, active=version.collection, active_count=count).to_dict(),
                )
        return ready

    def rollback(self, name: str) -> CollectionVersion:
        """Make the newest ready version older than the active one active again, in one alias move.

        The version rolled back from is kept (it is newer, so pruning leaves it alone).

        Raises:
            NoPreviousVersion: there is no ready version older than the active one.
        """
        with self.lock(name):
            active = self.active(name)
            if active is None:
                raise no_images(name)
            older = [v for v in self.list(name) if v.state == "ready" and v.version < active.version]
            if not older:
                raise NoPreviousVersion(
                    f"setting {name!r} has no ready version older than v{active.version} to roll back to: "
                    "a re-index keeps the version it replaces"
                )
            return self.activate(older[-1])

    def discard(self, version: CollectionVersion) -> None:
        """Delete a version that is not active (a half-built or superseded one), vectors and record."""
        with self.lock(version.setting):
            if self.store.resolve_alias(alias_name(version.setting)) == version.collection:
                raise ValueError(f"{version.collection} is the active version of {version.setting!r}: not deleted")
            patch = self.patch_record(version)
            if patch is not None:
                self.store.delete_collection(patch["collection"])
                self.store.delete_record(VERSION_KIND, patch["collection"])
                self.positional.delete(patch["collection"])
                self.forget(patch["collection"])  # a discarded number may be built again, maybe another way
            self.store.delete_collection(version.collection)
            self.store.delete_record(VERSION_KIND, version.collection)
            self.forget(version.collection)

    def prune(self, name: str, *, keep: int) -> list[CollectionVersion]:
        """Delete ready versions older than the active one beyond the `keep` newest; returns those deleted."""
        if keep < 0:
            raise ValueError(f"keep must be 0 or more, got {keep}")
        with self.lock(name):
            active = self.active(name)
            if active is None:
                return []
            older = [v for v in self.list(name) if v.state == "ready" and v.version < active.version]
            doomed = older[: max(len(older) - keep, 0)]
            for version in doomed:
                self.discard(version)
            return doomed

    def delete_all(self, name: str) -> None:
        """Every version of a setting, both kinds, its aliases and its patch banks in memory (deleting the setting)."""
        with self.lock(name):
            for kind in ("global", "patch"):
                self.store.delete_alias(alias_name(name, kind=kind))
                for version in self.list(name, kind=kind):
                    self.store.delete_collection(version.collection)
                    self.store.delete_record(VERSION_KIND, version.collection)
                    if kind == "patch":
                        self.positional.delete(version.collection)
                    self.forget(version.collection)
            self.patches.cache.forget(name)

    def forget(self, collection: str) -> None:
        """Drop what this process cached of a deleted collection (its name may be used again)."""
        self._ready.pop(collection, None)
        self._patch_records.pop(collection, None)
        self._recipes.pop(collection, None)


class BankExtension:
    """A version's patch bank extended batch by batch (`Versions.bank_extension`).

    `add` each decoded batch (`Embedder.decode_batch`) before upserting its global points: images already
    in the version are left out, so an image is never added twice. A fused version's positional
    statistics are merged `MERGE_IMAGES` images at a time, and `close` merges what is gathered: each merge
    rewrites the whole statistics (15.7 MB at 224 px with EfficientNet-Lite0), so merging every batch of a
    re-index (2-32 images) cost more than its forward passes. Gathered images that a dying process never
    merged are in no statistics, not half in them; a re-index that dies leaves a version that is discarded.

    Attributes:
        patch: the version's patch record, None for a global-only version.
    """

    def __init__(self, versions: Versions, version: CollectionVersion) -> None:
        self.versions = versions
        self.version = version
        self.patch = versions.patch_record(version)
        self._recipe = PatchConfig.from_dict(self.patch.get("patch_config")) if self.patch is not None else None
        self._backbone = versions.embedder.backbone_for(version) if self.patch is not None else None
        self._pending: list[tuple[str, np.ndarray | None]] = []  # whole images' patch vectors, for positional statistics

    def wants_maps(self, batch: _Decoded) -> bool:
        """Whether a batch's feature maps should come from the forward pass that embeds it: where the version keeps
        a patch bank and every image of the batch is scored whole (tiles take passes of their own)."""
        decoded, kept, _ = batch
        return self._recipe is not None and bool(kept) and self._recipe.whole(decoded, self._backbone.input_size)

    def add(self, batch: _Decoded, *, maps: FeatureMaps | None = None) -> None:
        """Add a batch's new images to the bank; a fused version's whole images' patch vectors are gathered for its
        positional statistics. `maps`: the feature maps of the batch's images, in its order, made with its
        embeddings (`wants_maps`)."""
        if self.patch is None:
            return
        decoded, kept, _ = batch
        versions = self.versions
        present = {p.id for p in versions.store.retrieve(self.version.collection, [image.id for image in kept])}
        fresh: dict[str, int] = {}  # image id -> its place in the batch
        for number, image in enumerate(kept):
            if image.id not in present and image.id not in fresh:
                fresh[image.id] = number
        if fresh:
            places = list(fresh.values())
            versions.patches.extend(
                self.version.setting, self.patch["collection"], self._recipe, self._backbone,
                [kept[n] for n in places], [decoded[n] for n in places], batch_size=versions.embedder.batch_size,
                whole=self._pending if self.patch.get("positional") else None,
                maps=None if maps is None else FeatureMaps(maps.stride8[places], maps.stride16[places]),
            )
        if len(self._pending) >= MERGE_IMAGES:
            self._merge()

    def close(self) -> None:
        """Merge the images gathered since the last merge."""
        if self._pending:
            self._merge()

    def _merge(self) -> None:
        """Merge the gathered images' patch vectors into the version's positional statistics (one merge at a time per
        setting, across processes)."""
        whole = [(image, vectors) for image, vectors in self._pending if vectors is not None]
        with self.versions.locks.hold(f"positional:{self.version.setting}"):
            self.versions.positional.add(
                self.patch["collection"], np.stack([vectors for _, vectors in whole]) if whole else None,
                [image for image, _ in whole], tiled=len(whole) < len(self._pending))
        self._pending.clear()
