"""The pieces the verdict rests on: the deciding metric, chance, degeneracy, paired tests, learning curves."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from fewtune.decide.cost import MethodCost
from fewtune.decide.curve import data_step, trend
from fewtune.decide.evidence import PROMPT, MethodEvidence, compare, degeneracy
from fewtune.decide.from_run import accuracy_floor, check_caveats
from fewtune.decide.metric import (
    ACCURACY_METRIC,
    MACRO_F1_METRIC,
    chance_level,
    choose_metric,
    label_stats,
    macro_f1_from_indices,
    normalised,
)

COST = MethodCost(0, 0)


@pytest.mark.parametrize(
    ("counts", "metric"),
    [
        ({"neg": 100, "pos": 100}, "accuracy"),
        ({"a": 40, "b": 30, "c": 30}, "accuracy"),
        ({"ham": 87, "spam": 13}, "macro-f1"),  # majority over half
        ({"a": 45, "b": 40, "c": 15}, "macro-f1"),  # largest 3x the smallest
        ({"a": 30, "b": 25, "c": 25, "d": 20}, "accuracy"),
    ],
)
def test_imbalanced_labels_are_decided_on_macro_f1(counts: dict[str, int], metric: str) -> None:
    choice = choose_metric(counts)
    assert choice.metric.name == metric
    assert ("imbalanced" in choice.reason) == (metric == "macro-f1")


def test_metric_override_wins() -> None:
    choice = choose_metric({"ham": 87, "spam": 13}, "accuracy")
    assert choice.metric is ACCURACY_METRIC and "--metric accuracy" in choice.reason


def test_macro_f1_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    gold, predicted = rng.integers(0, 4, 300), rng.integers(0, 5, 300)
    present = sorted(set(gold))
    expected = f1_score(gold, predicted, labels=present, average="macro", zero_division=0)
    assert macro_f1_from_indices(gold, predicted, 5) == pytest.approx(expected)
    stats = label_stats([str(g) for g in gold], [str(p) for p in predicted], ["0", "1", "2", "3"])
    assert MACRO_F1_METRIC.value(stats) == pytest.approx(expected)
    assert ACCURACY_METRIC.value(stats) == pytest.approx(np.mean(gold == predicted))


def test_chance_levels() -> None:
    assert chance_level(ACCURACY_METRIC, {"a": 87, "b": 13}) == pytest.approx(0.87)
    assert chance_level(ACCURACY_METRIC, {"a": 1, "b": 1, "c": 1, "d": 1}) == pytest.approx(0.25)
    # Macro-F1: always "a" gives F1 2*0.87/1.87 on a, 0 on b -> 0.465; guessing with the frequencies 0.5.
    assert chance_level(MACRO_F1_METRIC, {"a": 87, "b": 13}) == pytest.approx(0.5)
    assert normalised(0.75, 0.5) == pytest.approx(0.5)


def test_majority_collapse_is_degenerate() -> None:
    gold = ["ham"] * 87 + ["spam"] * 13
    assert degeneracy(gold, ["ham"] * 100) == "predicts 'ham' for every test row"
    # One spam row right, twenty ham rows wrong: ham F1 134/166, spam F1 2/34 -> macro 0.433 <= 0.465.
    near = ["ham"] * 67 + ["spam"] * 20 + ["spam"] + ["ham"] * 12
    why = degeneracy(gold, near)
    assert why is not None and "no better than always predicting 'ham'" in why
    good = ["ham"] * 85 + ["spam"] * 2 + ["spam"] * 11 + ["ham"] * 2
    assert degeneracy(gold, good) is None


def test_a_point_estimate_above_the_majority_guess_within_noise_is_degenerate() -> None:
    # One false alarm and 2 of 13 spam rows caught: macro-F1 0.592 beats always-'ham' (0.465) by its point
    # estimate, but resampling the rows finds it no better; 4 caught rows is beyond noise.
    gold = ["ham"] * 87 + ["spam"] * 13
    lucky = ["ham"] * 86 + ["spam"] + ["spam"] * 2 + ["ham"] * 11
    why = degeneracy(gold, lucky)
    assert (
        why is not None
        and "macro-F1 0.592 is no better than always predicting 'ham' (0.465) beyond noise" in why
    )
    assert degeneracy(gold, ["ham"] * 86 + ["spam"] + ["spam"] * 4 + ["ham"] * 9) is None
    assert degeneracy(gold, lucky, seed=3) == degeneracy(gold, lucky, seed=3)  # seeded


def _evidence(name: str, gold: np.ndarray, predicted: np.ndarray) -> MethodEvidence:
    stats = np.stack([gold, predicted], axis=1)
    return MethodEvidence(name, PROMPT, MACRO_F1_METRIC.value(stats), COST, 5, stats=stats)


def test_paired_bootstrap_finds_a_real_gap_and_no_gap_between_equals() -> None:
    rng = np.random.default_rng(1)
    gold = (rng.random(400) < 0.2).astype(int)
    noisy = np.where(rng.random(400) < 0.3, 1 - gold, gold)
    clean = np.where(rng.random(400) < 0.05, 1 - gold, gold)
    c = compare(_evidence("noisy", gold, noisy), _evidence("clean", gold, clean), MACRO_F1_METRIC)
    assert c.test == "paired bootstrap" and c.significant and c.lead_points > 20
    low, high = c.lead_ci95 or (0, 0)
    assert low < c.lead_points < high
    same = compare(_evidence("a", gold, noisy), _evidence("b", gold, noisy.copy()), MACRO_F1_METRIC)
    assert same.p_value == pytest.approx(1.0) and not same.significant
    # Identical predictions have no spread to plan with; the real gap (over 20 points) was found on 400
    # rows, so the rows that 80% power needs for it are fewer than that.
    assert same.rows_needed is None
    assert c.rows_needed is not None and 0 < c.rows_needed < 400


def test_paired_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 3, 200)
    a = _evidence("a", gold, np.where(rng.random(200) < 0.4, rng.integers(0, 3, 200), gold))
    b = _evidence("b", gold, np.where(rng.random(200) < 0.3, rng.integers(0, 3, 200), gold))
    assert compare(a, b, MACRO_F1_METRIC, seed=3) == compare(a, b, MACRO_F1_METRIC, seed=3)


def test_learning_curve_per_doubling_and_projection() -> None:
    t = trend("lora", "training examples", [(50, 0.60), (100, 0.70), (200, 0.76), (400, 0.80)])
    assert t is not None
    # Least squares on log2(n) = 0..3: slope of (0.60, 0.70, 0.76, 0.80) is 0.066 -> 6.6 points per doubling.
    assert t.per_doubling == pytest.approx(6.6)
    assert t.last_gain == pytest.approx(4.0) and t.rising
    assert t.expected_next == pytest.approx(0.84) and t.next_x == 800
    step = data_step(t, [50, 100, 200, 400], "accuracy")
    assert step and "likely to help" in step and "expect ~0.840 at 800" in step
    flat = trend("lora", "training examples", [(100, 0.80), (200, 0.81)])
    assert flat is not None and not flat.rising
    assert trend("lora", "training examples", [(200, 0.8)]) is None
    assert "--train-sizes 50,100,200,400" in (data_step(None, [200], "accuracy") or "")


def test_accuracy_floor_is_kappa_for_predictions_with_the_test_shares() -> None:
    # Balanced binary: expected agreement 0.5, kappa 0.4 -> accuracy 0.7.
    assert accuracy_floor({"a": 50, "b": 50}, 0.4) == pytest.approx(0.7)


def test_data_checks_caveat_the_verdict_when_they_matter() -> None:
    dataset = {
        "test_size": 200,
        "checks": {
            "label_issue_counts": {"pool": 30, "test": 12},
            "near_duplicate_leaks": [{"pool": {}, "test": {}, "cosine": 0.97}],
            "small_classes": {"spam": 12},
        },
    }
    caveats = " | ".join(check_caveats(dataset, 5.0))
    assert "12 of 200 test rows (6.0%) are flagged as possibly mislabelled" in caveats
    assert "near-duplicate in the pool" in caveats and "spam (12)" in caveats
    quiet = {"test_size": 200, "checks": {"label_issue_counts": {"test": 2}}}
    assert check_caveats(quiet, 5.0) == []
