"""Learning from labelled defects: the fixed protocol, the trained scorer's report, and the gate, on real images
with the real pretrained backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing.datasets import load_dataset
from indexing.images import decode
from indexing.metric_learning import cut_paste, gate, labelled_fail_split
from indexing.service import BackbonePool, NominalService


def test_the_protocol_never_lets_a_labelled_fail_image_into_the_test_set(hazelnut: Path) -> None:
    dataset = load_dataset(hazelnut, "mvtec")
    labelled, remaining = labelled_fail_split(dataset.test)
    fails = [t for t in dataset.test if t.is_fail]
    # FAIL images j = 3, 4, 13, 14 of the 17, in the MVTec layout's path order.
    assert [t.image.source for t in labelled] == [fails[j].image.source for j in (3, 4, 13, 14)]
    assert not {t.image.sha256 for t in labelled} & {t.image.sha256 for t in remaining}
    assert [t for t in dataset.test if not t.is_fail] == [t for t in remaining if not t.is_fail]
    assert len(labelled) + len(remaining) == len(dataset.test)


def test_an_evaluation_with_labelled_fail_reports_both_scorers_on_the_same_remaining_images(
    service: NominalService, hazelnut: Path, tmp_path: Path
) -> None:
    dataset = load_dataset(hazelnut, "mvtec")
    labelled, _ = labelled_fail_split(dataset.test)
    service.put_setting("evaluation", scoring="global")  # a metric projection: the global mode's trained scorer
    result = service.evaluate(dataset, setting="evaluation", out_dir=tmp_path / "report", labelled_fail=True)

    document = json.loads((tmp_path / "report" / "metrics.json").read_text())
    scored = {row["name"] for row in document["images"]}
    assert not scored & {t.image.source for t in labelled}, "a labelled FAIL image was scored as a test image"
    assert result.metrics.n_fail == 17 - len(labelled) and result.metrics.n_pass == 6
    trained = document["trained"]
    assert set(trained["metrics"]) == set(document["metrics"])  # the same metric names
    assert trained["metrics"]["n_fail"] == result.metrics.n_fail and len(trained["scores"]) == len(scored)
    assert trained["gate"]["n_fail"] == len(labelled) and isinstance(trained["gate"]["active"], bool)
    assert document["extra"]["labelled_fail"] == len(labelled)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Trained scorer" in markdown
    # The literature's statistics: type I/II errors with Wilson intervals, distance statistics, a t-SNE map.
    statistics = document["statistics"]
    assert statistics["intra_class_distance"]["n"] == 6 and statistics["inter_class_distance"]["n"] == 17 - len(labelled)
    low, high = statistics["type_ii_error"]["ci95"]
    assert 0.0 <= low <= statistics["type_ii_error"]["rate"] <= high <= 1.0
    assert result.files["embedding_map"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![t-SNE map of the test embeddings](embedding_map.png)" in markdown


@pytest.fixture(scope="module")
def elpv_poly_embeddings(pool: BackbonePool) -> dict[str, np.ndarray]:
    """Real ELPV poly cells: 120 nominal training cells, 30 defective test cells, 60 CutPaste cells."""
    dataset = load_dataset("elpv", "elpv", subset="poly")
    backbone = pool.get("efficientnet_lite0")
    train = [decode(image) for image in dataset.train[:120]]
    fails = [decode(t.image) for t in dataset.test if t.is_fail][:30]
    return {
        "nominal": backbone.embed(train),
        "fails": backbone.embed(fails),
        "synthetic": backbone.embed(cut_paste(train[:60])),
    }


def test_the_gate_lets_a_head_answer_that_helps_and_refuses_one_trained_on_shuffled_labels(
    elpv_poly_embeddings: dict[str, np.ndarray],
) -> None:
    nominal, fails, synthetic = (elpv_poly_embeddings[key] for key in ("nominal", "fails", "synthetic"))
    helped = gate(nominal, fails, synthetic, steps=100)
    assert helped.active, helped.reason
    assert helped.trained_ap > helped.unsupervised_ap + 0.1

    # The same images with the FAIL label on a random 30 of them: nothing to learn.
    pool = np.concatenate([nominal, fails])
    order = np.random.default_rng(1).permutation(len(pool))
    shuffled = gate(pool[order[30:]], pool[order[:30]], synthetic, steps=100)
    assert not shuffled.active, shuffled.reason
    assert "does not measurably beat" in shuffled.reason
