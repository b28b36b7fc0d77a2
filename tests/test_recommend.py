"""The recommendation rules as a table of cases over synthetic evidence (no model), reasons included."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

import numpy as np
import pytest

from fewtune.cost import MethodCost
from fewtune.decide.evidence import FINE_TUNED, PROMPT, REFERENCE, MethodEvidence
from fewtune.decide.metric import ACCURACY_METRIC, MACRO_F1_METRIC, PrimaryMetric
from fewtune.decide.recommend import recommend
from fewtune.decide.verdict import (
    CHOICE_DEPENDS,
    CHOICE_FINE_TUNE,
    CHOICE_MEASURE_PROMPTING,
    CHOICE_NOT_GOOD_ENOUGH,
    CHOICE_PROMPT,
    CHOICE_REFERENCE,
    CHOICE_RETRIEVAL,
    CHOICE_UNDECIDABLE,
    Recommendation,
    Situation,
)
from fewtune.metrics import mcnemar_sample_size

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


K5 = "few-shot k=5 balanced"
CASES = [
    Case(
        "prompting with 5+ examples not measured first",
        [prompt(range(120), shots=0), tuned(range(180))],
        CHOICE_MEASURE_PROMPTING,
        reasons=["no prompting method with 5 or more examples", "zero-shot, lora n=200", "--shots 0,5"],
    ),
    Case(
        "a significant lead whose interval straddles the 5-point margin keeps the prompt",
        [prompt(range(170)), tuned(range(178))],
        CHOICE_PROMPT,
        K5,
        reasons=[
            "not shown to be more than 5 points behind",
            "0.890 vs few-shot k=5 balanced 0.850",
            "+4.0 points",
            "p=0.008",
        ],
    ),
    Case(
        "prompt shown to be within 5 points (the interval's upper bound below the margin)",
        [prompt(range(850), rows=1000), tuned(range(880), rows=1000)],
        CHOICE_PROMPT,
        K5,
        reasons=["shown to be within 5 points of", "+3.0 points"],
    ),
    Case(
        "disagreement both ways: LoRA +10 on 400 rows (60 vs 20 rows alone) is shown past 5, not past 15",
        [prompt(mixed(280, 20, 60)[0], rows=400), tuned(mixed(280, 20, 60)[1], rows=400)],
        CHOICE_DEPENDS,
        reasons=["more than 5 points ahead, but not more than 15", "+10.0 points"],
    ),
    Case(
        "disagreement both ways: LoRA +5.5 on 400 rows (44 vs 22 alone) is not shown past the margin",
        [prompt(mixed(300, 22, 44)[0], rows=400), tuned(mixed(300, 22, 44)[1], rows=400)],
        CHOICE_PROMPT,
        K5,
        reasons=["not shown to be more than 5 points behind", "+5.5 points"],
    ),
    Case(
        "prompt ahead of fine-tuning",
        [prompt(range(180)), tuned(range(160))],
        CHOICE_PROMPT,
        K5,
        reasons=["ahead of the best fine-tuned", "-10.0 points"],
    ),
    Case(
        "fine-tune: shown 15+ points ahead at 100,000+/day",
        [prompt(range(130)), tuned(range(180))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        volume=150_000,
        reasons=[
            "more than 15 points ahead",
            "0.900 vs few-shot k=5 balanced 0.650",
            "p<0.001",
            "150,000 calls/day",
        ],
    ),
    Case(
        "fine-tune at any volume when shown 15+ points ahead, with the cost stated",
        [prompt(range(130)), tuned(range(180))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        volume=2_000,
        # (7e-6 - 1.3e-6) x 2,000 = $0.011/day against $3,060 more setup
        reasons=[
            "more than 15 points ahead",
            "cost at 2,000 calls/day",
            "saves $0.011/day against $3,060 more",
        ],
    ),
    Case(
        "just above the 15-point margin: the interval's lower bound above it fine-tunes",
        [prompt(range(700), rows=1000), tuned(range(880), rows=1000)],  # +18, 95% CI about [15.6, 20.4]
        CHOICE_FINE_TUNE,
        "lora n=200",
        reasons=["more than 15 points ahead", "+18.0 points"],
    ),
    Case(
        "a +16-point lead whose interval reaches below 15 is the 5-15 band",
        [prompt(range(700), rows=1000), tuned(range(860), rows=1000)],  # +16, 95% CI about [13.7, 18.3]
        CHOICE_DEPENDS,
        reasons=["more than 5 points ahead, but not more than 15", "+16.0 points"],
    ),
    Case(
        "a near-chance prompt has no value to protect",
        [prompt(range(110)), tuned(range(170))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        volume=5_000,
        kappa={K5: 0.1, "lora n=200": 0.7},
        reasons=["near chance (Cohen's kappa 0.10)", "not doing the task at any volume"],
        steps=["a larger model may prompt well", "--model"],
    ),
    Case(
        "5-15 points: it depends on the value of one more correct answer",
        [prompt(range(160)), tuned(range(180))],
        CHOICE_DEPENDS,
        reasons=[
            "more than 5 points ahead, but not more than 15",
            "+10.0 points",
            "fine-tuning pays when one more correct answer is worth",
        ],
    ),
    Case(
        "5-15 points: a high value per correct answer decides for fine-tuning",
        [prompt(range(160)), tuned(range(180))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        value_per_correct=1.0,
        reasons=["you value one more correct answer at $1.00", "at or above"],
    ),
    Case(
        "5-15 points: a low value per correct answer keeps the prompt",
        [prompt(range(160)), tuned(range(180))],
        CHOICE_PROMPT,
        K5,
        value_per_correct=1e-6,
        reasons=["below the"],
    ),
    Case(
        "5-15 points and no dearer over the horizon: fine-tune",
        [prompt(range(160)), tuned(range(180))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        volume=5_000_000,
        reasons=["both better and no dearer"],
    ),
    Case(
        "not significant: 10-point lead on 30 rows",
        [prompt(range(24), rows=30), tuned(range(3, 30), rows=30)],
        CHOICE_PROMPT,
        K5,
        reasons=["no significant difference at n=30", "gap +10.0 points", "test rows", "more than measured"],
    ),
    Case(
        "not significant: tiny gap says how many rows settle 5 points",
        [prompt(range(150)), tuned(range(10, 165))],
        CHOICE_PROMPT,
        K5,
        reasons=["no significant difference at n=200", "a 5-point gap (the smallest", "Connor 1987"],
    ),
    Case(
        "no per-row predictions: undecidable, with what is missing",
        [
            MethodEvidence(K5, PROMPT, 0.70, PROMPT_COST, 5, demo_selection="balanced"),
            MethodEvidence("lora n=200", FINE_TUNED, 0.90, TUNED_COST, 0, 200),
        ],
        CHOICE_UNDECIDABLE,
        reasons=["have no per-row predictions", "re-run both methods into one run folder"],
    ),
    Case(
        "missing evidence on one side does not favour the prompt",  # prompt 0.60 vs LoRA 0.90
        [
            MethodEvidence(K5, PROMPT, 0.60, PROMPT_COST, 5, demo_selection="balanced"),
            tuned(range(180)),
        ],
        CHOICE_UNDECIDABLE,
        reasons=["few-shot k=5 balanced has no per-row predictions"],
    ),
    Case(
        "predictions on other rows are no paired evidence",
        [prompt(range(150)), tuned(range(170), rows=190)],
        CHOICE_UNDECIDABLE,
        reasons=["on 200 rows and lora n=200 on 190"],
    ),
    Case(
        "low scores alone are no knowledge gap: not good enough yet, with next steps",
        [prompt(range(110)), tuned(range(130))],
        CHOICE_NOT_GOOD_ENOUGH,
        "lora n=200",
        kappa={K5: 0.1, "lora n=200": 0.3},
        reasons=["Cohen's kappa 0.30", "Landis & Koch"],
        steps=["--train-sizes", "--demo-selection nearest", "a larger model may prompt well"],
    ),
    Case(
        "stated knowledge gap -> retrieval even when accurate",
        [prompt(range(140)), tuned(range(180))],
        CHOICE_RETRIEVAL,
        gap="knowledge",
        reasons=["--gap knowledge", "lora n=200 0.900"],
    ),
    Case(
        "measured: nearest demos beat fixed demos and fine-tuning -> retrieval",
        [prompt(range(100)), prompt(range(185), selection="nearest"), tuned(range(150))],
        CHOICE_RETRIEVAL,
        "few-shot k=5 nearest",
        reasons=["retrieved labelled examples beat fixed demos", "and they beat fine-tuning"],
    ),
    Case(
        "nearest demos beat fixed demos but not fine-tuning: no retrieval",
        [prompt(range(100)), prompt(range(130), selection="nearest"), tuned(range(190))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        volume=150_000,
    ),
    Case(
        "the reference ahead of every LLM method ships",
        [prompt(range(150)), tuned(range(170)), reference(range(196))],
        CHOICE_REFERENCE,
        "reference n=200",
        reasons=["the no-LLM classifier is ahead of lora n=200", "no LLM"],
    ),
    Case(
        "the reference is held against the method that ships, not the best-scoring row",
        # prompt 0.80, LoRA 0.84 (not shown 5 points ahead: the prompt ships), reference 0.78
        [prompt(range(320), rows=400), tuned(range(336), rows=400), reference(range(312), rows=400)],
        CHOICE_REFERENCE,
        "reference n=200",
        reasons=["few-shot k=5 balanced 0.800 vs reference n=200 0.780"],
    ),
    Case(
        "an LLM lead of +5.5 points with an interval below 5 at its low end is within the margin",
        [prompt(range(342), rows=400), reference(range(320), rows=400)],  # 95% CI about [3.3, 7.8]
        CHOICE_REFERENCE,
        "reference n=200",
        reasons=["not shown to be more than 5 points ahead", "+5.5 points"],
    ),
    Case(
        "an LLM lead shown to be more than 5 points: the LLM method ships",
        [prompt(range(352), rows=400), reference(range(320), rows=400)],  # +8, 95% CI about [5.3, 10.8]
        CHOICE_PROMPT,
        K5,
    ),
    Case(
        "the reference within 5 points ships",
        [prompt(range(150)), tuned(range(180)), reference(range(174))],
        CHOICE_REFERENCE,
        "reference n=200",
    ),
    Case(
        "the reference significantly more than 5 points behind does not ship",
        [prompt(range(176)), tuned(range(178)), reference(range(140))],
        CHOICE_PROMPT,
        K5,
    ),
    Case(
        "a degenerate LoRA is flagged and never recommended",
        [prompt(range(150)), tuned(range(190), degenerate="predicts 'ham' for every test row")],
        CHOICE_PROMPT,
        K5,
        reasons=["no fine-tuned method doing the task"],
        caveats=[
            "lora n=200 is degenerate and not recommended",
            "class imbalance",
            "--class-balance sampling",
        ],
        steps=["re-train with --class-balance sampling"],
    ),
    Case(
        "every method degenerate: not good enough yet",
        [
            method(K5, PROMPT, range(100), shots=5, selection="balanced", degenerate="predicts 'a'"),
            tuned(range(100), degenerate="predicts 'a' for every test row"),
        ],
        CHOICE_NOT_GOOD_ENOUGH,
        reasons=["every method is degenerate"],
    ),
    Case(
        "only prompting measured",
        [prompt(range(120), shots=0), prompt(range(170), shots=8)],
        CHOICE_PROMPT,
        "few-shot k=8 balanced",
        reasons=["no fine-tuned method", "0.850"],
    ),
    Case(
        "volume not given is a caveat",
        [prompt(range(170)), tuned(range(178))],
        CHOICE_PROMPT,
        K5,
        volume=10_000,
        volume_given=False,
        caveats=["no --volume-per-day given: costs assume 10,000 calls/day"],
    ),
    Case(
        "one training size: the sweep that would tell",
        [prompt(range(130)), tuned(range(180))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        steps=["one training size (200)", "--train-sizes 50,100,200,400"],
    ),
    Case(
        "a still-rising learning curve: label more",
        [prompt(range(120)), tuned(range(150), n=100), tuned(range(180), n=200)],
        CHOICE_FINE_TUNE,
        "lora n=200",
        # 0.75 -> 0.90 over one doubling: +15 points; expect 0.900 + 15 points, capped at 1.
        steps=["likely to help", "+15.0 accuracy points per doubling", "expect ~1.000 at 400"],
    ),
    Case(
        "a flat learning curve: more data unlikely to help",
        [prompt(range(120)), tuned(range(178), n=100), tuned(range(180), n=200)],
        CHOICE_FINE_TUNE,
        "lora n=200",
        steps=["unlikely to help much", "+1.0 accuracy points"],
    ),
]


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


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_recommendation_rules(case: Case) -> None:
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
    ships_nothing = case.choice in (CHOICE_NOT_GOOD_ENOUGH, CHOICE_MEASURE_PROMPTING, CHOICE_UNDECIDABLE)
    assert rec.shipped == (None if ships_nothing else case.method)
    as_dict = rec.to_dict()
    assert set(as_dict) >= {"choice", "reasons", "caveats", "next_steps", "metric", "degenerate"}


def test_degenerate_methods_are_listed() -> None:
    rec = decide(CASES[[c.name for c in CASES].index("a degenerate LoRA is flagged and never recommended")])
    assert rec.degenerate == {"lora n=200": "predicts 'ham' for every test row"}


def test_cost_reason_cites_totals_and_break_even() -> None:
    rec = decide(Case("", [prompt(range(170)), tuned(range(178))], CHOICE_PROMPT))
    cost = next(r for r in rec.reasons if r.startswith("cost at"))
    # 18.25M requests: 760 + 7e-6 x 18.25M = $887.75; 3820 + 1.3e-6 x 18.25M = $3,844
    assert "18.2 million requests" in cost and "$887.75" in cost and "$3,844" in cost
    assert "breaks even after" in cost and "beyond the 365-day horizon" in cost


def test_value_per_correct_threshold_figure() -> None:
    # Extra cost over 365 days at 50,000/day (18.25M requests): (3820 + 1.3e-6 x 18.25M) - (760 + 7e-6 x
    # 18.25M) = $2,955.98; extra correct answers: 18.25M x 0.10 = 1.825M -> $0.0016 per correct answer.
    rec = decide(Case("", [prompt(range(160)), tuned(range(180))], CHOICE_DEPENDS))
    assert "$0.0016" in rec.headline


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
