"""Metrics against sklearn as the oracle, and the report files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from indexing.calibration import calibrate
from indexing.errors import NoImages
from indexing.evaluation import Metrics, compute_metrics
from indexing.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = {
    "metrics": "metrics.json",
    "pr_curve": "pr_curve.png",
    "roc_curve": "roc_curve.png",
    "score_histogram": "score_histogram.png",
    "confusion_matrix": "confusion_matrix.png",
    "report": "report.md",
}


def _data(n_pass: int = 300, n_fail: int = 60, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(0, 1, n_pass), rng.normal(1.5, 1, n_fail)]
    return np.r_[np.zeros(n_pass, bool), np.ones(n_fail, bool)], scores


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_metrics_match_sklearn_at_a_given_threshold() -> None:
    y, s = _data()
    threshold = 1.0
    m = compute_metrics(y, s, threshold)
    pred = s >= threshold
    assert m.roc_auc == pytest.approx(roc_auc_score(y, s))
    assert m.average_precision == pytest.approx(average_precision_score(y, s))
    assert m.precision == pytest.approx(precision_score(y, pred))
    assert m.recall == pytest.approx(recall_score(y, pred))
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred))
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m.confusion == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert m.fpr == pytest.approx(fp / 300)
    assert (m.n_pass, m.n_fail, m.threshold) == (300, 60, threshold)


def test_f1_max_and_fpr_at_95_tpr_match_brute_force() -> None:
    y, s = _data(n_pass=100, n_fail=30)
    m = compute_metrics(y, s)
    f1_every = [f1_score(y, s >= t) for t in np.unique(s)]
    assert m.f1_max == pytest.approx(max(f1_every))
    assert f1_score(y, s >= m.threshold_f1_max) == pytest.approx(m.f1_max)
    fpr, tpr, _ = roc_curve(y, s)
    assert m.fpr_at_95_tpr == pytest.approx(fpr[tpr >= 0.95].min())
    # No threshold given: the F1-max one is used, and a note says it flatters.
    assert m.threshold == m.threshold_f1_max
    assert any("flatters" in note for note in m.notes)


def test_only_pass_images_gives_none_and_a_note() -> None:
    s = np.linspace(0, 1, 50)
    m = compute_metrics([False] * 50, s)
    assert m.roc_auc is None and m.average_precision is None and m.f1_max is None
    assert m.precision is None and m.recall is None and m.balanced_accuracy is None
    assert m.fpr_at_95_tpr is None and m.threshold is None and m.confusion is None
    assert any("no FAIL images" in note for note in m.notes)
    at = compute_metrics([False] * 50, s, threshold=0.9)
    assert at.fpr == pytest.approx(np.mean(s >= 0.9))
    assert at.confusion == {"tp": 0, "fp": int(np.sum(s >= 0.9)), "tn": int(np.sum(s < 0.9)), "fn": 0}


def test_only_fail_images() -> None:
    m = compute_metrics([True] * 5, [0.1, 0.2, 0.3, 0.4, 0.5], threshold=0.3)
    assert m.roc_auc is None and m.fpr_at_95_tpr is None and m.fpr is None
    assert m.recall == pytest.approx(0.6)
    assert any("no PASS images" in note for note in m.notes)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        compute_metrics([True, False], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([True, False], [0.1, float("nan")])
    with pytest.raises(NoImages):
        compute_metrics([], [])


def _assert_report_files(paths: dict[str, Path], out: Path) -> None:
    assert set(paths) == set(REPORT_FILES)
    for key, name in REPORT_FILES.items():
        assert paths[key] == out / name and paths[key].is_file()
    for key in ("pr_curve", "roc_curve", "score_histogram", "confusion_matrix"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
        with Image.open(paths[key]) as image:
            image.verify()
    # Nothing half-written is left behind.
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES.values())


def test_write_report(tmp_path: Path) -> None:
    y, s = _data(n_pass=40, n_fail=12)
    names = [f"part_{i:03d}.png" for i in range(len(s))]
    cal = calibrate(s[~y], s[y], "precision>=0.8", backbone="resnet50", collection="line-1")
    m = compute_metrics(y, s, cal.threshold)
    out = tmp_path / "new" / "report"
    paths = write_report(out, title="Line 1 | toy", is_fail=y, scores=s, names=names,
                         calibration=cal, metrics=m, extra={"backbone": "resnet50", "k": np.int64(3)})
    _assert_report_files(paths, out)

    document = _strict_json(paths["metrics"])
    assert document["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert document["calibration"]["id"] == cal.id
    assert document["extra"] == {"backbone": "resnet50", "k": 3}
    assert [row["name"] for row in document["images"]] == names
    assert [row["is_fail"] for row in document["images"]] == y.tolist()
    assert [row["predicted_fail"] for row in document["images"]] == (s >= cal.threshold).tolist()

    markdown = paths["report"].read_text(encoding="utf-8")
    assert markdown.startswith("# Line 1 | toy")
    assert "precision>=0.8" in markdown and cal.id in markdown
    for name in REPORT_FILES.values():
        if name.endswith(".png"):
            assert f"]({name})" in markdown
    worst_pass = names[int(np.argmax(np.where(y, -np.inf, s)))]
    worst_fail = names[int(np.argmin(np.where(y, s, np.inf)))]
    assert worst_pass in markdown.split("Highest-scoring PASS")[1].split("##")[0]
    assert worst_fail in markdown.split("Lowest-scoring FAIL")[1].split("##")[0]


def test_write_report_with_only_pass_images(tmp_path: Path) -> None:
    s = np.linspace(0.0, 1.0, 30)
    y = np.zeros(30, bool)
    cal = calibrate(s, [], None, backbone="b", collection="c")
    m = compute_metrics(y, s, cal.threshold)
    paths = write_report(tmp_path, title="only pass", is_fail=y, scores=s,
                         names=[f"{i}.png" for i in range(30)], calibration=cal, metrics=m)
    _assert_report_files(paths, tmp_path)
    document = _strict_json(paths["metrics"])
    assert document["metrics"]["roc_auc"] is None
    assert document["metrics"]["average_precision"] is None
    assert document["metrics"]["notes"]
    markdown = paths["report"].read_text(encoding="utf-8")
    assert "no FAIL images" in markdown


def test_write_report_without_threshold_and_rewrite(tmp_path: Path) -> None:
    s = np.array([0.1, 0.2, 0.3])
    m = compute_metrics([False] * 3, s)
    assert isinstance(m, Metrics) and m.threshold is None
    for _ in range(2):  # a second write replaces the first in place
        paths = write_report(tmp_path, title="t", is_fail=[False] * 3, scores=s,
                             names=["a", "b", "c"], calibration=None, metrics=m)
    _assert_report_files(paths, tmp_path)
    assert all(row["predicted_fail"] is None for row in _strict_json(paths["metrics"])["images"])


def test_write_report_rejects_mismatched_names(tmp_path: Path) -> None:
    m = compute_metrics([False, True], [0.1, 0.9])
    with pytest.raises(ValueError, match="names"):
        write_report(tmp_path, title="t", is_fail=[False, True], scores=[0.1, 0.9],
                     names=["a"], calibration=None, metrics=m)


def test_error_rates_come_with_the_wilson_interval_scipy_gives() -> None:
    from scipy.stats import binomtest

    from indexing.evaluation import error_statistics, wilson_interval

    for errors, total in ((5, 50), (0, 10), (10, 10), (37, 412)):
        want = binomtest(errors, total).proportion_ci(method="wilson")
        assert wilson_interval(errors, total) == pytest.approx((want.low, want.high), abs=1e-9)
    assert wilson_interval(0, 0) is None
    stats = error_statistics([False, False, True, True], [0.1, 0.3, 0.2, 0.9], {"tp": 1, "fp": 0, "tn": 2, "fn": 1})
    assert stats["type_ii_error"]["rate"] == 0.5 and stats["type_i_error"]["rate"] == 0.0
    assert stats["intra_class_distance"]["mean"] == pytest.approx(0.2)
    assert stats["inter_class_distance"]["n"] == 2
