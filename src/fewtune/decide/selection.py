"""Selection that does not fool itself: the best of several rows, tested as what it is.

The verdict compares the best prompt row with the best fine-tuned row (and the reference with the best LLM
row), each picked on the same test rows the comparison then uses. Picked that way, the best of 12 equally
good prompts reads "significantly ahead" of an equally good LoRA row far more often than the 2.5% a
one-sided 5% test promises (``bench/selection.py`` measures it). fewtune keeps the test rows for both
picking and testing, and widens the test instead: the chosen pair's interval and p-value are those of
simultaneous 95% intervals over *every* (baseline row, candidate row) pair that could have been chosen, from
a max-t bootstrap (Westfall & Young 1993; Romano & Wolf 2005): rows are resampled jointly for all methods,
each pair's resampled difference is studentised by its bootstrap standard error, and the 95th percentile of
the largest |t| over the pairs sets every pair's interval. Whatever pair the maximum picked, its interval
covers its true difference with 95% probability.

Why not a validation split from the pool instead: on the small pools fewtune is for (a few hundred labelled
rows) a split large enough to rank prompt variants reliably (a 3-point gap needs several hundred rows)
would take most of the LoRA training rows and the demos away; the correction costs no data, only width,
and the width is reported. With one pair there is nothing to correct and the comparison is the plain
paired test (exact McNemar for accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from fewtune.decide.evidence import Comparison, MethodEvidence, compare
from fewtune.decide.metric import PrimaryMetric
from fewtune.metrics import BOOTSTRAP_RESAMPLES

SIMULTANEOUS_LEVEL = 0.95


def _resampled(m: MethodEvidence, metric: PrimaryMetric, index: np.ndarray) -> np.ndarray:
    """The metric on every bootstrap resample of the rows (``index``: resamples x rows)."""
    assert m.stats is not None
    if metric.per_row_correct:
        right = (m.stats[:, 0] == m.stats[:, 1]).astype(float)
        return right[index].mean(axis=1)
    return np.array([metric.value(m.stats[row]) for row in index])


def compare_selected(
    baselines: Sequence[MethodEvidence],
    candidates: Sequence[MethodEvidence],
    baseline: MethodEvidence,
    candidate: MethodEvidence,
    metric: PrimaryMetric,
    seed: int = 0,
) -> Comparison:
    """``candidate`` (the best of ``candidates``) against ``baseline`` (the best of ``baselines``), with
    the interval and p-value adjusted for the choice among every pair with per-row evidence."""
    plain = compare(baseline, candidate, metric, seed)
    rows = len(baseline.stats) if baseline.stats is not None else 0

    def usable(m: MethodEvidence) -> bool:
        return m.stats is not None and len(m.stats) == rows and rows > 0

    pairs = [(a, b) for a in baselines for b in candidates if a.name != b.name and usable(a) and usable(b)]
    if not plain.paired or len(pairs) <= 1:
        return plain
    index = np.random.default_rng(seed).integers(0, rows, (BOOTSTRAP_RESAMPLES, rows))
    methods = {m.name: m for pair in pairs for m in pair}
    resampled = {name: _resampled(m, metric, index) for name, m in methods.items()}
    observed = {name: metric.value(m.stats) for name, m in methods.items() if m.stats is not None}
    largest = np.zeros(BOOTSTRAP_RESAMPLES)
    errors = {}
    for a, b in pairs:
        diffs = resampled[b.name] - resampled[a.name]
        error = float(np.std(diffs, ddof=1))
        errors[(a.name, b.name)] = error
        if error > 0:
            shift = diffs - (observed[b.name] - observed[a.name])
            largest = np.maximum(largest, np.abs(shift) / error)
    quantile = float(np.quantile(largest, SIMULTANEOUS_LEVEL))
    lead = observed[candidate.name] - observed[baseline.name]
    error = errors.get((baseline.name, candidate.name), 0.0)
    if error > 0:
        p_value = float((np.sum(largest >= abs(lead) / error) + 1) / (BOOTSTRAP_RESAMPLES + 1))
    else:
        p_value = 1.0 if lead == 0 else float(1 / (BOOTSTRAP_RESAMPLES + 1))
    low, high = (lead - quantile * error) * 100, (lead + quantile * error) * 100
    return replace(
        plain,
        test="max-t bootstrap",
        p_value=min(p_value, 1.0),
        lead_ci95=(low, high),
        candidates=len(pairs),
        selection=(
            f"best of {len({a.name for a, _ in pairs})} x {len({b.name for _, b in pairs})} rows on the same "
            f"test rows; simultaneous 95% intervals over the {len(pairs)} pairs (max-t bootstrap)"
        ),
    )
