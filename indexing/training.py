"""Trained scorers: what a setting learns from its labelled defects, kept beside its calibrations.

The learning itself is `indexing.metric_learning` (a projection of the backbone's
embeddings trained with an outlier class, and the gate that decides whether it
helps). This module is what a line runs:

- `TrainedScorer`: one trained projection, its gate, and what it was trained on,
  recorded once (kind `trained_scorer`) and never changed.
- `TrainedScorers`: those records, read once per process, and each one's projected
  nominal bank (the active version's embeddings through the projection), which the
  kNN searches instead of the store.

Which scorer answers is the calibration's business, not a switch of its own: a
training that passes the gate calibrates a threshold on the trained scores
(`Calibration.scoring` = "trained:<id>") and puts that calibration in use. Verdicts
then use the scorer their calibration was made with, so a trained scorer goes live,
is rolled back (activate an earlier calibration) and goes stale (a re-index to another
backbone) exactly as a threshold does. A projection of one backbone's embeddings
applies to any version of that backbone: after a re-index or a rollback to the same
backbone it scores the new nominal set.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexing.calibration import HYBRID_PREFIX, TRAINED_PREFIX
from indexing.errors import BadImage
from indexing.image_store import ImageRef, ImageStore
from indexing.images import ImageInput
from indexing.metric_learning import HybridHead, MetricHead
from indexing.settings import CollectionVersion, utc_now
from indexing.store.base import Neighbour, Point, VectorStore

TRAINED_KIND = "trained_scorer"
# Distinct labelled FAIL images a training needs at the least: the gate cross-validates over them (5 folds).
MIN_FAIL = 5
# A patch setting's (DenseHybrid) gate needs at least this many PASS images from outside its nominal set.
MIN_HELD_OUT_PASS = 10
# The gate cross-validates on at most this many nominal images (its fold searches are all-pairs).
GATE_NOMINAL = 2000
# Nominal embeddings a metric projection is trained on, at most (a uniform sample of larger sets).
NOMINAL_SAMPLE = 4096
# PASS images CutPaste defects are made from, at most.
SYNTHETIC = 300
# Queries searched against a projected bank at once (bounds the similarity matrix).
_CHUNK = 256


@dataclass(frozen=True)
class TrainedScorer:
    """A metric projection trained on a setting's nominal images and labelled defects, and its gate."""

    id: str
    setting: str
    backbone: str  # the identity of the backbone whose embeddings (or patches) it scores
    head: MetricHead | HybridHead
    gate: dict[str, Any]  # `metric_learning.Gate.to_dict()`
    n_nominal: int
    n_fail: int
    n_synthetic: int
    steps: int
    trained_on: str  # the collection version it was trained on
    created_at: str
    seconds: float
    # Out-of-fold scores of nominal images from the gate (heads that never saw them): the trained
    # scorer's nominal reference, since its own training images score too low against it.
    reference: tuple[float, ...] = ()

    @property
    def kind(self) -> str:
        """"metric" (a projection of global embeddings) or "hybrid" (DenseHybrid over patches)."""
        return "hybrid" if isinstance(self.head, HybridHead) else "metric"

    @property
    def scoring(self) -> str:
        """The scorer's name in a calibration's `scoring` and a verdict's `scorer`."""
        return f"{HYBRID_PREFIX if self.kind == 'hybrid' else TRAINED_PREFIX}{self.id}"

    @property
    def passed(self) -> bool:
        return bool(self.gate["active"])

    def summary(self) -> dict[str, Any]:
        """Everything but the weights: what the API, the CLI and a job's result show."""
        return {
            "id": self.id, "kind": self.kind, "scoring": self.scoring, "backbone": self.backbone,
            "projection": (f"{self.head.weight.shape[1]}->{self.head.weight.shape[0]}" if isinstance(self.head, MetricHead)
                           else f"{self.head.coef.shape[0]}->1 (patch log-odds)"),
            "gate": dict(self.gate), "passed": self.passed, "n_nominal": self.n_nominal, "n_fail": self.n_fail,
            "n_synthetic": self.n_synthetic, "steps": self.steps, "trained_on": self.trained_on,
            "created_at": self.created_at, "seconds": self.seconds,
        }

    def to_record(self) -> dict[str, Any]:
        return {**self.summary(), "setting": self.setting, "head": base64.b64encode(self.head.to_bytes()).decode(),
                "reference": list(self.reference)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainedScorer:
        return cls(
            id=str(record["id"]), setting=str(record["setting"]), backbone=str(record["backbone"]),
            head=(HybridHead if record.get("kind") == "hybrid" else MetricHead).from_bytes(base64.b64decode(record["head"])),
            gate=dict(record["gate"]),
            n_nominal=int(record["n_nominal"]), n_fail=int(record["n_fail"]),
            n_synthetic=int(record["n_synthetic"]), steps=int(record["steps"]), trained_on=str(record["trained_on"]),
            created_at=str(record["created_at"]), seconds=float(record["seconds"]),
            reference=tuple(float(x) for x in record.get("reference", ())),
        )

    @classmethod
    def new(cls, **fields: Any) -> TrainedScorer:
        return cls(id=uuid.uuid4().hex[:12], created_at=utc_now(), **fields)


class ProjectedBank:
    """A version's nominal embeddings through one projection, searched exactly in memory."""

    def __init__(self, points: Sequence[Point], head: MetricHead) -> None:
        self.ids = [p.id for p in points]
        self.payloads = [p.payload for p in points]
        self.vectors = head.project(np.stack([p.vector for p in points])) if points else np.empty((0, 1), np.float32)
        self.head = head

    def search(self, vectors: np.ndarray, k: int) -> list[list[Neighbour]]:
        """The k nearest nominal images of each (unprojected) vector, by cosine distance in the projected space."""
        if not self.ids:
            return [[] for _ in range(len(vectors))]
        k = min(k, len(self.ids))
        found: list[list[Neighbour]] = []
        queries = self.head.project(vectors)
        for start in range(0, len(queries), _CHUNK):
            similarity = queries[start : start + _CHUNK] @ self.vectors.T
            nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            for row, picked in zip(similarity, nearest):
                ordered = picked[np.argsort(-row[picked], kind="stable")]
                found.append([
                    Neighbour(id=self.ids[i], distance=float(min(max(1.0 - row[i], 0.0), 2.0)), payload=self.payloads[i])
                    for i in ordered
                ])
        return found


class TrainedScorers:
    """A setting's trained scorers in the store's records, and the projected bank of the one in use.

    Records never change once written, so each is read once per process. The bank is
    rebuilt when the version or its size changes (an upload, a deletion, a re-index),
    and one is held per setting.
    """

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self._scorers: dict[tuple[str, str], TrainedScorer] = {}
        self._banks: dict[str, tuple[tuple[str, int, str], ProjectedBank]] = {}
        self._lock = threading.Lock()

    def save(self, scorer: TrainedScorer) -> None:
        self.store.put_record(TRAINED_KIND, _key(scorer.setting, scorer.id), scorer.to_record())

    def get(self, setting: str, scorer_id: str) -> TrainedScorer | None:
        key = (setting, scorer_id)
        if key not in self._scorers:
            record = self.store.get_record(TRAINED_KIND, _key(setting, scorer_id))
            if record is None:
                return None
            self._scorers[key] = TrainedScorer.from_record(record)
        return self._scorers[key]

    def list(self, setting: str) -> list[TrainedScorer]:
        """The setting's trained scorers, newest first."""
        found = [TrainedScorer.from_record(r) for r in self.store.list_records(TRAINED_KIND) if r.get("setting") == setting]
        return sorted(found, key=lambda s: s.created_at, reverse=True)

    def delete_all(self, setting: str) -> None:
        for record in self.store.list_records(TRAINED_KIND):
            if record.get("setting") == setting:
                self.store.delete_record(TRAINED_KIND, _key(setting, record["id"]))
        self._scorers = {key: value for key, value in self._scorers.items() if key[0] != setting}
        self._banks.pop(setting, None)

    def bank(self, version: CollectionVersion, scorer: TrainedScorer) -> ProjectedBank:
        """The version's nominal embeddings through the scorer's projection, built once per version and size."""
        assert isinstance(scorer.head, MetricHead), "a hybrid scorer searches the patch bank, not a projected one"
        key = (version.collection, version.count, scorer.id)
        with self._lock:
            held = self._banks.get(version.setting)
            if held is not None and held[0] == key:
                return held[1]
            bank = ProjectedBank(list(self.store.scroll(version.collection, with_vectors=True)), scorer.head)
            self._banks[version.setting] = (key, bank)
            return bank


def _key(setting: str, scorer_id: str) -> str:
    return f"{setting}__{scorer_id}"


def nominal_pixels(images: ImageStore | None, points: Sequence[Point], limit: int) -> Iterator[ImageInput]:
    """Up to `limit` nominal images this process can read back (uploads kept in the image store)."""
    if images is None:
        return
    given = 0
    for point in points:
        if given >= limit:
            return
        try:
            yield images.load(ImageRef(sha256=str(point.payload.get("sha256")), source=str(point.payload.get("source"))))
            given += 1
        except (BadImage, KeyError):
            continue


__all__ = [
    "GATE_NOMINAL", "MIN_FAIL", "MIN_HELD_OUT_PASS", "NOMINAL_SAMPLE", "SYNTHETIC", "TRAINED_KIND", "ProjectedBank", "TrainedScorer",
    "TrainedScorers", "nominal_pixels",
]
