"""Trained scorers as records and banks: what a restart reads back, and what the projected kNN answers."""

from __future__ import annotations

import numpy as np

from indexing.calibration import scoring_mode
from indexing.metric_learning import HybridHead, MetricHead
from indexing.store.base import Point
from indexing.training import ProjectedBank, TrainedScorer


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _scorer(head: MetricHead | HybridHead) -> TrainedScorer:
    return TrainedScorer.new(
        setting="line-3", backbone="efficientnet_lite0@sha256:0", head=head, gate={"active": True}, n_nominal=10,
        n_fail=3, n_synthetic=5, steps=100, trained_on="line-3__v1", seconds=1.5, reference=(0.1, 0.2),
    )


def test_a_trained_scorer_reads_back_equal_from_its_record_and_names_its_mode() -> None:
    rng = np.random.default_rng(0)
    metric = _scorer(MetricHead(weight=rng.normal(size=(8, 16)).astype(np.float32)))
    hybrid = _scorer(HybridHead(coef=rng.normal(size=16).astype(np.float32), intercept=0.5, d_mean=1.0, d_std=2.0,
                                l_mean=-1.0, l_std=3.0))
    for scorer, mode in ((metric, "global"), (hybrid, "patch")):
        back = TrainedScorer.from_record(scorer.to_record())
        assert back.summary() == scorer.summary() and back.reference == scorer.reference
        assert scoring_mode(back.scoring) == mode and back.scoring.endswith(scorer.id)
        patches = rng.normal(size=(5, 16)).astype(np.float32)
        if isinstance(scorer.head, MetricHead):
            assert np.array_equal(back.head.weight, scorer.head.weight)
        else:
            distances = rng.random(5)
            assert np.array_equal(back.head.combine(distances, patches), scorer.head.combine(distances, patches))


def test_the_projected_bank_answers_the_exact_nearest_neighbours_in_the_projected_space() -> None:
    rng = np.random.default_rng(1)
    head = MetricHead(weight=rng.normal(size=(6, 12)).astype(np.float32))
    points = [Point(id=f"p{i}", vector=v, payload={"source": f"{i}.png"}) for i, v in enumerate(_unit(rng.normal(size=(600, 12))))]
    queries = _unit(rng.normal(size=(300, 12)))  # more than one chunk of queries
    found = ProjectedBank(points, head).search(queries, 4)
    bank, projected = head.project(np.stack([p.vector for p in points])), head.project(queries)
    expected = np.argsort(-(projected @ bank.T), axis=1, kind="stable")[:, :4]
    assert [[n.id for n in row] for row in found] == [[f"p{i}" for i in row] for row in expected]
    distances = np.asarray([[n.distance for n in row] for row in found])
    assert np.all(np.diff(distances, axis=1) >= 0) and found[0][0].payload == {"source": f"{expected[0, 0]}.png"}
