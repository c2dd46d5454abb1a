"""Cross-validated comparison of candidate scorers on a calibration's labelled images."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.compare import Comparison, compare_scorers
from indexing.errors import InvalidCalibration


def test_the_scorer_that_separates_the_labels_wins_on_held_out_folds() -> None:
    rng = np.random.default_rng(1)
    passes, fails = rng.normal(0.0, 1.0, 40), rng.normal(4.0, 1.0, 20)
    noise_pass, noise_fail = rng.normal(0.0, 1.0, 40), rng.normal(0.0, 1.0, 20)
    found = compare_scorers({"noise": (noise_pass, noise_fail), "good": (passes, fails)}, current="noise")
    assert found.winner == "good" and found.current == "noise" and found.folds == 5
    assert found.results[0].f1_mean > 0.85 and found.margin > 0.3
    assert found.results[0].roc_auc > 0.95 and 0.3 < found.results[1].roc_auc < 0.7
    assert Comparison.from_dict(found.to_dict()) == found


def test_folds_are_stratified_and_never_more_than_the_smaller_class() -> None:
    found = compare_scorers({"a": ([0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7])})
    assert found.folds == 3 and found.n_pass == 4 and found.n_fail == 3
    # A held-out FAIL below every training FAIL falls under the F1-max threshold: one fold misses it.
    assert sorted(found.results[0].f1_per_fold) == [0.0, 1.0, 1.0]


def test_comparing_needs_two_images_of_each_label_and_equal_image_counts() -> None:
    with pytest.raises(InvalidCalibration, match="2 PASS and 2 FAIL"):
        compare_scorers({"a": ([0.1, 0.2], [0.9])})
    with pytest.raises(ValueError, match="scored"):
        compare_scorers({"a": ([0.1, 0.2], [0.8, 0.9]), "b": ([0.1], [0.8, 0.9])})
