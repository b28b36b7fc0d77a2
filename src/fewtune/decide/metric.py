"""The primary metric a verdict is decided on, computed from per-row statistics so that any task plugs in.

A :class:`PrimaryMetric` turns a ``[rows, d]`` array of per-row statistics into one number. Classification
stores ``(gold index, predicted index)`` per row; accuracy and macro-F1 are both computed from that, so a
paired bootstrap can resample rows and recompute either. A task whose metric is not a label (extraction's
field F1 from per-row ``(tp, fp, fn)``, generation's mean chrF from per-row scores) adds its own
``PrimaryMetric`` with the same shape and the decision code needs no change.

Which metric decides, for classification: accuracy, unless the test labels are imbalanced, when a model that
predicts the majority label for everything can look good on accuracy (an 87%-majority test set gives it
0.87). Then the verdict is decided on macro-F1 (the mean of per-class F1 over the labels present), which such
a collapse scores near 1/labels of the majority class's F1. Macro-F1 is chosen over balanced accuracy (the
mean per-class recall) because it also charges a method for false positives on a rare class (precision),
which is what hurts in spam- or fraud-like tasks; it is the usual headline metric for imbalanced text
classification (e.g. the SemEval sentiment tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ACCURACY = "accuracy"
MACRO_F1 = "macro-f1"
METRIC_CHOICES = (ACCURACY, MACRO_F1)
# Imbalance that switches the deciding metric to macro-F1 (issue 9): the most common test label holds over
# half the rows, or the largest class is at least 3x the smallest. Either way a constant guess of the
# majority label reaches an accuracy that a reader would take for a working classifier.
IMBALANCE_MAJORITY_SHARE = 0.5
IMBALANCE_RATIO = 3.0


@dataclass(frozen=True)
class PrimaryMetric:
    """How a task's per-row statistics become the number the verdict compares."""

    name: str
    """Key in results, e.g. "accuracy" or "macro-f1"."""
    label: str
    """For people: "accuracy", "macro-F1"."""
    aggregate: Callable[[np.ndarray], float]
    """``[rows, d]`` per-row statistics -> the metric (higher is better)."""
    per_row_correct: bool
    """True when the metric is the mean of a per-row 0/1 outcome, so the exact McNemar test applies;
    otherwise paired comparisons use a paired bootstrap on the same rows."""

    def value(self, stats: np.ndarray) -> float:
        return float(self.aggregate(stats))


def _accuracy(stats: np.ndarray) -> float:
    return float(np.mean(stats[:, 0] == stats[:, 1])) if len(stats) else float("nan")


def macro_f1_from_indices(gold: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Macro-F1 over the classes present in ``gold`` (scikit-learn's ``f1_score(labels=present)``)."""
    if gold.size == 0:
        return float("nan")
    counts = np.bincount(gold * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    tp = np.diag(counts).astype(float)
    support = counts.sum(axis=1)
    predicted_count = counts.sum(axis=0)
    denominator = support + predicted_count
    f1 = np.divide(2 * tp, denominator, out=np.zeros(classes), where=denominator > 0)
    present = support > 0
    return float(f1[present].mean())


def _macro_f1(stats: np.ndarray) -> float:
    classes = int(stats.max()) + 1 if len(stats) else 1
    return macro_f1_from_indices(stats[:, 0].astype(int), stats[:, 1].astype(int), classes)


ACCURACY_METRIC = PrimaryMetric(ACCURACY, "accuracy", _accuracy, per_row_correct=True)
MACRO_F1_METRIC = PrimaryMetric(MACRO_F1, "macro-F1", _macro_f1, per_row_correct=False)
CLASSIFICATION_METRICS = {m.name: m for m in (ACCURACY_METRIC, MACRO_F1_METRIC)}


def label_stats(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Per-row ``(gold index, predicted index)``; labels missing from ``labels`` get new indices."""
    index = {label: i for i, label in enumerate(labels)}
    for label in [*gold, *predicted]:
        index.setdefault(label, len(index))
    return np.array([[index[g], index[p]] for g, p in zip(gold, predicted, strict=True)], dtype=int)


def imbalance(label_counts: dict[str, int]) -> tuple[float, float]:
    """(majority share, largest/smallest class ratio) of the test label counts."""
    counts = [c for c in label_counts.values() if c > 0]
    if not counts:
        return 0.0, 1.0
    return max(counts) / sum(counts), max(counts) / min(counts)


@dataclass(frozen=True)
class MetricChoice:
    metric: PrimaryMetric
    reason: str
    """One sentence: why this metric decides."""


def choose_metric(label_counts: dict[str, int], override: str | None = None) -> MetricChoice:
    """The deciding metric for a classification run (module docstring), or the user's ``--metric``."""
    share, ratio = imbalance(label_counts)
    shape = f"most common test label {share:.0%} of rows, largest class {ratio:.1f}x the smallest"
    if override:
        return MetricChoice(CLASSIFICATION_METRICS[override], f"--metric {override} was given ({shape})")
    if share > IMBALANCE_MAJORITY_SHARE or ratio >= IMBALANCE_RATIO:
        return MetricChoice(
            MACRO_F1_METRIC,
            f"the test labels are imbalanced ({shape}), so the verdict is decided on macro-F1: accuracy "
            f"would reward predicting the majority label for every row ({share:.3f} for doing nothing)",
        )
    return MetricChoice(ACCURACY_METRIC, f"the test labels are balanced enough for accuracy ({shape})")


def chance_level(metric: PrimaryMetric, label_counts: dict[str, int]) -> float:
    """Expected score of the best content-blind guesser: always the majority label, uniform guessing, or
    guessing with the label frequencies. For accuracy that is max(majority share, 1/labels)."""
    counts = np.array([c for c in label_counts.values() if c > 0], dtype=float)
    if counts.size == 0:
        return 0.0
    shares = counts / counts.sum()
    k = len(shares)
    if metric.name == ACCURACY:
        return float(max(shares.max(), 1 / k, float(np.sum(shares**2))))
    # Macro-F1 (expected per-class precision x recall under each guesser, on the labels present):
    majority = 2 * shares.max() / (1 + shares.max()) / k  # F1 of the majority class, 0 for the others
    uniform = float(np.mean(2 * shares * (1 / k) / (shares + 1 / k)))  # precision p_c, recall 1/k
    frequency = float(np.mean(shares))  # precision = recall = p_c, so F1 = p_c; the mean is 1/k
    return float(max(majority, uniform, frequency))


def normalised(score: float, chance: float) -> float:
    """Share of the way from chance to perfect (Cohen's kappa's chance correction applied to the metric)."""
    if chance >= 1:
        return 0.0
    return (score - chance) / (1 - chance)
