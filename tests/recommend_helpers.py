"""Synthetic evidence for the recommendation rules' tests (no model): per-row outcomes with exact scores,
methods of each kind at the sst2 run's costs, and a table case with what its verdict must say."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

import numpy as np

from fewtune.decide.cost import MethodCost
from fewtune.decide.evidence import FINE_TUNED, PROMPT, REFERENCE, MethodEvidence
from fewtune.decide.metric import ACCURACY_METRIC, PrimaryMetric
from fewtune.decide.recommend import recommend
from fewtune.decide.verdict import Recommendation, Situation

# Costs shaped like the sst2 run: prompting is cheap to set up, fine-tuning cheaper per request.
PROMPT_COST = MethodCost(setup=760, per_request=7e-6)
TUNED_COST = MethodCost(setup=3820, per_request=1.3e-6)
REFERENCE_COST = MethodCost(setup=3500, per_request=2e-7)


def stats(correct: Container[int], rows: int) -> np.ndarray:
    """Per-row (gold, predicted) for a binary task, right on exactly the rows in ``correct``."""
    gold = np.arange(rows) % 2
    predicted = np.where([i in correct for i in range(rows)], gold, 1 - gold)
    return np.stack([gold, predicted], axis=1)


def mixed(right: int, only_a: int, only_b: int) -> tuple[range, set[int]]:
    """Correct-row sets that disagree both ways, as real methods do: both right on ``right`` rows, then A
    alone on ``only_a`` rows and B alone on ``only_b`` (nested sets, where every disagreement favours one
    side, make McNemar's p as small as it can be)."""
    return range(right + only_a), {*range(right), *range(right + only_a, right + only_a + only_b)}


def method(
    name: str,
    kind: str,
    correct: Container[int],
    rows: int = 200,
    shots: int = 0,
    train: int | None = None,
    selection: str | None = None,
    degenerate: str | None = None,
) -> MethodEvidence:
    s = stats(correct, rows)
    cost = {PROMPT: PROMPT_COST, FINE_TUNED: TUNED_COST, REFERENCE: REFERENCE_COST}[kind]
    score = ACCURACY_METRIC.value(s)
    return MethodEvidence(name, kind, score, cost, shots, train, selection, False, s, score, degenerate)


def prompt(
    correct: Container[int], rows: int = 200, shots: int = 5, selection: str = "balanced"
) -> MethodEvidence:
    name = "zero-shot" if shots == 0 else f"few-shot k={shots} {selection}"
    return method(name, PROMPT, correct, rows, shots, selection=selection if shots else None)


def tuned(
    correct: Container[int], rows: int = 200, n: int = 200, degenerate: str | None = None
) -> MethodEvidence:
    return method(f"lora n={n}", FINE_TUNED, correct, rows, train=n, degenerate=degenerate)


def reference(correct: Container[int], rows: int = 200, n: int = 200) -> MethodEvidence:
    return method(f"reference n={n}", REFERENCE, correct, rows, train=n)


@dataclass
class Case:
    name: str
    methods: list[MethodEvidence]
    choice: str
    method: str | None = None
    volume: float = 50_000
    gap: str | None = None
    kappa: dict[str, float] = field(default_factory=dict)
    value_per_correct: float | None = None
    volume_given: bool = True
    reasons: list[str] = field(default_factory=list)
    """Fragments that must appear in the reasons (figures included)."""
    caveats: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    settled: bool | None = True
    """Settled (True), provisional (False) or no verdict between options (None)."""
    headline: str = ""
    """A fragment the headline must hold."""


K5 = "few-shot k=5 balanced"


def decide(case: Case, metric: PrimaryMetric = ACCURACY_METRIC) -> Recommendation:
    return recommend(
        Situation(
            methods=tuple(case.methods),
            volume_per_day=case.volume,
            horizon_days=365,
            metric=metric,
            kappa=case.kappa,
            volume_given=case.volume_given,
            gap=case.gap,
            value_per_correct=case.value_per_correct,
        )
    )


def check(case: Case) -> Recommendation:
    """Decide ``case`` and hold the recommendation to it: choice and method, the fragments its reasons,
    caveats, steps and headline must hold, settled or provisional, and what it ships."""
    from fewtune.decide.verdict import (
        CHOICE_MEASURE_PROMPTING,
        CHOICE_NOT_GOOD_ENOUGH,
        CHOICE_UNDECIDABLE,
    )

    rec = decide(case)
    assert (rec.choice, rec.method) == (case.choice, case.method), rec.reasons
    for kind, fragments, texts in (
        ("reasons", case.reasons, rec.reasons),
        ("caveats", case.caveats, rec.caveats),
        ("steps", case.steps, rec.next_steps),
    ):
        joined = " | ".join(texts)
        for fragment in fragments:
            assert fragment in joined, f"{fragment!r} not in {kind}: {joined}"
    assert rec.headline and rec.reasons
    assert case.headline in rec.headline
    assert rec.settled == case.settled, rec.headline
    assert (rec.unsettled is None) == (case.settled is not False)
    ships_nothing = case.choice in (CHOICE_NOT_GOOD_ENOUGH, CHOICE_MEASURE_PROMPTING, CHOICE_UNDECIDABLE)
    assert rec.shipped == (None if ships_nothing else case.method)
    assert set(rec.to_dict()) >= {"choice", "reasons", "caveats", "next_steps", "metric", "degenerate"}
    return rec
