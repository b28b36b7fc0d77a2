"""Accuracy, macro-F1, per-class precision/recall, bootstrap intervals and paired tests on the same rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import f1_score, precision_recall_fscore_support

# Resamples for percentile bootstrap intervals; 1000 gives CI ends stable to ~0.5 points at n=200.
BOOTSTRAP_RESAMPLES = 1000


def bootstrap_ci(correct: Sequence[bool], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of accuracy (Efron & Tibshirani 1993), seeded."""
    hits = np.asarray(correct, dtype=float)
    if hits.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, hits.size, size=(resamples, hits.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def classification_metrics(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """Accuracy with its 95% CI, macro-F1 over the labels present in gold, per-class precision/recall."""
    correct = [g == p for g, p in zip(gold, predicted, strict=True)]
    present = [label for label in labels if label in set(gold)]
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=list(labels), zero_division=0
    )
    return {
        "accuracy": float(np.mean(correct)),
        "accuracy_ci95": bootstrap_ci(correct, seed=seed),
        "macro_f1": float(f1_score(gold, predicted, labels=present, average="macro", zero_division=0)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
    }


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float | int]:
    """Exact McNemar test (McNemar 1947) on paired per-row correctness of two methods on the same rows.

    Only discordant rows count: ``a_only`` (A right, B wrong) and ``b_only``. The two-sided p-value is the
    exact binomial test of a_only against Binomial(a_only + b_only, 0.5).
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("paired test needs the same rows for both methods")
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(binomtest(a_only, discordant, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p_value, "n": int(a.size)}


def paired_bootstrap_diff(
    correct_a: Sequence[bool], correct_b: Sequence[bool], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> list[float]:
    """95% bootstrap interval of accuracy(A) - accuracy(B), resampling rows jointly (paired)."""
    diff = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


# Conventional error rates for planning a comparison: 5% false positives, 80% power (Cohen 1988).
PLANNING_ALPHA = 0.05
PLANNING_POWER = 0.80


def mcnemar_sample_size(
    discordant_share: float, difference: float, alpha: float = PLANNING_ALPHA, power: float = PLANNING_POWER
) -> int | None:
    """Test rows needed for a two-sided McNemar test to detect an accuracy ``difference`` between two methods.

    Connor (1987), "Sample size for testing differences in proportions for the paired-sample design",
    Biometrics 43(1):207-211: ``n = (z_{1-a/2} sqrt(psi) + z_{1-b} sqrt(psi - delta^2))^2 / delta^2`` with
    ``psi`` the share of discordant rows (one method right, the other wrong) and ``delta`` the accuracy
    difference. None when ``difference`` is 0 (no finite sample shows a zero difference).
    """
    from scipy.stats import norm

    delta = abs(difference)
    if delta == 0:
        return None
    psi = min(1.0, max(discordant_share, delta))
    z_alpha, z_power = norm.ppf(1 - alpha / 2), norm.ppf(power)
    rows = (z_alpha * np.sqrt(psi) + z_power * np.sqrt(max(psi - delta**2, 0.0))) ** 2 / delta**2
    return int(np.ceil(rows))
