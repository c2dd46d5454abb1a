"""Drift statistics and states on score samples (the integration test drives real images)."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.drift import PSI_MIN_WINDOW, assess, psi


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=2000)
    assert psi(rng.normal(size=2000), reference) < 0.02
    assert psi(rng.normal(loc=1.0, size=2000), reference) > 0.25


def test_the_same_distribution_is_ok_and_a_shift_alarms_saying_what_to_do() -> None:
    rng = np.random.default_rng(2)
    reference = np.sort(rng.gamma(4, 0.02, size=300))
    threshold = float(np.quantile(reference, 0.99))

    def verdicts(scores):
        return ["FAIL" if s >= threshold else "PASS" for s in scores]

    same = rng.gamma(4, 0.02, size=200)
    ok = assess("s", same, verdicts(same), reference, threshold=threshold, calibration_id="c")
    assert ok.state == "ok" and ok.enough_data and ok.advice is None, ok.reasons
    assert ok.predicted_fail_rate < 0.03

    shifted = rng.gamma(4, 0.02, size=200) * 1.5
    alarm = assess("s", shifted, verdicts(shifted), reference, threshold=threshold, calibration_id="c")
    assert alarm.state == "alarm" and alarm.psi > 0.25 and alarm.ks_p_value < 0.001
    assert alarm.fail_rate > alarm.predicted_fail_rate and "re-index" in alarm.advice and "higher" in alarm.advice


def test_a_small_window_is_not_judged_and_psi_needs_a_large_one() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=50)
    few = assess("s", rng.normal(size=5), ["PASS"] * 5, reference, threshold=None, calibration_id=None)
    assert few.state == "ok" and not few.enough_data and "5 verdicts" in few.reasons[0]
    # 30 good scores against 50: PSI's small-sample bias alone is near 0.5, so it must not raise the state.
    small = rng.normal(size=30)
    assert small.size < PSI_MIN_WINDOW
    assert assess("s", small, ["PASS"] * 30, reference, threshold=None, calibration_id=None).state == "ok"


def test_more_fails_than_the_calibration_predicts_warns_even_if_scores_look_alike() -> None:
    reference = np.linspace(0, 1, 200)
    threshold = 0.95  # predicts about 5% FAIL
    window = np.linspace(0, 1, 100)
    verdicts = ["FAIL" if i % 4 == 0 else "PASS" for i in range(100)]  # 25% FAIL, e.g. a threshold changed by hand
    report = assess("s", window, verdicts, reference, threshold=threshold, calibration_id="c")
    assert report.state == "alarm" and any("FAIL rate" in r for r in report.reasons)


def test_the_embedding_shift_is_about_one_standard_error_by_chance_and_grows_with_a_shift() -> None:
    from indexing.drift import Centroid, embedding_shift

    rng = np.random.default_rng(4)
    scales = np.linspace(0.2, 1.0, 64)  # unequal variances: the statistic needs no isotropy
    nominal = rng.normal(size=(50, 64)) * scales
    centroid = Centroid.of([nominal])
    in_batches = Centroid.of(np.array_split(nominal, 4))  # read batch by batch, as from the store
    assert np.allclose(in_batches.vector, nominal.mean(axis=0)) and in_batches.count == 50
    assert in_batches.spread == pytest.approx(((nominal - nominal.mean(axis=0)) ** 2).sum() / 49)
    chance = [embedding_shift(rng.normal(size=(20, 64)) * scales, centroid) for _ in range(300)]
    assert 0.8 < float(np.mean(np.square(chance))) < 1.25  # its expected square is 1
    assert max(chance) < 2.0  # the warn threshold
    moved = rng.normal(size=(20, 64)) * scales + scales  # every part one nominal spread brighter, say
    assert embedding_shift(moved, centroid) >= 3.0
    assert Centroid.of([nominal[:1]]) is None and Centroid.of([]) is None


def test_a_shift_of_the_embeddings_raises_the_state_even_when_the_scores_look_alike() -> None:
    reference = np.linspace(0, 1, 200)
    window = np.linspace(0, 1, 50)
    report = assess("s", window, ["PASS"] * 50, reference, threshold=None, calibration_id=None, shift=3.5,
                    shift_window=50)
    assert report.state == "alarm" and report.embedding_shift == 3.5
    assert any("look different" in r for r in report.reasons) and "re-index" in report.advice
    assert report.advice.startswith("the images look different") and "scores run" not in report.advice
    assert assess("s", window, ["PASS"] * 50, reference, threshold=None, calibration_id=None, shift=2.5,
                  shift_window=50).state == "warn"
    # Too few vectors in this process (a restart): the shift is reported but does not count.
    assert assess("s", window, ["PASS"] * 50, reference, threshold=None, calibration_id=None, shift=9.0,
                  shift_window=3).state == "ok"


def test_recent_embeddings_keep_the_latest_vectors_of_the_latest_version() -> None:
    from indexing.drift import RecentEmbeddings
    from indexing.verdicts import Verdict

    def verdict(value: float) -> Verdict:
        return Verdict(source="x", image_id="i", verdict="PASS", score=0.1, threshold=None, calibration_id=None,
                       embedding=np.full(4, value, np.float32))

    memory = RecentEmbeddings(capacity=3)
    memory.add("s", 1, [verdict(v) for v in range(5)], at=100.0)
    memory.add("s", 1, [verdict(9)], at=200.0)
    assert memory.window("s", 1)[:, 0].tolist() == [3, 4, 9]
    assert memory.window("s", 1, last=1)[:, 0].tolist() == [9]
    assert memory.window("s", 1, since=150.0)[:, 0].tolist() == [9]
    assert memory.window("s", 2).shape == (0, 0)
    memory.add("s", 2, [verdict(7)], at=300.0)  # a new version: the old one's vectors are not comparable
    assert memory.window("s", 1).shape == (0, 0) and memory.window("s", 2)[:, 0].tolist() == [7]
    calls = []

    def vectors():
        calls.append(1)
        return [np.eye(2)]

    first = memory.centroid("c1", 100, vectors)
    assert memory.centroid("c1", 104, vectors) is first and calls == [1]  # a few images added: still good
    memory.centroid("c1", 110, vectors)
    assert calls == [1, 1]  # the set grew by more than 5%: read again
    memory.forget("s")
    assert memory.window("s", 2).shape == (0, 0)
