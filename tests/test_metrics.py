from __future__ import annotations

import pytest

from fewtune.metrics import bootstrap_ci, classification_metrics, mcnemar, paired_bootstrap_diff


def test_classification_metrics_by_hand() -> None:
    gold = ["a", "a", "b", "b"]
    pred = ["a", "b", "b", "b"]
    m = classification_metrics(gold, pred, ["a", "b"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    low, high = m["accuracy_ci95"]
    assert 0 <= low <= 0.75 <= high <= 1


def test_bootstrap_ci_is_seeded_and_narrows_with_more_rows() -> None:
    small = [True, False] * 10
    large = [True, False] * 500
    assert bootstrap_ci(small, seed=1) == bootstrap_ci(small, seed=1)
    assert (bootstrap_ci(large)[1] - bootstrap_ci(large)[0]) < (
        bootstrap_ci(small)[1] - bootstrap_ci(small)[0]
    )


def test_mcnemar_counts_discordant_rows() -> None:
    a = [True] * 10 + [False] * 2 + [True] * 5
    b = [False] * 10 + [True] * 2 + [True] * 5
    result = mcnemar(a, b)
    assert (result["a_only"], result["b_only"], result["n"]) == (10, 2, 17)
    assert result["p_value"] == pytest.approx(0.0386, abs=1e-3)  # exact binomial, 2 of 12 discordant
    assert mcnemar(a, a)["p_value"] == 1.0


def test_paired_bootstrap_interval_contains_observed_difference() -> None:
    a = [True] * 30 + [False] * 10
    b = [True] * 20 + [False] * 20
    low, high = paired_bootstrap_diff(a, b)
    assert low <= 0.25 <= high
