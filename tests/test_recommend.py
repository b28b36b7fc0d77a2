"""The recommendation rules as a table of cases over synthetic evidence (no model), reasons included."""

from __future__ import annotations

import pytest
from recommend_helpers import (
    K5,
    PROMPT_COST,
    TUNED_COST,
    Case,
    check,
    decide,
    method,
    mixed,
    prompt,
    reference,
    tuned,
)

from fewtune.decide.evidence import FINE_TUNED, PROMPT, MethodEvidence
from fewtune.decide.verdict import (
    CHOICE_FINE_TUNE,
    CHOICE_MEASURE_PROMPTING,
    CHOICE_NOT_GOOD_ENOUGH,
    CHOICE_PROMPT,
    CHOICE_REFERENCE,
    CHOICE_RETRIEVAL,
    CHOICE_UNDECIDABLE,
)

CASES = [
    Case(
        "prompting with 5+ examples not measured first",
        [prompt(range(120), shots=0), tuned(range(180))],
        CHOICE_MEASURE_PROMPTING,
        reasons=["no prompting method with 5 or more examples", "zero-shot, lora n=200", "--shots 0,5"],
        settled=None,
    ),
    Case(
        "a significant lead under the margin (+4.0, CI +1.5 to +7.0) keeps the cheaper prompt, settled",
        [prompt(range(170)), tuned(range(178))],
        CHOICE_PROMPT,
        K5,
        reasons=[
            "few-shot k=5 balanced costs less than lora n=200 ($887.75 vs $3,844 over the horizon)",
            "not shown to be more than 5 points ahead",
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
        "disagreement both ways: LoRA +10 on 400 rows (60 vs 20 rows alone) is shown past the margin",
        [prompt(mixed(280, 20, 60)[0], rows=400), tuned(mixed(280, 20, 60)[1], rows=400)],
        CHOICE_FINE_TUNE,
        "lora n=200",
        reasons=["shown to be more than 5 points ahead of the cheaper few-shot k=5 balanced", "+10.0 points"],
    ),
    Case(
        "disagreement both ways: LoRA +5.5 on 400 rows (44 vs 22 alone) is not shown past the margin",
        [prompt(mixed(300, 22, 44)[0], rows=400), tuned(mixed(300, 22, 44)[1], rows=400)],
        CHOICE_PROMPT,
        K5,
        reasons=["may be more than 5 points ahead of the cheaper", "not shown", "+5.5 points"],
        settled=False,
        headline="Provisional: ship few-shot k=5 balanced (cheaper); lora n=200 may be 5.5 points better, "
        "not settled at n=400",
    ),
    Case(
        "the cheaper prompt ahead of fine-tuning ships without a test",
        [prompt(range(180)), tuned(range(160))],
        CHOICE_PROMPT,
        K5,
        reasons=["scores at least as high (0.900 vs 0.800 accuracy)", "no test needed"],
    ),
    Case(
        "fine-tune: shown 25 points ahead at 150,000/day",
        [prompt(range(130)), tuned(range(180))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        volume=150_000,
        reasons=[
            "shown to be more than 5 points ahead",
            "0.900 vs few-shot k=5 balanced 0.650",
            "p<0.001",
            "150,000 calls/day",
        ],
    ),
    Case(
        "fine-tune at low volume too when shown far ahead, with the cost stated",
        [prompt(range(130)), tuned(range(180))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        volume=2_000,
        # (7e-6 - 1.3e-6) x 2,000 = $0.011/day against $3,060 more setup
        reasons=[
            "shown to be more than 5 points ahead",
            "cost at 2,000 calls/day",
            "saves $0.011/day against $3,060 more",
        ],
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
        "a dearer option shown past the margin ships, with the value of a correct answer at which it pays",
        # $2,956 more over the year / (18.25M requests x 0.10) = $0.0016 per extra correct answer
        [prompt(range(160)), tuned(range(180))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        reasons=["+10.0 points", "pays when one more correct answer is worth at least $0.0016"],
    ),
    Case(
        "a 10-point lead on 30 rows is not shown past the margin: provisional, with the rows to settle it",
        [prompt(range(24), rows=30), tuned(range(3, 30), rows=30)],
        CHOICE_PROMPT,
        K5,
        reasons=["may be more than 5 points ahead", "gap +10.0 points", "n=30"],
        settled=False,
        steps=["settle few-shot k=5 balanced vs lora n=200: about", "more than the 30 measured"],
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
        settled=None,
    ),
    Case(
        "missing evidence on one side does not favour the prompt",  # prompt 0.60 vs LoRA 0.90
        [
            MethodEvidence(K5, PROMPT, 0.60, PROMPT_COST, 5, demo_selection="balanced"),
            tuned(range(180)),
        ],
        CHOICE_UNDECIDABLE,
        reasons=["few-shot k=5 balanced has no per-row predictions"],
        settled=None,
    ),
    Case(
        "predictions on other rows are no paired evidence",
        [prompt(range(150)), tuned(range(170), rows=190)],
        CHOICE_UNDECIDABLE,
        reasons=["on 200 rows and lora n=200 on 190"],
        settled=None,
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
        reasons=["cost within 20% of each other", "the higher-scoring reference n=200", "significant"],
    ),
    Case(
        "every dearer option is weighed against the cheapest, and the higher rows are named",
        # prompt 0.80 (cheapest), LoRA 0.84 (not shown 5 points ahead), reference 0.78 (lower)
        [prompt(range(320), rows=400), tuned(range(336), rows=400), reference(range(312), rows=400)],
        CHOICE_PROMPT,
        K5,
        reasons=[
            "lora n=200 0.840 vs few-shot k=5 balanced 0.800",
            "costs less than reference n=200 ($887.75 vs $3,504 over the horizon) and scores at least as "
            "high",
        ],
    ),
    Case(
        "an LLM lead shown to be more than 5 points: the LLM method ships",
        [prompt(range(352), rows=400), reference(range(320), rows=400)],  # +8, 95% CI about [5.3, 10.8]
        CHOICE_PROMPT,
        K5,
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


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_recommendation_rules(case: Case) -> None:
    check(case)


def test_degenerate_methods_are_listed() -> None:
    rec = decide(CASES[[c.name for c in CASES].index("a degenerate LoRA is flagged and never recommended")])
    assert rec.degenerate == {"lora n=200": "predicts 'ham' for every test row"}
