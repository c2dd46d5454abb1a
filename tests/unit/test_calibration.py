"""Calibration policies, checked against sklearn on the raw scores, never against our own code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from indexing.calibration import (
    ACCEPTED_POLICIES,
    Calibration,
    Policy,
    apply_threshold,
    calibrate,
    parse_policy,
    predict_fail,
)
from indexing.errors import InvalidCalibration

def _scores(n_pass: int = 400, n_fail: int = 80, shift: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, n_pass), rng.normal(shift, 1.0, n_fail)


def _labels(passes: np.ndarray, fails: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.zeros(len(passes), int), np.ones(len(fails), int)], np.r_[passes, fails]


def _cal(passes, fails, policy) -> Calibration:
    return calibrate(passes, fails, policy, backbone="resnet50", collection="line-1")


def _rates_at(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float, float, float]:
    """(precision, recall, f1, fpr) at t, by sklearn on `s >= t`."""
    pred = (s >= t).astype(int)
    fpr = float(np.mean(pred[y == 0]))
    return (
        precision_score(y, pred, zero_division=0),
        recall_score(y, pred),
        f1_score(y, pred, zero_division=0),
        fpr,
    )


def _every_threshold(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, f1, fpr) at every distinct score, by brute force in numpy (the oracle)."""
    thresholds = np.unique(s)
    pred = s[None, :] >= thresholds[:, None]
    tp = pred[:, y == 1].sum(axis=1)
    fp = pred[:, y == 0].sum(axis=1)
    n_fail, n_pass = int((y == 1).sum()), int((y == 0).sum())
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = tp / n_fail
    f1 = 2 * tp / (tp + fp + n_fail)
    return precision, recall, f1, fp / n_pass


# --- parse_policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("f1", Policy("f1")),
        (" F1 ", Policy("f1")),
        ("precision>=0.99", Policy("precision", 0.99)),
        ("precision >= .9", Policy("precision", 0.9)),
        ("recall>=0.95", Policy("recall", 0.95)),
        ("fpr<=0.01", Policy("fpr", 0.01)),
        ("fpr<=1e-3", Policy("fpr", 0.001)),
        ("quantile", Policy("quantile", 0.01)),
        ("quantile:0.05", Policy("quantile", 0.05)),
    ],
)
def test_parse_policy_accepts_documented_forms(text: str, expected: Policy) -> None:
    policy = parse_policy(text)
    assert policy == expected
    assert parse_policy(policy.text) == policy


@pytest.mark.parametrize(
    "text",
    ["", "f2", "precision>0.9", "precision>=1", "precision>=0", "recall>=1.5", "fpr<=-0.1", "fpr>=0.1",
     "quantile:0", "quantile:abc", "precision>=0.9x", "accuracy>=0.9", "quantile:1.0"],
)
def test_parse_policy_rejects_bad_text_naming_accepted_forms(text: str) -> None:
    with pytest.raises(InvalidCalibration) as info:
        parse_policy(text)
    message = str(info.value)
    assert "between 0 and 1" in message
    assert ACCEPTED_POLICIES in message or "value must be" in message


@pytest.mark.parametrize(("kind", "value"), [("precision", None), ("precision", 1.0), ("f1", 0.5), ("auc", 0.5)])
def test_policy_objects_are_validated(kind: str, value: float | None) -> None:
    with pytest.raises(InvalidCalibration):
        Policy(kind, value)  # type: ignore[arg-type]


def test_canonical_policy_text() -> None:
    assert parse_policy("PRECISION >= 0.990").text == "precision>=0.99"
    assert parse_policy("quantile").text == "quantile:0.01"
    assert _cal(*_scores(), "recall >= 0.9").policy == "recall>=0.9"


# --- policies --------------------------------------------------------------------------


def test_f1_policy_is_the_f1_maximum_over_all_thresholds() -> None:
    passes, fails = _scores()
    y, s = _labels(passes, fails)
    cal = _cal(passes, fails, "f1")
    best = _every_threshold(y, s)[2].max()
    assert cal.f1 == pytest.approx(best)
    assert _rates_at(y, s, cal.threshold)[2] == pytest.approx(best)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.97])
def test_precision_policy_reaches_target_with_most_recall(target: float) -> None:
    passes, fails = _scores()
    y, s = _labels(passes, fails)
    cal = _cal(passes, fails, f"precision>={target}")
    precision, recall, _, _ = _rates_at(y, s, cal.threshold)
    assert precision >= target
    assert cal.precision == pytest.approx(precision) and cal.recall == pytest.approx(recall)
    every_precision, every_recall, _, _ = _every_threshold(y, s)
    assert recall == pytest.approx(every_recall[every_precision >= target].max())
    assert not cal.warnings


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95])
def test_recall_policy_reaches_target_with_most_precision(target: float) -> None:
    passes, fails = _scores()
    y, s = _labels(passes, fails)
    cal = _cal(passes, fails, f"recall>={target}")
    precision, recall, _, _ = _rates_at(y, s, cal.threshold)
    assert recall >= target
    every_precision, every_recall, _, _ = _every_threshold(y, s)
    assert precision == pytest.approx(every_precision[every_recall >= target].max())


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_fpr_policy_keeps_fpr_and_maximises_tpr(target: float) -> None:
    passes, fails = _scores()
    y, s = _labels(passes, fails)
    cal = _cal(passes, fails, f"fpr<={target}")
    _, recall, _, fpr = _rates_at(y, s, cal.threshold)
    assert fpr <= target
    _, every_recall, _, every_fpr = _every_threshold(y, s)
    assert recall == pytest.approx(every_recall[every_fpr <= target].max())


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_quantile_policy_leaves_about_alpha_of_pass_above(alpha: float) -> None:
    passes, _ = _scores(n_pass=2000)
    cal = _cal(passes, [], f"quantile:{alpha}")
    flagged = np.mean(passes >= cal.threshold)
    assert abs(flagged - alpha) <= 1.5 / passes.size
    assert cal.threshold == pytest.approx(np.quantile(passes, 1 - alpha))
    assert cal.precision is None and cal.roc_auc is None and cal.pr_curve == []
    above = int(np.sum(passes >= cal.threshold))
    assert cal.confusion == {"tp": 0, "fp": above, "tn": passes.size - above, "fn": 0}


def test_quantile_policy_with_fail_images_still_reports_metrics() -> None:
    passes, fails = _scores()
    y, s = _labels(passes, fails)
    cal = _cal(passes, fails, "quantile:0.05")
    assert cal.threshold == pytest.approx(np.quantile(passes, 0.95))
    precision, recall, f1, _ = _rates_at(y, s, cal.threshold)
    assert (cal.precision, cal.recall, cal.f1) == pytest.approx((precision, recall, f1))
    assert cal.average_precision == pytest.approx(average_precision_score(y, s))
    assert cal.roc_auc == pytest.approx(roc_auc_score(y, s))


# --- degenerate sets -------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["f1", "precision>=0.9", "recall>=0.9", "fpr<=0.05"])
def test_a_policy_that_needs_fail_images_is_refused_without_them_never_replaced(policy: str) -> None:
    passes, _ = _scores(n_pass=300)
    with pytest.raises(InvalidCalibration, match=r"needs FAIL images.*quantile:ALPHA") as refused:
        _cal(passes, [], policy)
    assert refused.value.field == "policy"


def test_without_a_policy_fail_images_choose_f1_and_none_choose_the_quantile() -> None:
    passes, fails = _scores(n_pass=300)
    assert _cal(passes, fails, None).policy == "f1"
    cal = _cal(passes, [], None)
    assert cal.policy == "quantile:0.01"
    assert cal.threshold == pytest.approx(np.quantile(passes, 0.99))
    assert cal.precision is None and cal.recall is None and cal.f1 is None
    assert cal.average_precision is None and cal.roc_auc is None
    assert cal.n_fail == 0 and cal.n_pass == 300
    assert cal.degenerate is None


def test_a_threshold_that_catches_no_fail_or_flags_most_pass_images_is_degenerate() -> None:
    assert "catches none of the 2 FAIL images" in _cal([0.1, 0.2, 0.3], [0.05, 0.06], "fpr<=0.01").degenerate
    assert "flags 2 of the 3 PASS images" in _cal([0.5, 0.6, 0.1], [0.2], "recall>=0.99").degenerate
    passes, fails = _scores()
    assert _cal(passes, fails, "f1").degenerate is None


def test_precision_policy_adds_no_false_alarm_for_no_recall() -> None:
    # Thresholds 1, 8 and 9 all reach precision >= 0.5 with recall 1; only 9 flags no PASS image.
    passes, fails = np.array([0.5, 1.0, 8.0]), np.array([9.0, 10.0])
    cal = _cal(passes, fails, "precision>=0.5")
    assert cal.threshold == 9.0
    assert (cal.precision, cal.recall) == (1.0, 1.0)


def test_recall_policy_prefers_more_precision_over_a_higher_threshold() -> None:
    # recall>=0.3 holds from threshold 8 (precision 2/3) down to 5 (precision 5/6, recall 1).
    passes, fails = np.array([9.0]), np.array([10.0, 8.0, 7.0, 6.0, 5.0])
    cal = _cal(passes, fails, "recall>=0.3")
    assert cal.threshold == 5.0
    assert cal.precision == pytest.approx(5 / 6) and cal.recall == 1.0


def test_unreachable_precision_takes_the_best_precision_and_warns() -> None:
    # The highest score is a PASS image, so precision 0.999 is reached nowhere.
    passes = np.array([0.0, 0.1, 0.2, 5.0])
    fails = np.array([1.0, 2.0, 3.0])
    y, s = _labels(passes, fails)
    cal = _cal(passes, fails, "precision>=0.999")
    best_precision = _every_threshold(y, s)[0].max()
    assert _rates_at(y, s, cal.threshold)[0] == pytest.approx(best_precision) == pytest.approx(0.75)
    assert cal.recall == 1.0
    assert any("precision>=0.999 is not reached" in warning for warning in cal.warnings)


def test_fpr_met_only_by_flagging_nothing_warns_and_flags_nothing() -> None:
    passes = np.array([10.0, 11.0, 0.0, 0.1])
    fails = np.array([1.0, 2.0])
    cal = _cal(passes, fails, "fpr<=0.1")
    assert math.isfinite(cal.threshold) and cal.threshold > 11.0
    assert cal.confusion == {"tp": 0, "fp": 0, "tn": 4, "fn": 2}
    assert any("fpr<=0.1" in warning for warning in cal.warnings)


def test_few_pass_images_for_a_quantile_warn() -> None:
    cal = _cal([0.1, 0.2, 0.3], [], "quantile:0.01")
    assert any("only 3 PASS scores" in warning for warning in cal.warnings)


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], [-float("inf")]])
@pytest.mark.parametrize("side", ["pass", "fail"])
def test_non_finite_scores_are_rejected(bad: list[float], side: str) -> None:
    passes, fails = [0.1, 0.2], [0.9]
    passes, fails = (passes + bad, fails) if side == "pass" else (passes, fails + bad)
    with pytest.raises(InvalidCalibration, match="NaN or infinite"):
        _cal(passes, fails, "f1")


def test_no_pass_scores_are_rejected() -> None:
    with pytest.raises(InvalidCalibration, match="no PASS scores"):
        _cal([], [0.5, 0.7], "f1")


# --- tie semantics and the stored curve --------------------------------------------------


def test_ties_score_equal_to_threshold_is_fail_and_curve_points_reproduce() -> None:
    # Integer scores: many ties, so any off-by-one between ">" and ">=" shows.
    rng = np.random.default_rng(3)
    passes = rng.integers(0, 6, 200).astype(float)
    fails = rng.integers(3, 10, 60).astype(float)
    y, s = _labels(passes, fails)
    cal = _cal(passes, fails, "f1")
    assert cal.threshold in set(s.tolist())
    pred = (s >= cal.threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert cal.confusion == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for point in cal.pr_curve:
        precision, recall, _, _ = _rates_at(y, s, point["threshold"])
        assert point["precision"] == pytest.approx(precision)
        assert point["recall"] == pytest.approx(recall)


def test_pr_curve_is_thinned_and_keeps_the_chosen_point() -> None:
    passes, fails = _scores(n_pass=3000, n_fail=600)
    cal = _cal(passes, fails, "precision>=0.9")
    assert 100 <= len(cal.pr_curve) <= 201
    assert any(point["threshold"] == cal.threshold for point in cal.pr_curve)
    thresholds = [point["threshold"] for point in cal.pr_curve]
    assert thresholds == sorted(thresholds)


def test_apply_threshold_rule() -> None:
    assert apply_threshold(1.0, 1.0) is True
    assert apply_threshold(0.999, 1.0) is False
    assert apply_threshold(float("nan"), 1.0) is True
    with pytest.raises(InvalidCalibration):
        apply_threshold(1.0, float("nan"))
    scores = [0.5, 1.0, 1.5, float("nan")]
    assert predict_fail(scores, 1.0).tolist() == [apply_threshold(x, 1.0) for x in scores]


# --- the stored record -----------------------------------------------------------------


def test_json_round_trip_is_exact() -> None:
    passes, fails = _scores()
    cal = _cal(passes, fails, "recall>=0.9")
    text = json.dumps(cal.to_dict(), allow_nan=False)
    again = Calibration.from_dict(json.loads(text))
    assert again == cal
    assert again.to_dict() == cal.to_dict()
    assert len(cal.id) == 32 and int(cal.id, 16) >= 0
    assert cal.created_at.endswith("+00:00")
    assert (cal.backbone, cal.collection) == ("resnet50", "line-1")


def test_a_patch_calibration_keeps_the_recipe_of_its_bank_through_json() -> None:
    from dataclasses import replace

    recipe = {"dim": 152, "projection": "balanced", "local_scale": 20}
    cal = replace(_cal(*_scores(), "f1"), scoring="patch", patch_recipe=recipe)
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict(), allow_nan=False)))
    assert again == cal and again.patch_recipe == recipe
    legacy = {key: value for key, value in cal.to_dict().items() if key != "patch_recipe"}
    assert Calibration.from_dict(legacy).patch_recipe is None  # recorded before: the service reads its collection's


def test_json_round_trip_without_fail_images() -> None:
    cal = _cal([0.1, 0.2, 0.3], [], "quantile:0.1")
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict(), allow_nan=False))) == cal


def test_from_dict_refuses_an_incomplete_record() -> None:
    record = _cal(*_scores(), "f1").to_dict()
    del record["threshold"]
    with pytest.raises(InvalidCalibration, match="threshold"):
        Calibration.from_dict(record)


def test_one_rule_says_which_scores_a_calibration_may_judge() -> None:
    cal = _cal(*_scores(), "f1")
    assert cal.scoring == "global" and Calibration.from_dict(cal.to_dict()) == cal
    assert cal.unfit_for(backbone="resnet50", scoring="global") is None
    assert "clip vectors" in cal.unfit_for(backbone="clip", scoring="global")
    assert "global scores, not patch scores" in cal.unfit_for(backbone="resnet50", scoring="patch")
    # A record from before `scoring` was stored: the patch bank's collection name says it.
    legacy = {key: value for key, value in cal.to_dict().items() if key != "scoring"}
    legacy["collection"] = "nominal__line__resnet50__patch__v3"
    assert Calibration.from_dict(legacy).scoring == "patch"
