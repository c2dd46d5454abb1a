"""Re-index a machine setting from a source into a new version, checked, then switched to in one step.

The body of a re-index job, whoever runs it:

1. read the source: a folder, a glob, or a manifest CSV (a ``path`` column,
   relative to the CSV's folder, plus metadata columns);
2. `begin_version`: version N+1, empty and not active; inspections go on being
   answered from version N;
3. embed and upsert it batch by batch (done/total on the job; bad images skipped
   and listed with their reason). Who embeds is a `BatchEmbedder`: this process
   (`LocalEmbedder`), or Celery workers (`workers/runner.py`);
4. check it: one point per distinct good image, and a few sample queries
   answered;
5. `activate`: one atomic alias move; then delete old versions beyond `keep`.

A patch-scoring setting's version also holds a patch bank. Its patch features are
computed where the bank is written, by `LocalEmbedder` from the batch it already
decoded: workers return global vectors only (patch features of a batch are tens
of MB, too much for the result backend), so such a re-index runs its forward
passes in the orchestrating process.

A cancelled or failed re-index deletes its half-built version and leaves the
alias where it was. Point ids come from image content, so a batch embedded
twice (a redelivered task) overwrites its points instead of duplicating them.

One re-index per setting at a time, in every process that shares the store: a
re-index holds the setting's `reindex:` lock (`RedisLocks` on a shared Qdrant
server), and a second one waits for it (its job says so, and can be cancelled).
Holding it, a re-index first deletes versions still marked building, which a
re-index whose process died leaves behind. Images uploaded while a version is
built go into it as well (`NominalService.index`), so the switch loses none.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import Any, Protocol

import numpy as np

from indexing.errors import BadImage, VersionCheckFailed
from indexing.images import ImageInput
from indexing.jobs import JobProgress
from indexing.prefetch import prefetched
from indexing.embedder import EmbeddedBatch, Embedder, Skipped
from indexing.service import NominalService
from indexing.settings import CollectionVersion
from indexing.sources import SourceItem, read_manifest, read_source, read_source_within  # noqa: F401 - re-exported
from indexing.store.base import Point
from indexing.versions import Versions

# Older ready versions kept for `rollback` after a re-index switches.
DEFAULT_KEEP_VERSIONS = 2
# Stored points queried before the switch to check that the new version answers.
SAMPLE_QUERIES = 3


def batches_of(items: Sequence[SourceItem], size: int) -> list[list[SourceItem]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class BatchEmbedder(Protocol):
    """Turns batches of source items into points, here or on workers.

    `embed` yields one `EmbeddedBatch` per batch, in any order, and skips
    nothing silently: an unreadable image is a `Skipped`. When `stores_points`
    is True the points were already written to the version's collection (workers
    on a Qdrant server) and carry no vectors; otherwise the caller upserts them.
    Closing the iterator early (cancel, failure) abandons the batches not yet done.
    """

    stores_points: bool
    # True when `embed` also fills the version's patch bank (if it has one).
    builds_patch_bank: bool

    def embed(self, version: CollectionVersion, batches: Sequence[Sequence[SourceItem]]) -> Iterator[EmbeddedBatch]: ...


def embed_items(embedder: Embedder, version: CollectionVersion, items: Sequence[SourceItem]) -> EmbeddedBatch:
    """Read, decode and embed one batch with `version`'s backbone; nothing is stored. Worker tasks call this."""
    loaded, skipped = load_items(items)
    if not loaded:
        return EmbeddedBatch(points=[], skipped=skipped)
    embedded = embedder.embed_points(version.setting, embedder.backbone_for(version), loaded, skip_bad=True)
    return EmbeddedBatch(points=embedded.points, skipped=skipped + embedded.skipped)


def load_items(items: Sequence[SourceItem]) -> tuple[list[ImageInput], list[Skipped]]:
    loaded, skipped = [], []
    for item in items:
        try:
            loaded.append(item.load())
        except BadImage as error:
            skipped.append(Skipped(source=error.source, reason=error.reason))
    return loaded, skipped


class LocalEmbedder:
    """Embeds in this process; the next batch is read and decoded on a thread while the model runs."""

    stores_points = False
    builds_patch_bank = True

    def __init__(self, versions: Versions) -> None:
        self.versions = versions

    def embed(self, version: CollectionVersion, batches: Sequence[Sequence[SourceItem]]) -> Iterator[EmbeddedBatch]:
        embedder = self.versions.embedder
        backbone = embedder.backbone_for(version)

        def read(items: Sequence[SourceItem]) -> tuple[Any, list[Skipped]]:
            loaded, unreadable = load_items(items)
            return embedder.decode_batch(loaded, skip_bad=True), unreadable

        bank = self.versions.bank_extension(version)
        for decoded, unreadable in prefetched(read, batches):
            # One forward pass for the embeddings and the patch bank's maps where the images are scored whole.
            embedded = embedder.embed_decoded(version.setting, backbone, decoded,
                                              maps=bank.wants_maps(decoded))
            # Before the batch's global points are upserted: the bank skips images already in the version.
            bank.add(decoded, maps=embedded.maps)
            yield EmbeddedBatch(points=embedded.points, skipped=unreadable + embedded.skipped)
        bank.close()  # after the last batch, before the version is checked and switched to


def reindex(
    service: NominalService,
    progress: JobProgress,
    *,
    setting: str,
    source: str,
    backbone: str | None = None,
    embedder: BatchEmbedder | None = None,
    keep: int = DEFAULT_KEEP_VERSIONS,
    batch_size: int | None = None,
    roots: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build a new version of `setting` from `source`, check it, and switch to it.

    Args:
        service: the setting's service; the new version is built through its `versions`.
        progress: the job's progress (done/total, errors, cancel requests).
        setting: an existing machine setting.
        source: folder, glob or manifest CSV (see `read_source`).
        backbone: embed with this backbone instead of the setting's (the setting
            switches to it with the version).
        embedder: who embeds; this process by default.
        keep: older ready versions kept for rollback after the switch.
        batch_size: images per batch (per task on workers); the service's by default.
        roots: the directories the source was allowed to name (an HTTP client's
            `NOMINAL_SOURCE_ROOTS`), None for no limit. The source is listed again
            inside them here, and each item carries them to whichever process
            opens its file, where they are checked on the file actually opened.

    Returns:
        The job's result: {"version", "collection", "indexed", "skipped", "count", "pruned"}.

    Raises:
        NoImages, UnknownSetting, VersionCheckFailed, JobCancelled: nothing switched,
            the half-built version deleted.
    """
    items = read_source(source, roots)
    service.get_setting(setting)
    versions = service.versions
    progress.start(len(items))
    embedder = embedder or LocalEmbedder(versions)

    def waiting() -> None:
        progress("waiting for another re-index of this setting to finish", 0, len(items))  # raises on cancel

    # One re-index per setting at a time, across every process sharing the store (see indexing/locks.py).
    with versions.locks.hold(f"reindex:{setting}", waiting=waiting):
        for stale in versions.list(setting):
            if stale.state == "building":  # left by a re-index whose process died: the lock says none runs
                versions.discard(stale)
        version = versions.begin(service.get_setting(setting), backbone)
        if versions.has_patch_bank(version) and not embedder.builds_patch_bank:
            embedder = LocalEmbedder(versions)  # see the module docstring: patch features are made where they are written
        try:
            ids, skipped = _build(versions, version, items, embedder, progress, batch_size or versions.embedder.batch_size)
            progress.report_errors([{"source": s.source, "reason": s.reason} for s in skipped])
            _check(versions, version, ids)
            ready = versions.activate(version, expected_count=len(ids))
        except BaseException:
            versions.discard(version)
            raise
        pruned = versions.prune(setting, keep=keep)
    return {
        "version": ready.version,
        "collection": ready.collection,
        "backbone": ready.backbone,
        "indexed": len(ids),
        "skipped": len(skipped),
        "count": ready.count,
        "pruned": [v.version for v in pruned],
    }


def _build(
    versions: Versions,
    version: CollectionVersion,
    items: Sequence[SourceItem],
    embedder: BatchEmbedder,
    progress: JobProgress,
    batch_size: int,
) -> tuple[set[str], list[Skipped]]:
    ids: set[str] = set()
    skipped: list[Skipped] = []
    done = 0
    progress("embedding", 0, len(items))
    with closing(iter(embedder.embed(version, batches_of(items, batch_size)))) as stream:
        for batch in stream:
            if batch.points and not embedder.stores_points:
                versions.add_points(version, batch.points)
            ids.update(point.id for point in batch.points)
            skipped.extend(batch.skipped)
            done += len(batch.points) + len(batch.skipped)
            progress("embedding", done, len(items))  # raises JobCancelled when asked to stop
    return ids, skipped


def _check(versions: Versions, version: CollectionVersion, ids: set[str]) -> None:
    """One point per distinct good image, and a few stored vectors find neighbours."""
    if not ids:
        raise VersionCheckFailed(
            f"no image of the source could be used for {version.setting!r}: nothing switched (see the job's errors)"
        )
    # Images uploaded while the version is built are added to it too (`NominalService.index`), so it
    # may hold more points than the source gave, never fewer: every id of the source must be there.
    present = versions.points_present(version, ids)
    if present != len(ids):
        raise VersionCheckFailed(
            f"version {version.version} of {version.setting!r} holds {present} of the {len(ids)} distinct images "
            "embedded: not switched; re-run the re-index"
        )
    answered = versions.sample_queries_answered(version, sorted(ids)[:SAMPLE_QUERIES])
    if answered < min(SAMPLE_QUERIES, len(ids)):
        raise VersionCheckFailed(
            f"sample queries on version {version.version} of {version.setting!r} found nothing: not switched; "
            "re-run the re-index"
        )


# --- points across processes -------------------------------------------------------------------------
# Workers hand embedded batches back through the Celery result backend as JSON: vectors as
# base64 float32 (a 32-image batch of 1280-d vectors is about 220 kB), never the images.


def batch_to_dict(batch: EmbeddedBatch) -> dict[str, Any]:
    return {
        "points": [
            {
                "id": p.id,
                "vector": base64.b64encode(np.asarray(p.vector, dtype="<f4").tobytes()).decode("ascii"),
                "payload": p.payload,
            }
            for p in batch.points
        ],
        "skipped": [{"source": s.source, "reason": s.reason} for s in batch.skipped],
    }


def batch_from_dict(data: dict[str, Any]) -> EmbeddedBatch:
    points = [
        Point(
            id=p["id"],
            vector=np.frombuffer(base64.b64decode(p["vector"]), dtype="<f4").astype(np.float32),
            payload=p["payload"],
        )
        for p in data["points"]
    ]
    return EmbeddedBatch(points=points, skipped=[Skipped(**s) for s in data["skipped"]])
