"""Conformal p-values: what a user reads off a verdict ("1 in N good parts scores this high")."""

from __future__ import annotations

import math

import numpy as np

from indexing.conformal import MAX_REFERENCE, p_value, reference_of


def test_p_value_counts_reference_scores_at_or_above_plus_one() -> None:
    reference = reference_of([0.1, 0.2, 0.2, 0.3])
    assert p_value(reference, 0.05) == 5 / 5  # every good part scored at least this: as ordinary as it gets
    assert p_value(reference, 0.2) == (1 + 3) / 5  # ties count as "at or above"
    assert p_value(reference, 0.25) == (1 + 1) / 5
    assert p_value(reference, 0.9) == 1 / 5  # above all of them: never 0, the smallest p n allows


def test_a_nan_score_gets_the_smallest_p_value_and_an_empty_reference_none() -> None:
    assert p_value(reference_of([0.1, 0.2]), math.nan) == 1 / 3
    assert p_value(reference_of([]), 0.5) is None


def test_p_values_of_good_parts_are_uniform_so_alpha_flags_about_alpha_of_them() -> None:
    rng = np.random.default_rng(0)
    reference = reference_of(rng.normal(size=999))
    fresh_good = rng.normal(size=20_000)
    p = np.array([p_value(reference, s) for s in fresh_good])
    assert abs(np.mean(p <= 0.01) - 0.01) < 0.008
    assert abs(np.mean(p <= 0.2) - 0.2) < 0.04


def test_a_large_reference_is_thinned_to_its_order_statistics() -> None:
    scores = np.arange(50_000, dtype=float)[::-1]
    reference = reference_of(np.append(scores, np.inf))
    assert reference.size == MAX_REFERENCE and np.all(np.diff(reference) >= 0)
    assert reference[0] == 0 and reference[-1] == 49_999  # the extremes are kept; non-finite scores dropped
    assert abs(p_value(reference, 45_000) - 0.1) < 0.001
