"""A run folder's results rows and predictions -> the evidence the rules decide from (one place)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fewtune.decide.cost import MethodCost
from fewtune.decide.evidence import FINE_TUNED, PROMPT, REFERENCE, MethodEvidence, degeneracy
from fewtune.decide.metric import MetricChoice, label_stats
from fewtune.methods import Method
from fewtune.results.record import MethodRow
from fewtune.results.rows import Row

# Share of test rows cleanlab flags as likely mislabelled above which the verdict is caveated: at 2% label
# noise a 5-point margin is still clear of it; above it, gaps of a few points may be noise in the labels.
LABEL_NOISE_CAVEAT_SHARE = 0.02


def kind_of(row: Mapping[str, Any]) -> str:
    method = Row(row).kind
    if method is Method.REFERENCE:
        return REFERENCE
    return FINE_TUNED if method.trained else PROMPT


@dataclass(frozen=True)
class RunEvidence:
    methods: tuple[MethodEvidence, ...]
    kappa: dict[str, float]
    """Cohen's kappa of each method with per-row predictions."""


def run_evidence(
    rows: Sequence[MethodRow],
    predictions: Mapping[str, Sequence[Mapping[str, Any]]],
    labels: Sequence[str],
    choice: MetricChoice,
    costs: dict[str, MethodCost],
) -> RunEvidence:
    """One :class:`MethodEvidence` per results row: primary score from its predictions (or, without them,
    the row's own accuracy / macro-F1), its degeneracy and Cohen's kappa."""
    from sklearn.metrics import cohen_kappa_score

    metric = choice.metric
    evidence, kappa = [], {}
    for row in map(Row, rows):
        name = row.name
        lines = predictions.get(name) or []
        stats, degenerate = None, None
        if lines:
            gold = [str(p["gold"]) for p in lines]
            predicted = [str(p["predicted"]) for p in lines]
            stats = label_stats(gold, predicted, labels)
            score = metric.value(stats)
            degenerate = degeneracy(gold, predicted)
            if len(set(gold) | set(predicted)) > 1:
                kappa[name] = float(cohen_kappa_score(gold, predicted))
        else:
            score = row_score(row, metric.per_row_correct)
        evidence.append(
            MethodEvidence(
                name=name,
                kind=kind_of(row.data),
                score=score,
                cost=costs[name],
                shots=row.shots,
                train_examples=row.train_examples_recorded,
                demo_selection=row.demo_selection,
                calibrated=row.calibrated,
                stats=stats,
                accuracy=row.accuracy,
                degenerate=degenerate,
                stored_bytes=row.adapter_bytes,
                whole_model=row.kind is Method.FULL_FT,
            )
        )
    return RunEvidence(tuple(evidence), kappa)


def row_score(row: Row, per_row_correct: bool) -> float:
    """A label row's own score without its predictions: accuracy, or macro-F1 (accuracy where the row has
    none) when the metric is not a share of rows right."""
    score = row.accuracy if per_row_correct or row.macro_f1 is None else row.macro_f1
    if score is None:
        raise KeyError(f"method row {row.name!r} has no accuracy")
    return score


def check_caveats(dataset: Mapping[str, Any], margin_points: float) -> list[str]:
    """Data-check findings that bear on the verdict (the checks themselves are listed in the report)."""
    checks = dataset.get("checks") or {}
    caveats = []
    test_rows = int(dataset.get("test_size") or 0)
    flagged = int((checks.get("label_issue_counts") or {}).get("test") or 0)
    if test_rows and flagged / test_rows > LABEL_NOISE_CAVEAT_SHARE:
        share = flagged / test_rows
        agreement = ((checks.get("settings") or {}).get("classifier_agreement") or {}).get("test")
        judge = f" (its classifier agrees with {agreement:.0%} of test labels)" if agreement else ""
        caveats.append(
            f"{flagged} of {test_rows} test rows ({share:.1%}) are flagged as possibly mislabelled by "
            f"cleanlab{judge}: if they are, gaps of under about {100 * share:.0f} points may be label "
            f"noise, and the {margin_points:.0f}-point margin is measured against those labels; review "
            "label_issues.jsonl"
        )
    counts = checks.get("near_duplicate_counts") or {}
    leaks = int(counts.get("leaked_test_rows", len(checks.get("near_duplicate_leaks") or [])))
    if leaks:
        caveats.append(
            f"{leaks} test rows have a near-duplicate in the pool (embedding cosine at or above the "
            "threshold): demos and training may have seen them, so test scores can be optimistic"
        )
    small = checks.get("small_classes") or {}
    if small:
        names = ", ".join(f"{label} ({count})" for label, count in sorted(small.items()))
        caveats.append(
            f"classes with under 50 pool examples ({names}): fine-tuning and the reference see few of them"
        )
    return caveats


def accuracy_floor(label_counts: dict[str, int], kappa: float) -> float:
    """Accuracy at which a method whose predictions follow the test label shares reaches ``kappa``."""
    counts = np.array([c for c in label_counts.values() if c > 0], dtype=float)
    if counts.size == 0:
        return kappa
    expected = float(np.sum((counts / counts.sum()) ** 2))
    return expected + kappa * (1 - expected)
