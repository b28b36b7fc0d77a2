"""What the rules decide from: each method's primary score and per-row statistics, and paired comparisons.

Paired tests compare two methods on the same test rows. When the primary metric is a per-row 0/1 outcome
(accuracy) it is the exact McNemar test; otherwise (macro-F1, field F1, chrF) a paired bootstrap that
resamples rows jointly and recomputes the metric for both methods (Koehn 2004; Berg-Kirkpatrick et al. 2012),
with the two-sided p-value of the shifted null: the share of resampled differences at least as far from the
observed one as the observed one is from zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import norm

from fewtune.decide.cost import MethodCost
from fewtune.decide.metric import ACCURACY_METRIC, PrimaryMetric, macro_f1_from_indices
from fewtune.decide.thresholds import MARGIN_POINTS, SIGNIFICANCE_ALPHA
from fewtune.methods import Method
from fewtune.metrics import (
    BOOTSTRAP_RESAMPLES,
    PLANNING_ALPHA,
    PLANNING_POWER,
    mcnemar,
    mcnemar_sample_size,
    paired_bootstrap_diff,
)

PROMPT = "prompt"
FINE_TUNED = "fine-tuned"
REFERENCE = Method.REFERENCE.value


@dataclass(frozen=True)
class MethodEvidence:
    """One measured method, as the rules see it."""

    name: str
    """Unique method name, e.g. "few-shot k=8 balanced" or "lora n=200"."""
    kind: str
    """prompt (no training), fine-tuned (LoRA, with or without demos) or reference (no LLM)."""
    score: float
    """The primary metric on the test rows (0-1, higher is better)."""
    cost: MethodCost
    """Setup and per-request cost under the resolved price table."""
    shots: int = 0
    """Demos in the prompt."""
    train_examples: int | None = None
    """Labelled examples it was trained on (fine-tuned and reference)."""
    demo_selection: str | None = None
    """balanced, random or nearest, for prompts with demos."""
    calibrated: bool = False
    stats: np.ndarray | None = None
    """Per-test-row statistics of the primary metric, same row order for every method; None if unknown."""
    accuracy: float | None = None
    """Accuracy, for the report, whatever the primary metric is."""
    degenerate: str | None = None
    """Why the method is not doing the task (one label for every row, ...); None when it is."""
    degenerate_cause: str | None = None
    """The likely cause and what to try, where the task knows better than the label-based defaults."""
    stored_bytes: int | None = None
    """What training saved, to store and serve besides the base model (an adapter, or a whole model)."""
    whole_model: bool = False
    """Every weight was trained (full-ft): it ships as a whole model copy, not an adapter."""

    @property
    def fine_tuned(self) -> bool:
        return self.kind == FINE_TUNED

    @property
    def viable(self) -> bool:
        return self.degenerate is None


def degeneracy(gold: list[str], predicted: list[str], seed: int = 0) -> str | None:
    """Why a classifier's predictions are degenerate, or None.

    Degenerate: every row gets the same label while the test rows have several, or macro-F1 not
    significantly better than always predicting the most common test label (the collapse that accuracy
    hides on imbalanced data). "Significantly": the one-sided 95% paired bootstrap bound of the difference
    (rows resampled jointly, seeded) is above zero, so a point estimate a hair above the majority guess on a
    few rows does not pass, and noise does not decide either way.
    """
    if not gold:
        return None
    labels = sorted(set(gold) | set(predicted))
    index = {label: i for i, label in enumerate(labels)}
    g = np.array([index[x] for x in gold])
    p = np.array([index[x] for x in predicted])
    values, counts = np.unique(g, return_counts=True)
    majority = labels[int(values[counts.argmax()])]
    if len(set(gold)) > 1 and len(set(predicted)) == 1:
        return f"predicts '{predicted[0]}' for every test row"
    if len(set(gold)) == 1:
        return None
    always = np.full_like(g, index[majority])
    score = macro_f1_from_indices(g, p, len(labels))
    floor = macro_f1_from_indices(g, always, len(labels))
    rows = np.random.default_rng(seed).integers(0, len(g), (BOOTSTRAP_RESAMPLES, len(g)))
    diffs = np.array(
        [
            macro_f1_from_indices(g[r], p[r], len(labels))
            - macro_f1_from_indices(g[r], always[r], len(labels))
            for r in rows
        ]
    )
    if float(np.quantile(diffs, 0.05)) <= 0:
        top, share = _top_prediction(predicted)
        return (
            f"macro-F1 {score:.3f} is no better than always predicting '{majority}' ({floor:.3f}) beyond "
            f"noise (one-sided 95% paired bootstrap); {share:.0%} of its predictions are '{top}'"
        )
    return None


def _top_prediction(predicted: list[str]) -> tuple[str, float]:
    values, counts = np.unique(np.array(predicted), return_counts=True)
    return str(values[counts.argmax()]), float(counts.max() / counts.sum())


@dataclass(frozen=True)
class Comparison:
    """``candidate`` against ``baseline`` on the same test rows, on the primary metric."""

    baseline: str
    candidate: str
    baseline_score: float
    candidate_score: float
    metric: str = ACCURACY_METRIC.name
    test: str | None = None
    """"exact McNemar" or "paired bootstrap"; None when per-row statistics are missing."""
    rows: int | None = None
    p_value: float | None = None
    """Two-sided."""
    lead_ci95: tuple[float, float] | None = None
    """95% paired-bootstrap interval of candidate minus baseline, in points."""
    discordant_share: float | None = None
    """Share of rows where exactly one of the two is right (McNemar only)."""
    rows_needed: int | None = None
    """Test rows for 80% power to detect ``rows_needed_points`` (Connor 1987 for McNemar; otherwise the
    normal approximation with the bootstrap standard error scaled by 1/sqrt(rows))."""
    rows_needed_points: float | None = None
    """The gap rows_needed is for: the observed gap, or 5 points when the observed gap is smaller."""
    baseline_accuracy: float | None = None
    candidate_accuracy: float | None = None
    candidates: int = 1
    """(baseline, candidate) pairs the compared pair was chosen among (1: chosen in advance)."""
    selection: str | None = None
    """How the pair was chosen and how the test allows for it, when chosen among several."""

    @property
    def lead_points(self) -> float:
        """Candidate minus baseline, in points (positive = candidate ahead)."""
        return (self.candidate_score - self.baseline_score) * 100

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < SIGNIFICANCE_ALPHA

    @property
    def significantly_ahead(self) -> bool:
        return self.significant and self.lead_points > 0

    @property
    def paired(self) -> bool:
        """Both methods had per-row statistics on the same rows, so the comparison was tested."""
        return self.lead_ci95 is not None and self.p_value is not None

    def ahead_by_more_than(self, points: float) -> bool:
        """The candidate is shown to be more than ``points`` ahead: the paired 95% interval's lower bound
        is above the margin (a one-sided test at 2.5% against a lead of ``points``), not the point
        estimate."""
        return self.lead_ci95 is not None and self.lead_ci95[0] > points

    def within(self, points: float) -> bool:
        """The candidate is shown to be less than ``points`` ahead (non-inferiority of the baseline at
        margin ``points``): the interval's upper bound is below the margin."""
        return self.lead_ci95 is not None and self.lead_ci95[1] < points

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "baseline_score": self.baseline_score,
            "candidate_score": self.candidate_score,
            "baseline_accuracy": self.baseline_accuracy,
            "candidate_accuracy": self.candidate_accuracy,
            "metric": self.metric,
            "test": self.test,
            "rows": self.rows,
            "p_value": self.p_value,
            "lead_points": self.lead_points,
            "lead_ci95": list(self.lead_ci95) if self.lead_ci95 else None,
            "discordant_share": self.discordant_share,
            "rows_needed": self.rows_needed,
            "rows_needed_points": self.rows_needed_points,
            "significant": self.significant,
            "candidates": self.candidates,
            "selection": self.selection,
        }


def compare(
    baseline: MethodEvidence, candidate: MethodEvidence, metric: PrimaryMetric, seed: int = 0
) -> Comparison:
    """Paired comparison of two methods on the same test rows (module docstring)."""
    return replace(
        _paired(baseline, candidate, metric, seed),
        baseline_accuracy=baseline.accuracy,
        candidate_accuracy=candidate.accuracy,
    )


def _paired(
    baseline: MethodEvidence, candidate: MethodEvidence, metric: PrimaryMetric, seed: int
) -> Comparison:
    names = (baseline.name, candidate.name, baseline.score, candidate.score, metric.name)
    a, b = baseline.stats, candidate.stats
    if a is None or b is None or len(a) != len(b) or len(a) == 0:
        return Comparison(*names)
    points = max(abs(candidate.score - baseline.score) * 100, MARGIN_POINTS)
    if metric.per_row_correct:
        right_a, right_b = a[:, 0] == a[:, 1], b[:, 0] == b[:, 1]
        test = mcnemar(right_b, right_a)
        low, high = paired_bootstrap_diff(right_b, right_a, seed=seed)
        rows = int(test["n"])
        discordant = (test["a_only"] + test["b_only"]) / rows
        return Comparison(
            *names,
            test="exact McNemar",
            rows=rows,
            p_value=float(test["p_value"]),
            lead_ci95=(low * 100, high * 100),
            discordant_share=discordant,
            rows_needed=mcnemar_sample_size(discordant, points / 100),
            rows_needed_points=points,
        )
    rows = len(a)
    rng = np.random.default_rng(seed)
    observed = metric.value(b) - metric.value(a)
    diffs = np.empty(BOOTSTRAP_RESAMPLES)
    for i in range(BOOTSTRAP_RESAMPLES):
        idx = rng.integers(0, rows, rows)
        diffs[i] = metric.value(b[idx]) - metric.value(a[idx])
    low, high = np.percentile(diffs, [2.5, 97.5])
    # Shifted null: how often a resample lands as far from the observed difference as it is from 0.
    p_value = float((np.sum(np.abs(diffs - observed) >= abs(observed)) + 1) / (BOOTSTRAP_RESAMPLES + 1))
    spread = float(np.std(diffs, ddof=1))
    z = norm.ppf(1 - PLANNING_ALPHA / 2) + norm.ppf(PLANNING_POWER)
    needed = int(np.ceil(rows * (z * spread / (points / 100)) ** 2)) if spread > 0 else None
    return Comparison(
        *names,
        test="paired bootstrap",
        rows=rows,
        p_value=min(p_value, 1.0),
        lead_ci95=(float(low) * 100, float(high) * 100),
        rows_needed=needed,
        rows_needed_points=points,
    )


def missing_evidence(c: Comparison, methods: dict[str, MethodEvidence]) -> str:
    """Which of the compared methods lack per-row statistics (or have them on other rows), in a clause."""
    a, b = methods.get(c.baseline), methods.get(c.candidate)
    lacking = [m.name for m in (a, b) if m is not None and (m.stats is None or len(m.stats) == 0)]
    if lacking:
        return f"{' and '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no per-row predictions"
    if a is not None and b is not None and a.stats is not None and b.stats is not None:
        return f"{a.name} has per-row predictions on {len(a.stats)} rows and {b.name} on {len(b.stats)}"
    return "no per-row predictions"


def describe(c: Comparison) -> str:
    """``"McNemar p=0.012, 95% CI +2.0 to +9.5 points, n=200"`` (or why there is no test)."""
    if c.rows is None or c.p_value is None or c.lead_ci95 is None:
        return "no per-row predictions, so no paired test"
    low, high = c.lead_ci95
    p_value = "<0.001" if c.p_value < 0.001 else f"={c.p_value:.3f}"
    test = {"exact McNemar": "McNemar", "max-t bootstrap": "max-t bootstrap"}.get(
        c.test or "", "paired bootstrap"
    )
    chosen = f", best of {c.candidates} compared pairs" if c.candidates > 1 else ""
    return f"{test} p{p_value}, 95% CI {low:+.1f} to {high:+.1f} points, n={c.rows}{chosen}"


def versus(c: Comparison, label: str) -> str:
    """``"lora n=200 0.880 vs few-shot k=8 0.850 macro-F1: gap +3.0 points (McNemar ...)"``."""
    return (
        f"{c.candidate} {c.candidate_score:.3f} vs {c.baseline} {c.baseline_score:.3f} {label}: "
        f"gap {c.lead_points:+.1f} points ({describe(c)})"
    )


def not_significant(c: Comparison, label: str) -> str:
    """No significant difference, with the test rows that would settle the smallest gap that matters."""
    if c.rows is None:
        return f"no significant difference can be shown: {versus(c, label)}"
    text = f"no significant difference at n={c.rows}: {versus(c, label)}"
    if c.rows_needed and c.rows_needed_points is not None:
        more = max(c.rows_needed - c.rows, 0)
        gap = f"a {c.rows_needed_points:.1f}-point gap"
        if abs(c.lead_points) < MARGIN_POINTS:
            gap = f"a {MARGIN_POINTS:.0f}-point gap (the smallest that would change the choice)"
        rate = (
            f" at this disagreement rate ({c.discordant_share:.1%} of rows)"
            if c.discordant_share is not None
            else ""
        )
        source = "Connor 1987" if c.discordant_share is not None else "normal approximation, bootstrap SE"
        text += (
            f"; settling {gap}{rate} takes about {c.rows_needed:,} test rows, {more:,} more than measured "
            f"(80% power, {source})"
        )
    return text
