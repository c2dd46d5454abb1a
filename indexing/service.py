"""The one module `app/` and `workers/` call: settings, indexing, verdicts, calibration.

`NominalService` is handed an open `VectorStore` and a way to load backbones;
it reads no environment and knows nothing of HTTP or Celery. Every method
either completes or raises a `NominalError` subclass whose message says what to
fix, leaving the store as it was (bad input is rejected before anything is
written unless the caller asks to skip it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexing.backbones import DEFAULT_BACKBONE, Backbone, map_channels
from indexing.calibration import Calibration, calibrate, parse_policy, policy_for
from indexing.conformal import References, p_value
from indexing.datasets import Dataset
from indexing.embedder import BackbonePool, EmbeddedBatch, Embedder, Skipped  # noqa: F401 - re-exported
from indexing.evaluation import Metrics, compute_metrics
from indexing.fused import FusedResult, FusedScorer, parts_of, scorer_name
from indexing.errors import (
    BackboneChangeNeedsReindex,
    BackboneMismatch,
    BadImage,
    EmptyCollection,
    InvalidCalibration,
    InvalidTraining,
    UnknownCalibration,
    UnknownSetting,
)
from indexing.image_store import ImageRef, ImageStore
from indexing.images import DEFAULT_MAX_PIXELS, ImageInput, decode
from indexing.locks import LocalLocks, SettingLocks
from indexing.bank_cache import BankCache, CacheStats
from indexing.compare import compare_scorers
from indexing.metric_learning import ScoredPatches
from indexing.patch_mode import PatchConfig, PatchIndex, PatchResult, write_heatmaps
from indexing.positional import PositionalMemory, PositionalRecord
from indexing.scoring import DEFAULT_K, knn_score, leave_one_out_scores, without_self
from indexing.settings import (
    CALIBRATION_KIND,
    LABEL_KIND,
    SETTING_KIND,
    CollectionVersion,
    MachineSetting,
    alias_name,
    check_setting_name,
    collection_name,
    default_scoring,
    utc_now,
)
from indexing.store.base import Neighbour, Point, VectorStore
from indexing.training import (
    GATE_NOMINAL,
    MIN_FAIL,
    MIN_HELD_OUT_PASS,
    NOMINAL_SAMPLE,
    SYNTHETIC,
    TrainedScorer,
    TrainedScorers,
    nominal_pixels,
)
from indexing.verdicts import HeatMap, Verdict, decide
from indexing.versions import IndexResult, Progress, Versions, no_images, no_progress  # noqa: F401 - IndexResult re-exported

log = logging.getLogger("nominal.service")

# Uncalibrated (setting, mode) pairs whose nominal leave-one-out scores a process keeps (`_loo_reference`).
NOMINAL_REFERENCES = 16



@dataclass(frozen=True)
class EvaluationResult:
    metrics: Metrics
    calibration: Calibration
    scores: np.ndarray
    is_fail: np.ndarray
    files: dict[str, Path]
    pixel_roc_auc: float | None = None
    pixel_pro: float | None = None
    trained: dict[str, Any] | None = None  # `labelled_fail`: the trained scorer's metrics and gate


@dataclass(frozen=True)
class SettingStatus:
    """A setting as verdicts see it.

    `calibration` is the one verdicts use (None: UNCALIBRATED); `calibration_note` says
    why the active calibration no longer applies (another backbone or scoring mode);
    `candidate` is a newer recorded calibration that is not active; `reindex_note` says how
    the active patch bank differs from what a re-index would build (missing, cut into
    tiles otherwise, or made of the earlier patch features), or None.
    """

    setting: MachineSetting
    active: CollectionVersion | None
    count: int
    calibration: Calibration | None
    calibration_note: str | None = None
    candidate: Calibration | None = None
    reindex_note: str | None = None

    @property
    def scorer(self) -> str:
        """The scorer verdicts use: the calibration's ("trained:<id>" for a trained one), else the setting's mode."""
        return self.calibration.scoring if self.calibration else self.setting.scoring


@dataclass(frozen=True)
class Calibrated:
    """A new calibration and what became of it: `active`, or `held_back` with the reason.

    `replaced` is the calibration verdicts used before, when this one took its place.
    """

    calibration: Calibration
    active: bool
    held_back: str | None
    replaced: Calibration | None


@dataclass(frozen=True)
class Trained:
    """A training's outcome: the scorer it recorded, and the calibration that put it in use (None: it stays off)."""

    scorer: TrainedScorer
    calibrated: Calibrated | None
    reason: str  # why it answers verdicts now, or why not

    @property
    def active(self) -> bool:
        return self.calibrated is not None and self.calibrated.active

    def to_dict(self) -> dict[str, Any]:
        c = self.calibrated
        return {
            "trained": self.scorer.summary(), "active": self.active, "reason": self.reason,
            "calibration_id": c.calibration.id if c else None, "threshold": c.calibration.threshold if c else None,
            "held_back": c.held_back if c else None,
        }


class NominalService:
    """Machine settings and their nominal collections, over one vector store.

    Args:
        store: an open `VectorStore`; the service does not close it.
        backbones: where models come from; share one pool per process.
        default_backbone: used when a new setting names none.
        max_pixels: decoded-size limit per image (decompression bombs).
        batch_size: images per forward pass.
        patch_config: the patch recipe new patch banks are built with (existing
            banks keep the recipe recorded with their version).
        bank_cache: loaded patch banks; share one per process.
        locks: the setting locks; `LocalLocks` (this process) by default, `RedisLocks`
            when other processes write to the same store.
        images: where uploaded images are kept (operator feedback is read from it).
    """

    def __init__(
        self,
        store: VectorStore,
        *,
        backbones: BackbonePool | None = None,
        default_backbone: str = DEFAULT_BACKBONE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_size: int = 32,
        patch_config: PatchConfig | None = None,
        bank_cache: BankCache | None = None,
        locks: SettingLocks | None = None,
        images: ImageStore | None = None,
    ) -> None:
        self.store = store
        self.images = images
        # Uncalibrated settings' nominal leave-one-out scores, the most recently used `NOMINAL_REFERENCES` kept.
        self._nominal_reference: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._nominal_lock = threading.Lock()
        self.references = References(store)
        # Scorers trained on the setting's labelled defects (`indexing.training`); a calibration names the one it uses.
        self.trained = TrainedScorers(store)
        # Called with (setting, version, images, verdicts) after every inspection; `indexing.history` records them.
        self.on_verdicts: list[Callable[[MachineSetting, CollectionVersion, Sequence[ImageInput], list[Verdict]], None]] = []
        # Called with the setting's name when it is deleted; `indexing.history` forgets its inspections.
        self.on_delete: list[Callable[[str], None]] = []
        self.patch_config = patch_config or PatchConfig()
        self.embedder = Embedder(backbones, max_pixels=max_pixels, batch_size=batch_size)
        self.patches = PatchIndex(store, cache=bank_cache, compute=self.embedder.backbones.compute)
        self.default_backbone = default_backbone
        # Every read-modify-write of a setting's records, numbering and alias holds its lock;
        # `RedisLocks` when several processes share the store (see indexing/locks.py).
        self.locks: SettingLocks = locks or LocalLocks()
        self.positional = PositionalMemory(store)
        self.versions = Versions(
            store, embedder=self.embedder, patches=self.patches, patch_config=self.patch_config, locks=self.locks,
            positional=self.positional,
        )
        # Fused settings' scores (`indexing.fused`): the patch bank's, the global kNN's and the positional statistics'.
        self.fused = FusedScorer(store, self.patches, self.positional,
                                 lambda version, vectors, ids, k: self._nearest(version, vectors, ids, k))
        # A calibration never changes once written, so a verdict reads it from the store once per process.
        self._calibrations: dict[tuple[str, str], Calibration] = {}

    # ----------------------------------------------------------------- settings

    def get_setting(self, name: str) -> MachineSetting:
        record = self.store.get_record(SETTING_KIND, check_setting_name(name))
        if record is None:
            raise UnknownSetting(name)
        return MachineSetting.from_dict(record)

    def list_settings(self) -> list[MachineSetting]:
        return [MachineSetting.from_dict(r) for r in self.store.list_records(SETTING_KIND)]

    def put_setting(
        self,
        name: str,
        *,
        backbone: str | None = None,
        k: int | None = None,
        scoring: str | None = None,
        description: str | None = None,
        tiling: str | None = None,
    ) -> MachineSetting:
        """Create a setting, or update the fields given. Changing the backbone or tiling needs a re-index."""
        with self._lock(check_setting_name(name)):
            record = self.store.get_record(SETTING_KIND, name)
            if record is None:
                model = self.backbones.get(backbone or self.default_backbone)  # an unknown one fails before anything is stored
                setting = MachineSetting(
                    name=name,
                    backbone=backbone or self.default_backbone,
                    k=k or DEFAULT_K,
                    scoring=scoring or default_scoring(model.map_channels),  # type: ignore[arg-type]
                    description=description or "",
                    tiling=tiling or "auto",  # type: ignore[arg-type]
                )
            else:
                current = MachineSetting.from_dict(record)
                active = self.versions.active(name)
                if backbone:
                    backbone = self.backbones.get(backbone).name  # unknown: refused here; aliases: canonical
                if active is not None:
                    # The active version is the one source of truth for the backbone: its vectors use it.
                    current = current.updated(backbone=active.backbone)
                    if backbone and backbone != active.backbone:
                        raise BackboneChangeNeedsReindex(
                            f"setting {name!r} is built on {active.backbone} (version {active.version}, "
                            f"{active.count} images); a change of backbone is a re-index: "
                            f"POST /v1/settings/{name}/reindex with {{\"source\": ..., \"backbone\": \"{backbone}\"}} "
                            f"(or `nominal reindex {name} SOURCE --backbone {backbone}`)"
                        )
                changes = {
                    key: value
                    for key, value in {
                        "backbone": backbone, "k": k, "scoring": scoring, "description": description, "tiling": tiling,
                    }.items()
                    if value is not None
                }
                setting = current.updated(**changes)
            self.store.put_record(SETTING_KIND, name, setting.to_dict())
            return setting

    def delete_setting(self, name: str) -> None:
        """Remove a setting with every collection version and calibration it owns."""
        self.get_setting(name)
        with self._lock(name):
            self.versions.delete_all(name)
            self.references.delete_setting(name)
            self.trained.delete_all(name)
            for record in self.store.list_records(CALIBRATION_KIND):
                if record.get("setting") == name:
                    self.store.delete_record(CALIBRATION_KIND, _calibration_key(name, record["id"]))
            for record in self.store.list_records(LABEL_KIND):
                if record.get("setting") == name:
                    self.store.delete_record(LABEL_KIND, _label_key(name, record["sha256"]))
            self.store.delete_record(SETTING_KIND, name)
        for hook in self.on_delete:
            try:
                hook(name)
            except Exception:  # noqa: BLE001 - the setting is gone; what is left of its history is said in the log
                log.exception("setting %r is deleted, but a deletion hook failed", name)

    def status(self, name: str) -> SettingStatus:
        """The setting, its active version, and the calibration verdicts use, with why another does not apply."""
        setting = self.get_setting(name)
        active = self.versions.active(name)
        if active is not None and setting.backbone != active.backbone:
            setting = setting.updated(backbone=active.backbone)  # what its vectors use, whatever a record says
        count = self.store.count(active.collection) if active else 0
        chosen = self.latest_calibration(name)
        stale = self._stale_reason(setting, active, chosen) if chosen and active else None
        newest = next(iter(self.calibrations(name)), None)
        return SettingStatus(
            setting=setting, active=active, count=count,
            calibration=None if stale or active is None else chosen,
            calibration_note=stale,
            candidate=newest if newest and (chosen is None or newest.id != chosen.id) else None,
            reindex_note=self._reindex_reason(setting, active) if active else None,
        )

    def _reindex_reason(self, setting: MachineSetting, version: CollectionVersion) -> str | None:
        """How the version's patch bank differs from what a re-index would build: missing, cut into tiles otherwise,
        made of the earlier patch features, or scored without the local scale."""
        if not setting.keeps_patches:
            return None
        try:
            patch = self.versions.require_patch(version)
        except EmptyCollection as missing:  # verdicts refuse with the same words until a re-index
            return str(missing)
        if setting.scoring == "fused" and not patch.get("positional"):
            return ("the version was built while the setting scored by patches alone: a re-index builds the "
                    "positional statistics a fused score needs")
        built = PatchConfig.from_dict(patch.get("patch_config"))
        current = self.versions.patch_recipe(setting, map_channels(version.backbone))
        if built.tiling != current.tiling:
            return (f"the patch bank was built with tiling {built.tiling!r} and the setting asks for {setting.tiling!r}: "
                    "re-index to apply it")
        if built.tiling == "auto" and built.tiling_rule != current.tiling_rule:
            return ("the patch bank was built with the earlier automatic tiling (images tiled from 3:1, at native "
                    "scale); a re-index builds it with the current one (from 2:1, in one row with the aspect ratio kept)")
        if (built.projection, built.dim) != (current.projection, current.dim):
            return (f"the patch bank was built with the earlier patch features ({built.dim}-d, {built.projection!r}); "
                    f"a re-index builds them with the current ones ({current.dim}-d, {current.projection!r})")
        if built.local_scale != current.local_scale:
            return ("the patch bank scores plain patch distances; a re-index builds it to score each image relative to "
                    f"the {current.local_scale} nominal images nearest its worst patch (then calibrate again)")
        return None

    # ----------------------------------------------------------------- versions

    def versions_of(self, name: str) -> list[CollectionVersion]:
        """The setting's versions, oldest first: what a rollback can return to."""
        self.get_setting(name)
        return self.versions.list(name)

    def active_version(self, name: str) -> CollectionVersion | None:
        """The version verdicts are answered from, or None before the first images."""
        return self.versions.active(check_setting_name(name))

    def rollback(self, name: str) -> CollectionVersion:
        """Make the newest ready version older than the active one active again (`Versions.rollback`)."""
        self.get_setting(name)
        return self.versions.rollback(name)

    def bank_stats(self) -> CacheStats:
        """The patch banks held in memory now, their bytes against the budget, evictions and loads (`/metrics`)."""
        return self.patches.cache.stats()

    def add_points(self, version: CollectionVersion, points: Sequence[Point]) -> None:
        """Upsert points embedded elsewhere (a Celery worker's batch) into a version being built."""
        self.versions.add_points(version, points)

    # ----------------------------------------------------------------- indexing

    # -------------------------------------------------- embedding (the composed Embedder's)

    @property
    def backbones(self) -> BackbonePool:
        return self.embedder.backbones

    @property
    def max_pixels(self) -> int:
        return self.embedder.max_pixels

    @property
    def batch_size(self) -> int:
        return self.embedder.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.embedder.batch_size = value

    def index(
        self,
        name: str,
        images: Sequence[ImageInput],
        *,
        skip_bad: bool = False,
        progress: Progress = no_progress,
    ) -> IndexResult:
        """Add PASS images to the setting's active version, creating the setting and version 1 if needed.

        With `skip_bad=False` every image is decoded before anything is written,
        and one bad image rejects the whole call: the store is unchanged.

        The call holds the setting's lock, so it is not lost to a re-index running
        meanwhile (in any process): the images also go into any version being built,
        which the re-index then switches to. Images indexed before a re-index began
        are replaced by its source, as a re-index means (roll back to get them back).
        """
        if not images:
            raise BadImage(name, "no images given")
        check_setting_name(name)
        if not skip_bad:
            # Before the setting is created: a refused call leaves no trace.
            self._validate(images, progress)
        with self._lock(name):
            try:
                setting = self.get_setting(name)
            except UnknownSetting:
                setting = self.put_setting(name)
            version = self.versions.active(name)
            if version is None:
                version = self.versions.activate(self.versions.begin(setting))
            building = [v for v in self.versions.list(name) if v.state == "building"]
            result = self.versions.fill(version, images, skip_bad=skip_bad, progress=progress)
            for other in building:
                self.versions.fill(other, images, skip_bad=True)
            self.versions.refresh_count(version)
        return result

    def delete_image(self, name: str, image_id: str) -> bool:
        """Drop one nominal image from the active version; False if it was not there."""
        self.get_setting(name)
        version = self.versions.active(name)
        if version is None or not self.store.retrieve(version.collection, [image_id]):
            return False
        self.store.delete_points(version.collection, [image_id])
        self.versions.refresh_count(version)
        patch = self.versions.patch_record(version)
        if patch is not None:
            self.patches.forget_image(name, patch["collection"], image_id)
        return True

    def nominal_image(self, name: str, image_id: str) -> Point | None:
        """A stored nominal image's point (payload only), or None if the setting holds no such image."""
        self.get_setting(name)
        version = self.versions.active(name)
        found = self.store.retrieve(version.collection, [image_id]) if version else []
        return found[0] if found else None

    # ----------------------------------------------------------------- verdicts

    def neighbours(self, name: str, images: Sequence[ImageInput], *, k: int | None = None) -> list[list[Neighbour]]:
        """The k nearest nominal images of each input (itself excluded if stored)."""
        context = self.context(name)
        k = k or context.setting.k
        return self._nearest(context.version, self._embed_for(context.version, images), [image.id for image in images], k,
                             trained=context.trained)

    def inspect(
        self, name: str, images: Sequence[ImageInput], *, k: int | None = None, heatmap: bool = False
    ) -> list[Verdict]:
        """Score each image against the active nominal set and apply the latest calibration.

        A patch-scoring setting scores by the largest patch distance (over the mean
        leave-one-out score of the nominal images nearest the worst patch, for a bank built
        with `PatchConfig.local_scale`); its neighbours are the nominal images holding the
        patches closest to the most anomalous patch, and `heatmap=True` adds each image's
        heat map (raw grid and PNG overlay). A global setting ignores `heatmap`.
        """
        started = time.perf_counter()
        context = self.context(name)
        setting, version = context.setting, context.version
        k = k or setting.k
        if setting.keeps_patches:
            verdicts = self._inspect_patch(context, images, k=k, heatmap=heatmap, started=started)
        else:
            verdicts = self._inspect_global(context, images, k=k, started=started)
        verdicts = self._with_p_values(setting, version, verdicts)
        for hook in self.on_verdicts:
            try:
                hook(setting, version, images, verdicts)
            except Exception:  # noqa: BLE001 - recording a verdict must never fail it
                log.exception("a verdict hook failed; the verdicts stand")
        return verdicts

    def _with_p_values(
        self, setting: MachineSetting, version: CollectionVersion, verdicts: list[Verdict]
    ) -> list[Verdict]:
        """Every verdict with its conformal `p_value` (`indexing.conformal`), and UNCALIBRATED ones with
        `nominal_percentile`: without a threshold, a score means something only against the nominal
        images' own (leave-one-out) scores, which also serve a calibration recorded without reference scores."""
        out = []
        for v in verdicts:
            reference = self.references.get(setting.name, v.calibration_id) if v.calibration_id else None
            if reference is None or reference.size == 0:
                reference = self._loo_reference(setting, version)
            changes: dict[str, Any] = {"p_value": p_value(reference, v.score)}
            if v.verdict == "UNCALIBRATED" and reference.size:
                changes["nominal_percentile"] = float(np.searchsorted(reference, v.score, side="left") / reference.size)
            out.append(replace(v, **changes))
        return out

    def reference_scores(self, name: str) -> np.ndarray:
        """Sorted reference scores verdicts are judged against: the calibration in use's, else the nominal leave-one-out."""
        setting = self.get_setting(name)
        version = self._require_active(name)
        calibration = self._usable_calibration(setting, version)
        reference = self.references.get(name, calibration.id) if calibration else None
        return reference if reference is not None and reference.size else self._loo_reference(setting, version)

    def nominal_sample(self, collection: str, limit: int | None = None) -> Iterator[Point]:
        """At most `limit` of a version's nominal points (global vectors, payloads), a uniform random sample.

        Points come in id order and ids are content hashes, so the first `limit` are a random sample
        of the images, old and new alike, read without scrolling the rest: a million-image setting
        gives its 4,096 in four store reads, not a pass over 5 GB of vectors.
        """
        batch_size = 1024 if limit is None else max(1, min(1024, limit))
        return islice(self.store.scroll(collection, with_vectors=True, batch_size=batch_size), limit)

    def nominal_vectors(self, name: str, *, limit: int | None = None) -> Iterator[np.ndarray]:
        """The active version's nominal global vectors in batches of up to 1,024, at most `limit`
        (`nominal_sample`; drift's nominal centroid)."""
        batch: list[np.ndarray] = []
        for point in self.nominal_sample(self._require_active(name).collection, limit):
            batch.append(point.vector)
            if len(batch) == 1024:
                yield np.asarray(batch, dtype=np.float32)
                batch = []
        if batch:
            yield np.asarray(batch, dtype=np.float32)

    def _loo_reference(self, setting: MachineSetting, version: CollectionVersion) -> np.ndarray:
        """The nominal images' sorted leave-one-out scores, computed once per version, size and mode."""
        # `count` is current: read with the version's record, or kept in the setting record (`context`).
        key = (version.collection, version.count, setting.scoring, setting.k, setting.calibration_id)
        with self._nominal_lock:
            reference = self._nominal_reference.get(key)
            if reference is not None:
                self._nominal_reference.move_to_end(key)
                return reference
        # Worked out over the whole nominal set, so kept for several settings (and modes): verdicts that take
        # turns between them do not work it out again on each turn. A grown version's older ones age out.
        reference = np.sort(self.nominal_scores(setting.name))
        with self._nominal_lock:
            self._nominal_reference[key] = reference
            while len(self._nominal_reference) > NOMINAL_REFERENCES:
                self._nominal_reference.popitem(last=False)
        return reference

    def _inspect_global(self, context: "CallContext", images: Sequence[ImageInput], *, k: int, started: float) -> list[Verdict]:
        version, calibration = context.version, context.calibration
        vectors = self._embed_for(version, images)
        nearest = self._nearest(version, vectors, [image.id for image in images], k, trained=context.trained)
        elapsed_ms = (time.perf_counter() - started) * 1000.0 / max(len(images), 1)
        verdicts = []
        for image, near, vector in zip(images, nearest, vectors):
            score = knn_score([n.distance for n in near], k)
            outcome, threshold, calibration_id = decide(score, calibration)
            verdicts.append(
                Verdict(
                    source=image.source,
                    image_id=image.id,
                    verdict=outcome,
                    score=score,
                    threshold=threshold,
                    calibration_id=calibration_id,
                    neighbours=near,
                    elapsed_ms=elapsed_ms,
                    scorer=context.scorer,
                    embedding=vector,
                )
            )
        return verdicts

    def _inspect_patch(
        self,
        context: "CallContext",
        images: Sequence[ImageInput],
        *,
        k: int,
        heatmap: bool,
        started: float,
    ) -> list[Verdict]:
        calibration = context.calibration
        if not images:
            raise BadImage("request", "no images given")
        decoded, _, _ = self.embedder.decode_batch(images, skip_bad=False)
        assert context.patch is not None
        backbone = self.embedder.backbone_for(context.version)
        fused: list[FusedResult | None] = [None] * len(images)
        if context.setting.scoring == "fused" and context.trained is None:
            fused = list(self.fused.score(context.version, context.patch, backbone, images, decoded, k=context.setting.k,
                                          neighbours=k, maps=heatmap, batch_size=self.batch_size,
                                          record=context.positional))
            results = [found.patch for found in fused if found is not None]
        else:
            results = self.patches.score(
                context.setting.name, context.patch["collection"], PatchConfig.from_dict(context.patch.get("patch_config")),
                backbone, images, decoded,
                neighbours=k, maps=heatmap, batch_size=self.batch_size, hybrid=_hybrid(context.trained),
            )
        elapsed_ms = (time.perf_counter() - started) * 1000.0 / max(len(images), 1)
        verdicts = []
        for image, pixels, found, whole in zip(images, decoded, results, fused):
            score = whole.score if whole is not None else found.score
            outcome, threshold, calibration_id = decide(score, calibration)
            heat = None
            if heatmap and found.heat is not None:
                # A fused threshold is on another scale than the patch distances the map shows: no threshold line.
                heat = HeatMap.build(found, pixels, threshold=threshold if whole is None else None)
            verdicts.append(
                Verdict(
                    source=image.source,
                    image_id=image.id,
                    verdict=outcome,
                    score=score,
                    threshold=threshold,
                    calibration_id=calibration_id,
                    neighbours=found.neighbours,
                    elapsed_ms=elapsed_ms,
                    heatmap=heat,
                    scorer=context.scorer,
                    parts=whole.parts if whole is not None else None,
                    embedding=whole.embedding if whole is not None else None,
                )
            )
        return verdicts

    def scores(self, name: str, images: Sequence[ImageInput], *, progress: Progress = no_progress) -> np.ndarray:
        """Scores of many images by the scorer verdicts use, in batches (leave-one-out for stored images)."""
        scored = self._scored(name, images, trained=self._trained_in_use(name), progress=progress)
        return np.asarray([score for score, _ in scored], dtype=np.float64)

    def _scored(
        self, name: str, images: Sequence[ImageInput], *, grids: bool = False, trained: TrainedScorer | None = None,
        vectors: list[np.ndarray] | None = None, progress: Progress = no_progress,
    ) -> list[tuple[float, PatchResult | None]]:
        """(score, patch result or None in global mode) per image, in input order; `grids` keeps patch-distance grids.

        Global mode scores with kNN, in the `trained` scorer's projection when one is given, and
        appends each batch's embeddings to `vectors` when given.
        """
        setting = self.get_setting(name)
        version = self._require_active(name)
        if setting.scoring == "fused" and trained is None:  # a trained head answers alone, as in a patch setting
            patch = self.versions.require_patch(version)
            backbone = self.embedder.backbone_for(version)
            fused: list[tuple[float, PatchResult | None]] = []
            progress("scoring", 0, len(images))
            for decoded, kept, _ in self.versions.decoded_batches(images, skip_bad=False):
                results = self.fused.score(version, patch, backbone, kept, decoded, k=setting.k, grids=grids,
                                           batch_size=self.batch_size)
                if vectors is not None:
                    vectors.append(np.stack([result.embedding for result in results]))
                fused += [(result.score, result.patch) for result in results]
                progress("scoring", len(fused), len(images))
            return fused
        if setting.keeps_patches:
            found: list[tuple[float, PatchResult | None]] = []
            progress("scoring", 0, len(images))
            for decoded, kept, _ in self.versions.decoded_batches(images, skip_bad=False):
                for result in self._patch_results(name, version, kept, decoded, neighbours=0, grids=grids,
                                                  trained=trained):
                    found.append((result.score, result))
                progress("scoring", len(found), len(images))
            return found
        backbone = self.embedder.backbone_for(version)
        out: list[float] = []
        progress("scoring", 0, len(images))
        for decoded, kept, _ in self.versions.decoded_batches(images, skip_bad=False):
            embedded = backbone.embed(decoded, batch_size=self.batch_size)
            if vectors is not None:
                vectors.append(embedded)
            for near in self._nearest(version, embedded, [image.id for image in kept], setting.k, trained=trained):
                out.append(knn_score([n.distance for n in near], setting.k))
            progress("scoring", len(out), len(images))
        return [(score, None) for score in out]

    def nominal_scores(self, name: str, *, progress: Progress = no_progress) -> np.ndarray:
        """Leave-one-out scores of the stored nominal images against the rest, without re-embedding,
        by the scorer verdicts use.

        In patch mode only each image's stored (coreset) patches can be scored, which
        approximates its score (see `PatchIndex.nominal_scores`); give PASS images to
        `calibrate` for an exact calibration. With a trained scorer in use, the out-of-fold
        scores its training kept (`TrainedScorer.reference`).
        """
        setting = self.get_setting(name)
        version = self._require_active(name)
        trained = self._trained_in_use(name)
        if trained is not None and trained.reference:
            # The head was trained on these very images: their own scores would be too low. Its training kept
            # their out-of-fold scores instead (`TrainedScorer.reference`).
            return np.asarray(trained.reference, dtype=np.float64)
        if setting.scoring == "fused":
            patch = self.versions.require_patch(version)
            progress("scoring nominal set", 0, 1)
            standards = self.fused.standards(version, patch, self.fused.record(patch), k=setting.k,
                                             batch_size=self.batch_size)
            progress("scoring nominal set", 1, 1)
            return np.fromiter(standards.nominal.values(), dtype=np.float64)
        if setting.scoring == "patch":
            patch = self.versions.require_patch(version)
            progress("scoring nominal set", 0, 1)
            scores = self.patches.nominal_scores(name, patch["collection"], PatchConfig.from_dict(patch.get("patch_config")))
            progress("scoring nominal set", 1, 1)
            return scores
        total = self.store.count(version.collection)
        progress("scoring nominal set", 0, total)
        scores = leave_one_out_scores(
            self.store.scroll(version.collection, with_vectors=True),
            lambda vectors, ids: self._nearest(version, vectors, ids, setting.k, trained=trained), setting.k,
            batch_size=self.batch_size, done=lambda seen: progress("scoring nominal set", seen, total))
        return np.fromiter(scores.values(), dtype=np.float64, count=len(scores))

    # -------------------------------------------------------------- calibration

    def calibrate(
        self,
        name: str,
        *,
        pass_images: Sequence[ImageInput] = (),
        fail_images: Sequence[ImageInput] = (),
        policy: str | None = None,
        use_feedback: bool = True,
        activate: bool = True,
        compare: bool = False,
        progress: Progress = no_progress,
    ) -> "Calibrated":
        """Calibrate a threshold, record it, and make it the one verdicts use when that is safe.

        With no PASS images given, the stored nominal images are scored leave-one-out,
        so a PASS-only `quantile` calibration needs no extra data. With `use_feedback`,
        the images operators labelled FAIL join `fail_images`. Without a policy:
        ``f1`` with FAIL images, ``quantile:0.01`` without (`default_policy`).

        With `compare`, the labelled images are also scored by every candidate scorer
        the setting can run and the candidates are compared by cross-validation on
        those images only (`indexing.compare`); the comparison is kept in the
        calibration record. The threshold itself stays the setting's current scorer's.

        How a calibration goes live (the one rule the API, CLI and page show): it is
        always recorded; it replaces the active one when `activate` is set and it is
        not degenerate (`Calibration.degenerate`). Otherwise it waits as a candidate
        that `activate_calibration` can make live.

        Raises:
            InvalidCalibration: a policy that needs FAIL images given none (`field`
                "policy"), too few PASS scores, or a bad policy; `compare` without
                PASS and FAIL images.
        """
        if policy is not None:
            parse_policy(policy)  # a malformed policy is refused before anything else is looked at
        version = self._require_active(name)
        fail_images = [*fail_images, *(self._feedback_fail_images(name) if use_feedback else [])]
        chosen = policy_for(policy, len(fail_images))  # a policy that cannot be met fails before any image is scored
        comparison = None
        if compare:
            if not pass_images or not fail_images:
                raise InvalidCalibration("--compare needs labelled PASS and FAIL images (--pass and --fail)")
            candidates, current = self.candidate_scores(name, pass_images, fail_images, progress=progress)
            comparison = compare_scorers(candidates, policy=chosen.text, current=current).to_dict()
            pass_scores, fail_scores = (np.asarray(values) for values in candidates[current])
        else:
            pass_scores = (
                self.scores(name, pass_images, progress=progress)
                if pass_images else self.nominal_scores(name, progress=progress)
            )
            fail_scores = self.scores(name, fail_images, progress=progress) if fail_images else np.empty(0)
        if pass_scores.size == 0:
            raise InvalidCalibration(
                f"setting {name!r} needs at least two nominal images, or PASS images given, to calibrate"
            )
        trained = self._trained_in_use(name)  # a threshold is made for the scorer verdicts use
        result = calibrate(
            pass_scores, fail_scores, policy, backbone=version.backbone_identity,
            collection=self._scored_collection(name, version),
            scoring=trained.scoring if trained else self._unsupervised_scorer(self.get_setting(name), version),
        )
        if comparison is not None:
            result = replace(result, comparison=comparison)
        held_back = result.degenerate if activate else "not activated on request"
        replaced = self.usable_calibration(name)
        self.references.save(name, result.id, pass_scores)  # first: a calibration is never recorded without them
        result = self.save_calibration(name, result, activate=held_back is None)
        return Calibrated(
            calibration=result, active=held_back is None, held_back=held_back,
            replaced=replaced if held_back is None else None,
        )

    def candidate_scores(
        self,
        name: str,
        pass_images: Sequence[ImageInput],
        fail_images: Sequence[ImageInput],
        *,
        progress: Progress = no_progress,
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
        """Scores of labelled images by every scorer the setting can run, and the name of the one it runs now.

        Global kNN with k = 1, 3, 5 (the setting's own k too); where the active version
        keeps a patch bank, the largest patch distance ("patch") and the mean of the
        3 and 10 largest (from the same distance grid); in a fused setting, its fused score ("fused").
        """
        from indexing.patch_search import top_mean

        setting = self.get_setting(name)
        version = self._require_active(name)
        images = list(pass_images) + list(fail_images)
        split = len(pass_images)
        backbone = self.embedder.backbone_for(version)
        progress("scoring candidates", 0, len(images))
        vectors_all = self._embedded(backbone, images)
        ks = sorted({1, 3, 5, setting.k})
        nearest = self._nearest(version, vectors_all, [image.id for image in images], max(ks))
        candidates: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for k in ks:
            scores = np.asarray([knn_score([n.distance for n in near[:k]], k) for near in nearest])
            candidates[f"global k={k}"] = (scores[:split], scores[split:])
        current = f"global k={setting.k}"
        trained = self._trained_in_use(name)
        if trained is not None and trained.kind == "metric":
            near = self._nearest(version, vectors_all, [image.id for image in images], setting.k, trained=trained)
            scores = np.asarray([knn_score([n.distance for n in found], setting.k) for found in near])
            candidates["trained"] = (scores[:split], scores[split:])
            current = "trained"
        if trained is not None and trained.kind == "hybrid":
            scores = np.asarray([score for score, _ in self._scored(name, images, trained=trained)])
            candidates["trained"] = (scores[:split], scores[split:])
        if self.versions.patch_record(version) is not None:
            found: list[PatchResult] = []
            for decoded, kept, _ in self.versions.decoded_batches(images, skip_bad=False):
                found += self._patch_results(name, version, kept, decoded, neighbours=0, grids=True)
            for label, k in (("patch", 1), ("patch top-3 mean", 3), ("patch top-10 mean", 10)):
                scores = np.asarray([top_mean(f.grid.ravel(), k) if k > 1 else f.score for f in found])
                candidates[label] = (scores[:split], scores[split:])
            if setting.scoring == "patch":
                current = "trained" if trained is not None else "patch"
        if setting.scoring == "fused":
            scores = np.asarray([score for score, _ in self._scored(name, images)])
            candidates["fused"] = (scores[:split], scores[split:])
            current = "trained" if trained is not None else "fused"
        progress("scoring candidates", len(images), len(images))
        return candidates, current

    # ----------------------------------------------------------------- training

    def check_trainable(
        self, name: str, *, fail_given: int, use_feedback: bool = True, min_fail: int = MIN_FAIL
    ) -> None:
        """Refuse, before any work, a training that cannot run: no images, too few FAIL images.

        Raises:
            UnknownSetting, EmptyCollection: as everywhere.
            InvalidTraining: fewer than `min_fail` FAIL images (`field` "fail").
        """
        self._require_active(name)
        fails = fail_given + (len(self.labels(name, "FAIL")) if use_feedback and self.images is not None else 0)
        # (an image both given and labelled counts twice here; `train` counts distinct images and refuses then)
        if fails < min_fail:
            raise InvalidTraining(
                f"training needs at least {min_fail} labelled FAIL images (given and marked FAIL by operators), "
                f"found {fails}: the gate cross-validates over them", field="fail")

    def train(
        self,
        name: str,
        *,
        fail_images: Sequence[ImageInput] = (),
        pass_images: Sequence[ImageInput] = (),
        use_feedback: bool = True,
        policy: str | None = None,
        margin: float | None = None,
        steps: int = 300,
        min_fail: int = MIN_FAIL,
        progress: Progress = no_progress,
    ) -> "Trained":
        """Train a scorer on the setting's labelled defects and put it in use where it measurably helps.

        It learns from the labelled FAIL images (given, and those operators marked FAIL when
        `use_feedback`) and CutPaste defects made from PASS images (`pass_images`, else the
        nominal images this process can read back): a global setting a metric projection of
        the backbone's embeddings (`_train_metric`), a patch or fused setting a DenseHybrid head
        (`_train_hybrid`; in a fused setting the gate weighs it against the fused score, and once in
        use it answers alone). The gate compares it with the unsupervised scorer by cross-validation
        on the labelled images alone. The trained scorer is always recorded; when the gate
        passes, a threshold is calibrated on the gate's out-of-fold scores (`policy`, else the
        policy of the calibration in use) and goes live by the rule of `calibrate`, so that
        verdicts say `scorer` "trained:<id>" or "hybrid:<id>". Otherwise the unsupervised
        scorer keeps answering and the result says why. `min_fail`: distinct labelled FAIL
        images needed (`MIN_FAIL` on a line; the evaluation protocol takes the gate's own minimum of 2).
        """
        from indexing.metric_learning import DEFAULT_MARGIN

        started = time.perf_counter()
        self.check_trainable(name, fail_given=len(fail_images), use_feedback=use_feedback, min_fail=min_fail)
        if policy is not None:
            parse_policy(policy)
        setting = self.get_setting(name)
        version = self._require_active(name)
        # One copy of each image: an image given and also labelled by an operator would sit on both sides of a fold.
        fail_images = list({image.sha256: image for image in [
            *fail_images, *(self._feedback_fail_images(name) if use_feedback else [])]}.values())
        if len(fail_images) < min_fail:  # duplicates, or labels whose files this process cannot read
            raise InvalidTraining(f"only {len(fail_images)} distinct labelled FAIL images could be read; at least "
                                  f"{min_fail} are needed", field="fail")
        backbone = self.embedder.backbone_for(version)
        points, total = list(self.nominal_sample(version.collection, NOMINAL_SAMPLE)), self.store.count(version.collection)
        sources = list(pass_images[:SYNTHETIC]) or list(nominal_pixels(self.images, points, SYNTHETIC))
        margin = DEFAULT_MARGIN if margin is None else margin
        if setting.keeps_patches:
            learned = self._train_hybrid(name, version, backbone, fail_images, sources, margin, progress)
            steps = 0  # a logistic regression, not a number of gradient steps
        else:
            learned = self._train_metric(points, total, backbone, fail_images, sources, setting.k, margin, steps, progress)
        head, decision, n_nominal, n_fail, n_synthetic = learned
        scorer = TrainedScorer.new(
            setting=name, backbone=version.backbone_identity, head=head, gate=decision.to_dict(),
            n_nominal=n_nominal, n_fail=n_fail, n_synthetic=n_synthetic, steps=steps,
            trained_on=version.collection, seconds=round(time.perf_counter() - started, 2),
            reference=tuple(float(x) for x in np.sort(decision.oof_pass)),
        )
        self.trained.save(scorer)
        if not decision.active:
            return Trained(scorer=scorer, calibrated=None,
                           reason=f"it stays off, the unsupervised scorer answers: {decision.reason}")
        # The threshold comes from the gate's out-of-fold scores: images scored by heads that never saw them.
        current = self.usable_calibration(name)
        result = calibrate(decision.oof_pass, decision.oof_fail, policy or (current.policy if current else None),
                           backbone=version.backbone_identity, collection=self._scored_collection(name, version),
                           scoring=scorer.scoring)
        held_back = result.degenerate
        self.references.save(name, result.id, decision.oof_pass)
        result = self.save_calibration(name, result, activate=held_back is None)
        calibrated = Calibrated(calibration=result, active=held_back is None, held_back=held_back,
                                replaced=current if held_back is None else None)
        reason = (f"it answers verdicts now (calibration {result.id}): {decision.reason}" if held_back is None
                  else f"it passed the gate but its calibration {result.id} is held back ({held_back}): {decision.reason}")
        return Trained(scorer=scorer, calibrated=calibrated, reason=reason)

    def _train_metric(
        self, points: Sequence[Point], total: int, backbone: Backbone, fail_images: Sequence[ImageInput],
        sources: Sequence[ImageInput], k: int, margin: float, steps: int, progress: Progress,
    ) -> tuple[Any, Any, int, int, int]:
        """A metric projection for a global setting, and its gate (`metric_learning.gate`), from `points`,
        a sample of the `total` nominal embeddings: (head, gate, nominal, FAIL and synthetic counts)."""
        from indexing.metric_learning import MetricHead, cut_paste, gate

        nominal = np.stack([p.vector for p in points]).astype(np.float32)
        fails = self._embedded(backbone, fail_images, progress, "embedding labelled FAIL images")
        # seeded by the images made so far: the same defects as the labelled-fail protocol always made
        synthetic = self._embedded(backbone, sources, progress, "making synthetic defects", skip_bad=True,
                                   alter=lambda decoded, done: cut_paste(decoded, seed=done))
        rng = np.random.default_rng(0)
        sample = nominal if len(nominal) <= GATE_NOMINAL else nominal[rng.choice(len(nominal), GATE_NOMINAL, replace=False)]
        progress("cross-validating the trained scorer", 0, 2)
        decision = gate(sample, fails, synthetic, k=k, margin=margin, steps=steps)
        progress("training the scorer", 1, 2)
        head = MetricHead.fit(nominal, np.concatenate([fails, synthetic]), steps=steps)
        progress("training the scorer", 2, 2)
        return head, decision, total, len(fails), len(synthetic)

    def _train_hybrid(
        self, name: str, version: CollectionVersion, backbone: Backbone, fail_images: Sequence[ImageInput],
        sources: Sequence[ImageInput], margin: float, progress: Progress,
    ) -> tuple[Any, Any, int, int, int]:
        """A DenseHybrid head for a patch setting, and its gate (`metric_learning.hybrid_gate`):
        (head, gate, held-out PASS, FAIL and synthetic counts).

        Its PASS images are the PASS images given that are not in the nominal set: a nominal
        image's leave-one-out patch distances run higher than a new part's (the coreset was
        chosen with its patches), and a gate on them favours any head that learns that
        difference. Its synthetic defects are the patches under CutPaste pastes on PASS images.
        """
        from indexing.metric_learning import cut_paste_boxes, fit_hybrid, hybrid_gate

        patch = self.versions.require_patch(version)
        collection, config = patch["collection"], PatchConfig.from_dict(patch.get("patch_config"))
        setting = self.get_setting(name)

        def scored(decoded: list[Image.Image], kept: list[ImageInput], done: int) -> list[ScoredPatches]:
            found = self.patches.scored_patches(name, collection, config, backbone, kept, decoded,
                                                batch_size=self.batch_size)
            if setting.scoring != "fused":
                return found
            # A fused setting's gate weighs the head against the fused score its verdicts give now.
            fused = self.fused.score(version, patch, backbone, kept, decoded, k=setting.k, batch_size=self.batch_size)
            return [replace(item, score=whole.score) for item, whole in zip(found, fused)]

        def pasted(decoded: list[Image.Image], kept: list[ImageInput], done: int) -> list[np.ndarray]:
            images, boxes = cut_paste_boxes(decoded, seed=done)
            return [item.vectors[_cells_in(box, pixels.size, item.vectors.shape[0])]
                    for item, pixels, box in zip(scored(images, kept, done), images, boxes)
                    if not item.tiled]  # a pasted box maps onto one square grid; tiles would need the layout

        passed = [item for item in self._per_batch(sources, scored, progress, "scoring PASS patches") if not item.in_bank]
        if len(passed) < MIN_HELD_OUT_PASS:
            raise InvalidTraining(
                f"a patch setting's training needs at least {MIN_HELD_OUT_PASS} PASS images that are not in its nominal "
                f"set (pass), found {len(passed)}: its gate compares scorers on parts scored as new ones are",
                field="pass")
        fails = self._per_batch(fail_images, scored, progress, "scoring labelled FAIL patches")
        synthetic = self._per_batch(sources, pasted, progress, "making synthetic defects")
        positives = np.concatenate(synthetic) if synthetic else np.empty((0, config.dim), np.float32)
        progress("cross-validating the trained scorer", 0, 2)
        decision = hybrid_gate(passed, fails, positives, margin=margin)
        progress("training the scorer", 1, 2)
        head = fit_hybrid(passed, fails, positives)
        progress("training the scorer", 2, 2)
        return head, decision, len(passed), len(fails), len(synthetic)

    def trained_scorers(self, name: str) -> list[TrainedScorer]:
        """The setting's trained scorers, newest first (the one in use is named by `status(name).scorer`)."""
        self.get_setting(name)
        return self.trained.list(name)

    def _feedback_fail_images(self, name: str) -> list[ImageInput]:
        """The images operators marked FAIL (missed defects) that this process can read."""
        if self.images is None:
            return []
        found = []
        for record in self.labels(name, "FAIL"):
            try:
                found.append(self.images.load(ImageRef.from_dict(record)))
            except BadImage:
                continue  # an image store without that file (another host): the images given still count
        return found

    def save_calibration(self, name: str, result: Calibration, *, activate: bool = True) -> Calibration:
        """Record a calibration; with `activate`, verdicts use it from now on.

        A calibration of patch scores keeps the recipe of the bank they came from, so that a re-index that
        builds or scores the bank another way leaves it stale (`_stale_reason`) rather than misjudging.
        """
        if result.patch_recipe is None:
            result = replace(result, patch_recipe=self.versions.recorded_recipe(result.collection))
        record = {**result.to_dict(), "setting": name}
        with self._lock(name):
            self.store.put_record(CALIBRATION_KIND, _calibration_key(name, result.id), record)
            if activate:
                setting = self.get_setting(name).updated(calibration_id=result.id)
                self.store.put_record(SETTING_KIND, name, setting.to_dict())
        return result

    def activate_calibration(self, name: str, calibration_id: str) -> Calibrated:
        """Make a recorded calibration the one verdicts use (an explicit choice: degenerate ones too).

        Raises:
            UnknownCalibration: no such calibration for this setting.
            BackboneMismatch: it was made on other vectors than the active version's.
        """
        calibration = self.calibration(name, calibration_id)
        version = self._require_active(name)
        stale = self._stale_reason(self.get_setting(name), version, calibration)
        if stale:
            raise BackboneMismatch(f"calibration {calibration_id} cannot be activated: {stale}")
        replaced = self.usable_calibration(name)
        self.save_calibration(name, calibration, activate=True)
        return Calibrated(calibration=calibration, active=True, held_back=None, replaced=replaced)

    def calibration(self, name: str, calibration_id: str) -> Calibration:
        record = self.store.get_record(CALIBRATION_KIND, _calibration_key(name, calibration_id))
        if record is None:
            self.get_setting(name)  # an unknown setting is said as such
            raise UnknownCalibration(name, calibration_id)
        return Calibration.from_dict({key: value for key, value in record.items() if key != "setting"})

    def calibrations(self, name: str) -> list[Calibration]:
        """Every calibration recorded for the setting, newest first."""
        self.get_setting(name)
        found = [
            Calibration.from_dict({key: value for key, value in r.items() if key != "setting"})
            for r in self.store.list_records(CALIBRATION_KIND) if r.get("setting") == name
        ]
        return sorted(found, key=lambda c: c.created_at, reverse=True)

    def latest_calibration(self, name: str) -> Calibration | None:
        """The calibration last made active (which verdicts use if it still fits the active version)."""
        setting = self.get_setting(name)
        if setting.calibration_id is None:
            return None
        try:
            return self.calibration(name, setting.calibration_id)
        except UnknownCalibration:
            return None

    def usable_calibration(self, name: str) -> Calibration | None:
        """The calibration verdicts use now: the active one, if it fits the active version."""
        setting = self.get_setting(name)  # an unknown setting is said as such
        version = self.versions.active(name)
        return None if version is None else self._usable_calibration(setting, version)

    # ----------------------------------------------------------------- feedback

    def record_label(self, name: str, image: dict[str, Any], label: str) -> None:
        """Keep an operator's label for an image (its `ImageRef` dict): PASS or FAIL, the latest wins."""
        if label not in ("PASS", "FAIL"):
            raise ValueError(f"label must be PASS or FAIL, got {label!r}")
        self.get_setting(name)
        record = {**image, "setting": name, "label": label, "labelled_at": utc_now()}
        self.store.put_record(LABEL_KIND, _label_key(name, image["sha256"]), record)

    def labels(self, name: str, label: str) -> list[dict[str, Any]]:
        """The images operators labelled `label` for this setting, as stored by `record_label`."""
        return [r for r in self.store.list_records(LABEL_KIND) if r.get("setting") == name and r.get("label") == label]

    # ---------------------------------------------------------------- evaluation

    def evaluate(
        self,
        dataset: Dataset,
        *,
        setting: str,
        out_dir: str | Path,
        policy: str | None = None,
        labelled_fail: bool = False,
        progress: Progress = no_progress,
    ) -> EvaluationResult:
        """The industry-standard evaluation: fit on PASS only, score the labelled test set, report.

        With `labelled_fail`, the fixed protocol of `indexing.metric_learning`: FAIL test
        images j with j % 10 in {3, 4} leave the test set and train a metric projection
        (with CutPaste defects on the training images); the report gives the unsupervised
        scorer's metrics as usual and the trained one's under "trained", on the same
        remaining test images, with the cross-validated gate that decides between them.

        The setting (backbone, k) must exist; its nominal set becomes the
        dataset's training images. The threshold is calibrated on the test set
        itself, which is optimistic; ROC-AUC and AP do not depend on it.

        In patch mode the report also holds `heatmaps/` (one PNG overlay per test
        image) and, where the dataset has defect masks (MVTec ground truth; good
        images count as all-zero masks), the pixel ROC-AUC in metrics.json's extra.
        """
        started = time.perf_counter()
        labelled: list = []
        held_out: list[ImageInput] = []
        if labelled_fail:
            from indexing.metric_learning import labelled_fail_split

            labelled, remaining = labelled_fail_split(dataset.test)
            dataset = replace(dataset, test=remaining)
            if self.get_setting(setting).keeps_patches:
                # A patch setting's gate needs PASS images from outside its nominal set (`_train_hybrid`):
                # every 5th training image, at most SYNTHETIC of them, stays out of the bank.
                held = set(range(0, len(dataset.train), 5)[:SYNTHETIC])
                held_out = [image for i, image in enumerate(dataset.train) if i in held]
                dataset = replace(dataset, train=[image for i, image in enumerate(dataset.train) if i not in held])
        self.index(setting, dataset.train, progress=progress)
        test_images = [t.image for t in dataset.test]
        # Patch and fused settings write a heat map per test image, so their full distance grids are needed.
        patch_mode = self.get_setting(setting).keeps_patches
        embedded: list[np.ndarray] = []
        scored = self._scored(setting, test_images, grids=patch_mode, vectors=embedded, progress=progress)
        scores = np.asarray([score for score, _ in scored], dtype=np.float64)
        is_fail = np.array([t.is_fail for t in dataset.test], dtype=bool)
        version = self._require_active(setting)
        # The test images' global embeddings: the report's 2-D map, and the trained scorer's test queries.
        test_vectors = (np.concatenate(embedded) if embedded else
                        self._embedded(self.embedder.backbone_for(version), test_images, progress, "embedding test images"))
        result = calibrate(
            scores[~is_fail], scores[is_fail], policy,
            backbone=version.backbone_identity, collection=self._scored_collection(setting, version),
            scoring=self._unsupervised_scorer(self.get_setting(setting), version),
        )
        self.references.save(setting, result.id, scores[~is_fail])
        result = self.save_calibration(setting, result)
        metrics = compute_metrics(is_fail, scores, threshold=result.threshold)
        configured = self.get_setting(setting)
        heat_files: dict[str, Path] = {}
        pixel_auc: float | None = None
        pixel_pro: float | None = None
        if configured.keeps_patches:
            patch = self.versions.require_patch(version)
            pixel_auc, pixel_pro, heat_files = write_heatmaps(
                Path(out_dir) / "heatmaps", dataset.test, [found for _, found in scored],
                size=self.embedder.backbone_for(version).input_size,
                sigma=PatchConfig.from_dict(patch.get("patch_config")).sigma,
                threshold=result.threshold if configured.scoring == "patch" else None,
                max_pixels=self.max_pixels, progress=progress,
            )
        extra = {
            "dataset": dataset.name,
            "backbone": version.backbone_identity,
            "k": configured.k,
            "scoring": configured.scoring,
            "n_train": len(dataset.train),
            "groups": sorted({t.group for t in dataset.test}),
            "seconds": round(time.perf_counter() - started, 2),
        }
        if configured.keeps_patches:
            extra["pixel_roc_auc"] = pixel_auc
            extra["pixel_pro"] = pixel_pro
            extra["heatmaps"] = len(heat_files)
        trained = None
        if labelled_fail:
            trained = self._trained_evaluation(
                setting, version, held_out or dataset.train[:SYNTHETIC], labelled, test_vectors, is_fail, policy,
                test_images=test_images, k=configured.k, progress=progress,
            )
            extra["labelled_fail"] = len(labelled)
        from indexing.report import write_report  # here: verdicts and workers never load matplotlib

        paths = write_report(
            out_dir,
            title=(
                f"{dataset.name}: patch scoring (PatchCore-style) with {version.backbone}"
                if configured.scoring == "patch"
                else f"{dataset.name}: fused scoring ({result.scoring[len('fused:'):]}) with {version.backbone}"
                if configured.scoring == "fused"
                else f"{dataset.name}: {configured.scoring} kNN (k={configured.k}) with {version.backbone}"
            ),
            is_fail=is_fail,
            scores=scores,
            names=[image.source for image in test_images],
            images=test_images,
            in_sample=True,
            calibration=result,
            metrics=metrics,
            extra=extra,
            trained=trained,
            embeddings=test_vectors,
        )
        if heat_files:
            paths = {**paths, "heatmaps": Path(out_dir) / "heatmaps"}
        return EvaluationResult(
            metrics=metrics, calibration=result, scores=scores, is_fail=is_fail, files=paths, pixel_roc_auc=pixel_auc,
            pixel_pro=pixel_pro, trained=trained,
        )

    def _trained_evaluation(
        self,
        setting: str,
        version: CollectionVersion,
        pass_images: Sequence[ImageInput],
        labelled: Sequence[Any],
        test: np.ndarray,
        is_fail: np.ndarray,
        policy: str | None,
        *,
        test_images: Sequence[ImageInput],
        k: int,
        progress: Progress,
    ) -> dict[str, Any]:
        """The `labelled_fail` protocol: train as a line would (`train`, CutPaste defects made from
        `pass_images`), then score the remaining test images with the trained scorer, whatever its gate said."""
        if not labelled:
            raise InvalidCalibration("--labelled-fail: the test set has no FAIL image to label")
        started = time.perf_counter()
        # The protocol labels what the dataset holds (Hazelnut Toy: 4 images); the gate's own minimum is 2.
        trained = self.train(setting, fail_images=[t.image for t in labelled], pass_images=pass_images,
                             use_feedback=False, policy=policy, min_fail=2, progress=progress)
        scorer = trained.scorer
        if scorer.kind == "metric":
            nearest = self._nearest(version, test, [image.id for image in test_images], k, trained=scorer)
            scores = np.asarray([knn_score([n.distance for n in near], k) for near in nearest])
            described = (f"metric projection ({scorer.head.weight.shape[1]}->{scorer.head.weight.shape[0]}, triplet "
                         f"loss with an outlier class) + kNN (k={k})")
        else:
            scores = np.asarray([score for score, _ in self._scored(setting, test_images, trained=scorer,
                                                                    progress=progress)])
            described = "dense hybrid: patch distance + logistic defect log-odds per patch, both standardised; max"
        result = calibrate(scores[~is_fail], scores[is_fail], policy, backbone=version.backbone_identity,
                           collection=version.collection, scoring=scorer.scoring)
        return {
            "scorer": described,
            "trained_id": scorer.id,
            "metrics": compute_metrics(is_fail, scores, threshold=result.threshold).to_dict(),
            "gate": dict(scorer.gate),
            "n_labelled_fail": len(labelled),
            "n_synthetic": scorer.n_synthetic,
            "n_held_out_pass": scorer.n_nominal if scorer.kind == "hybrid" else 0,
            "scores": [float(x) for x in scores],
            "seconds": round(time.perf_counter() - started, 2),
        }

    # ----------------------------------------------------------------- internals

    def _embedded(
        self, backbone: Backbone, images: Sequence[ImageInput], progress: Progress = no_progress, stage: str = "",
        *, skip_bad: bool = False, alter: Callable[[list[Image.Image], int], list[Image.Image]] | None = None,
    ) -> np.ndarray:
        """Global vectors of many images, decoded batch by batch beside the forward passes; `stage` reports
        progress; `alter(decoded, images done so far)` changes each batch before it is embedded."""
        found = self._per_batch(images, lambda decoded, kept, done: backbone.embed(
            alter(decoded, done) if alter else decoded, batch_size=self.batch_size), progress, stage, skip_bad=skip_bad)
        return np.asarray(found, dtype=np.float32) if found else np.empty((0, backbone.dim), np.float32)

    def _per_batch(
        self, images: Sequence[ImageInput], work: Callable[[list[Image.Image], list[ImageInput], int], Sequence[Any]],
        progress: Progress = no_progress, stage: str = "", *, skip_bad: bool = True,
    ) -> list[Any]:
        """Everything `work(decoded, kept, images done so far)` gives for each decoded batch, in order (the next
        batch decodes beside it); `stage` reports the images done."""
        out: list[Any] = []
        done = 0
        if stage:
            progress(stage, 0, len(images))
        for decoded, kept, _ in self.versions.decoded_batches(images, skip_bad=skip_bad):
            out.extend(work(decoded, kept, done))
            done += len(kept)
            if stage:
                progress(stage, done, len(images))
        return out

    def context(self, name: str) -> "CallContext":
        """What one verdict needs, resolved once: the setting, its active version, the calibration that applies.

        One store call when warm: the setting record (which names the active version
        and the calibration); the version's identity and the calibration never change
        once written, so each is read once per process. Verdicts stay current across
        processes because the setting record is read every time.

        Raises:
            UnknownSetting: no such setting.
            EmptyCollection: it has no version yet, or (patch mode) its version has no patch bank.
        """
        record = self.store.get_record(SETTING_KIND, check_setting_name(name))
        if record is None:
            raise UnknownSetting(name)
        setting = MachineSetting.from_dict(record)
        collection = setting.active or self.store.resolve_alias(alias_name(name))  # a record from before `active`
        version = self.versions.ready(collection) if collection else None
        if version is None:
            raise no_images(name)
        if setting.active_count is not None and setting.active == version.collection:
            version = replace(version, count=setting.active_count)  # the record keeps it current
        else:
            version = replace(version, count=self.store.count(version.collection))  # a record from before
        patch = self.versions.require_patch(version, cached=True) if setting.keeps_patches else None
        # A fused setting's positional record says which parts its score fuses: read once for the whole call.
        positional = self.fused.record(patch) if patch is not None and setting.scoring == "fused" else None
        unsupervised = self._unsupervised_scorer(setting, version, positional=positional)
        calibration = None
        if setting.calibration_id is not None:
            found = self._calibration_once(name, setting.calibration_id)
            if found is not None and not self._stale_reason(setting, version, found, unsupervised=unsupervised):
                calibration = found
        trained = self._trained_of(name, calibration)
        if calibration is not None and calibration.trained_id and trained is None:
            calibration = None  # its scorer's record is gone: its threshold judges nothing this process can score
        return CallContext(setting=setting, version=version, calibration=calibration, patch=patch, trained=trained,
                           scorer=trained.scoring if trained else unsupervised, positional=positional)

    def _unsupervised_scorer(self, setting: MachineSetting, version: CollectionVersion, *,
                             positional: PositionalRecord | None = None) -> str:
        """The scorer a setting's own scores come from, as a calibration records it: its mode, and for a fused
        setting the parts its score fuses now ("fused:patch+positional+global", `indexing.fused`). `positional`:
        the version's positional record, when the caller read it already."""
        if setting.scoring != "fused":
            return setting.scoring
        return scorer_name(parts_of(positional or self.fused.record(self.versions.require_patch(version))))

    def _trained_of(self, name: str, calibration: Calibration | None) -> TrainedScorer | None:
        """The trained scorer a calibration was made with (read once per process), or None."""
        if calibration is None or calibration.trained_id is None:
            return None
        found = self.trained.get(name, calibration.trained_id)
        if found is None:
            log.warning("calibration %s of %r names trained scorer %s, which is not recorded", calibration.id, name,
                        calibration.trained_id)
        return found

    def _trained_in_use(self, name: str) -> TrainedScorer | None:
        """The trained scorer verdicts use now (the usable calibration's), or None: the unsupervised scorer."""
        return self._trained_of(name, self.usable_calibration(name))

    def _calibration_once(self, name: str, calibration_id: str) -> Calibration | None:
        key = (name, calibration_id)
        if key not in self._calibrations:
            record = self.store.get_record(CALIBRATION_KIND, _calibration_key(name, calibration_id))
            if record is None:
                return None
            self._calibrations[key] = Calibration.from_dict({k: v for k, v in record.items() if k != "setting"})
        return self._calibrations[key]

    def _usable_calibration(self, setting: MachineSetting, version: CollectionVersion) -> Calibration | None:
        """The latest calibration, if it was made on this backbone's vectors in the current scoring mode.

        Global and patch scores have different scales, so a calibration made in one
        mode is never applied in the other (`Calibration.scoring` says which).
        """
        calibration = self.latest_calibration(setting.name)
        if calibration is None or self._stale_reason(setting, version, calibration):
            return None
        return calibration

    def _stale_reason(self, setting: MachineSetting, version: CollectionVersion, calibration: Calibration, *,
                      unsupervised: str | None = None) -> str | None:
        """Why `calibration` cannot judge scores of `version` in the setting's mode, or None when it can.
        `unsupervised`: the setting's `_unsupervised_scorer`, when the caller knows it already."""
        reason = calibration.unfit_for(backbone=version.backbone_identity, scoring=setting.scoring)
        if reason is None and setting.scoring == "fused" and calibration.trained_id is None:
            now = unsupervised or self._unsupervised_scorer(setting, version)
            if calibration.scoring != now:
                return (f"calibration {calibration.id} was made on {calibration.scoring} scores and the setting's "
                        f"score is {now} now (the alignment test decided once enough nominal images were indexed); "
                        "calibrate again")
        if reason is None and setting.keeps_patches:
            made = calibration.patch_recipe or self.versions.recorded_recipe(calibration.collection)
            now = self.versions.recorded_recipe(
                collection_name(version.setting, version.backbone, version.version, kind="patch"))
            if made is not None and now is not None and PatchConfig.from_dict(made) != PatchConfig.from_dict(now):
                return (f"calibration {calibration.id} was made on scores of a patch bank built or scored another way "
                        f"than the active version {version.version}'s (the patch features or the local scale changed); "
                        "calibrate again")
        if reason is None:
            return None
        return (f"{reason}: the active version {version.version} holds {version.backbone_identity} vectors and "
                f"the setting scores {setting.scoring}; calibrate again")

    def _scored_collection(self, name: str, version: CollectionVersion) -> str:
        """The collection a score of this setting comes from: the patch bank in patch and fused mode."""
        if self.get_setting(name).keeps_patches:
            return self.versions.require_patch(version)["collection"]
        return version.collection

    def _patch_results(
        self,
        name: str,
        version: CollectionVersion,
        images: Sequence[ImageInput],
        decoded: Sequence[Image.Image],
        *,
        neighbours: int,
        grids: bool = False,
        maps: bool = False,
        trained: TrainedScorer | None = None,
    ) -> list[PatchResult]:
        patch = self.versions.require_patch(version)
        return self.patches.score(
            name, patch["collection"], PatchConfig.from_dict(patch.get("patch_config")),
            self.embedder.backbone_for(version), images, decoded,
            neighbours=neighbours, grids=grids, maps=maps, batch_size=self.batch_size, hybrid=_hybrid(trained),
        )

    def _nearest(
        self, version: CollectionVersion, vectors: np.ndarray, ids: Sequence[str], k: int,
        *, trained: TrainedScorer | None = None,
    ) -> list[list[Neighbour]]:
        """The k nearest nominal images of each vector, its own image left out (leave-one-out when it is stored).

        With a `trained` scorer, nearest in its projection of the version's embeddings (`indexing.training`).
        """
        if trained is not None:
            hits = self.trained.bank(version, trained).search(vectors, k + 1)
        else:
            hits = self.store.search(version.collection, vectors, k + 1)
        if hits and not any(hits):
            raise no_images(version.setting)  # an empty version (every image deleted): nothing to compare with
        return [without_self(found, own, k) for own, found in zip(ids, hits)]

    def _require_active(self, name: str) -> CollectionVersion:
        self.get_setting(name)
        version = self.versions.active(name)
        if version is None or self.store.count(version.collection) == 0:
            raise no_images(name)
        return version

    def _lock(self, name: str):  # noqa: ANN202 - a context manager
        """The lock of one setting's records, numbering and alias."""
        return self.versions.lock(name)

    def _embed_for(self, version: CollectionVersion, images: Sequence[ImageInput]) -> np.ndarray:
        if not images:
            raise BadImage("request", "no images given")
        decoded, _, _ = self.embedder.decode_batch(images, skip_bad=False)
        return self.embedder.backbone_for(version).embed(decoded, batch_size=self.batch_size)

    def _validate(self, images: Sequence[ImageInput], progress: Progress) -> None:
        """Decode every image once so a bad one is refused before anything is written."""
        bad = []
        for done, image in enumerate(images, start=1):
            try:
                decode(image, max_pixels=self.max_pixels)
            except BadImage as error:
                bad.append(error)
            if done % 64 == 0 or done == len(images):
                progress("checking images", done, len(images))
        if bad:
            listed = "; ".join(f"{error.source}: {error.reason}" for error in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            if len(bad) == 1:
                raise BadImage(bad[0].source, f"{bad[0].reason}; nothing was indexed")
            raise BadImage(f"{len(bad)} images", f"{listed}{more}; nothing was indexed")


@dataclass(frozen=True)
class CallContext:
    """One call's view of a setting (`NominalService.context`): read once, used throughout the call."""

    setting: MachineSetting
    version: CollectionVersion  # `count` from the setting record (kept with `active`)
    calibration: Calibration | None  # the active calibration, if it fits the version and scoring mode
    patch: dict[str, Any] | None  # the patch bank's version record, in patch mode
    trained: TrainedScorer | None = None  # the trained scorer the calibration was made with
    # Which scorer answers, as `Calibration.scoring` names it: "global", "patch", "fused:<parts>" or a trained one's.
    scorer: str = "global"
    positional: PositionalRecord | None = None  # a fused setting's positional record (`indexing.positional`)


def _hybrid(trained: TrainedScorer | None) -> Any:
    """The DenseHybrid head patch scoring combines distances with, when the scorer in use is one."""
    return trained.head if trained is not None and trained.kind == "hybrid" else None


def _cells_in(box: tuple[int, int, int, int], size: tuple[int, int], cells: int) -> np.ndarray:
    """Indices of a square patch grid of `cells` cells whose centres fall inside `box` (x, y, w, h) of an
    image of `size` (width, height), the image squashed to the square backbone input."""
    side = int(round(np.sqrt(cells)))
    centres = (np.arange(side) + 0.5) / side
    xs, ys = centres * size[0], centres * size[1]
    x, y, w, h = box
    inside_rows = (ys >= y) & (ys < y + h)
    inside_cols = (xs >= x) & (xs < x + w)
    return np.flatnonzero(np.outer(inside_rows, inside_cols).ravel())


def _calibration_key(setting: str, calibration_id: str) -> str:
    return f"{setting}__{calibration_id}"


def _label_key(setting: str, sha256: str) -> str:
    return f"{setting}__{sha256}"
