"""The recommendation's figures (costs, break-even, value per correct answer, rows needed), its tests on
macro-F1, and the open outputs' floor, over synthetic evidence."""

from __future__ import annotations

import numpy as np
from recommend_helpers import (
    K5,
    PROMPT_COST,
    TUNED_COST,
    Case,
    decide,
    prompt,
    stats,
    tuned,
)

from fewtune.decide.cost import MethodCost
from fewtune.decide.evidence import FINE_TUNED, PROMPT, MethodEvidence
from fewtune.decide.metric import ACCURACY_METRIC, MACRO_F1_METRIC
from fewtune.decide.recommend import recommend
from fewtune.decide.verdict import (
    CHOICE_FINE_TUNE,
    CHOICE_NOT_GOOD_ENOUGH,
    CHOICE_PROMPT,
    Recommendation,
    Situation,
)
from fewtune.metrics import mcnemar_sample_size


def test_cost_reason_cites_totals_and_break_even() -> None:
    rec = decide(Case("", [prompt(range(170)), tuned(range(178))], CHOICE_PROMPT))
    cost = next(r for r in rec.reasons if r.startswith("cost at"))
    # 18.25M requests: 760 + 7e-6 x 18.25M = $887.75; 3820 + 1.3e-6 x 18.25M = $3,844
    assert "18.2 million requests" in cost and "$887.75" in cost and "$3,844" in cost
    assert "breaks even after" in cost and "beyond the 365-day horizon" in cost


def test_value_per_correct_threshold_figure() -> None:
    # Extra cost over 365 days at 50,000/day (18.25M requests): (3820 + 1.3e-6 x 18.25M) - (760 + 7e-6 x
    # 18.25M) = $2,955.98; extra correct answers: 18.25M x 0.10 = 1.825M -> $0.0016 per correct answer.
    rec = decide(Case("", [prompt(range(160)), tuned(range(180))], CHOICE_FINE_TUNE))
    assert rec.choice == CHOICE_FINE_TUNE
    assert "its extra $2,956 over 365 days buys about 1.82 million more right answers" in rec.reasons[0]
    assert "worth at least $0.0016" in rec.reasons[0]


def test_macro_f1_decisions_use_a_paired_bootstrap() -> None:
    rows = 300
    gold = np.array([0] * 240 + [1] * 60)
    collapsed = np.stack([gold, np.zeros(rows, dtype=int)], axis=1)
    good = np.stack([gold, np.where(np.arange(rows) % 10 == 0, 1 - gold, gold)], axis=1)
    few = MethodEvidence(
        K5, PROMPT, MACRO_F1_METRIC.value(collapsed), PROMPT_COST, 5, None, "balanced", stats=collapsed
    )
    lora = MethodEvidence(
        "lora n=200", FINE_TUNED, MACRO_F1_METRIC.value(good), TUNED_COST, 0, 200, stats=good
    )
    rec = decide(Case("", [few, lora], CHOICE_FINE_TUNE), MACRO_F1_METRIC)
    assert rec.comparison is not None and rec.comparison.test == "paired bootstrap"
    assert rec.comparison.significant and rec.choice == CHOICE_FINE_TUNE
    assert rec.metric == "macro-f1" and "macro-F1" in " ".join(rec.reasons)


def test_connor_sample_size() -> None:
    # Connor (1987) worked example as in standard calculators: p01=0.45, p10=0.05 -> 23 pairs.
    assert mcnemar_sample_size(0.50, 0.40) == 23
    assert mcnemar_sample_size(0.10, 0.0) is None
    assert mcnemar_sample_size(0.105, 0.05) > mcnemar_sample_size(0.105, 0.10)


def _floor(correct: range, rows: int = 200) -> MethodEvidence:
    s = stats(correct, rows)
    score = ACCURACY_METRIC.value(s)
    return MethodEvidence("the floor (the input copied)", "floor", score, MethodCost(0, 0), stats=s)


def _with_floor(methods: list[MethodEvidence], floor: MethodEvidence) -> Recommendation:
    return recommend(Situation(methods=tuple(methods), volume_per_day=50_000, horizon_days=365, floor=floor))


def test_a_method_no_better_than_the_floor_is_not_good_enough() -> None:
    # The prompt would ship (LoRA is not ahead), but it is within noise of copying the input.
    rec = _with_floor([prompt(range(60)), tuned(range(62))], _floor(range(58)))
    assert rec.choice == CHOICE_NOT_GOOD_ENOUGH and rec.method == K5
    assert "not significantly better than the floor (the input copied)" in rec.reasons[0]
    assert "the verdict among the methods would be: Ship the prompt" in rec.reasons[0]


def test_a_method_clearly_above_the_floor_keeps_its_verdict() -> None:
    rec = _with_floor([prompt(range(170)), tuned(range(172))], _floor(range(20)))
    assert rec.choice == CHOICE_PROMPT and rec.method == K5
