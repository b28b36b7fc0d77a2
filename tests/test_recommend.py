"""The recommendation rules as a table of cases: each rule, including "not significant"."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from fewtune.cost import MethodCost
from fewtune.metrics import mcnemar_sample_size
from fewtune.recommend import (
    CHOICE_DEPENDS,
    CHOICE_FINE_TUNE,
    CHOICE_MEASURE_PROMPTING,
    CHOICE_PROMPT,
    CHOICE_RETRIEVAL,
    MethodEvidence,
    Situation,
    recommend,
)

# Costs shaped like the sst2 run: prompting is cheap to set up, fine-tuning cheaper per request.
PROMPT_COST = MethodCost(setup=760, per_request=7e-6)
TUNED_COST = MethodCost(setup=3820, per_request=1.3e-6)


def prompt(correct: range, rows: int = 200, shots: int = 5, name: str = "") -> MethodEvidence:
    """A prompting method right on exactly the rows in ``correct``."""
    hits = tuple(i in correct for i in range(rows))
    label = name or ("zero-shot" if shots == 0 else f"few-shot k={shots}")
    return MethodEvidence(label, sum(hits) / rows, PROMPT_COST, False, shots, hits)


def tuned(correct: range, rows: int = 200) -> MethodEvidence:
    hits = tuple(i in correct for i in range(rows))
    return MethodEvidence("lora n=200", sum(hits) / rows, TUNED_COST, True, 0, hits)


@dataclass
class Case:
    name: str
    methods: list[MethodEvidence]
    choice: str
    method: str | None = None
    volume: float = 50_000
    gap: str | None = None
    chance: float = 0.5
    volume_given: bool = True
    reasons: list[str] = field(default_factory=list)
    """Fragments that must appear in the reasons (figures included)."""
    caveats: list[str] = field(default_factory=list)


CASES = [
    Case(
        "prompting with 5+ examples not measured first",
        [prompt(range(120), shots=0), tuned(range(180))],
        CHOICE_MEASURE_PROMPTING,
        reasons=["no prompting method with 5 or more examples", "zero-shot, lora n=200", "--shots 0,5"],
    ),
    Case(
        "prompt within 5 points (significant)",
        [prompt(range(170)), tuned(range(178))],
        CHOICE_PROMPT,
        "few-shot k=5",
        reasons=["within 5 points", "0.890 vs few-shot k=5 0.850", "+4.0 points", "p=0.008"],
    ),
    Case(
        "prompt ahead of fine-tuning",
        [prompt(range(180)), tuned(range(160))],
        CHOICE_PROMPT,
        "few-shot k=5",
        reasons=["ahead of the best fine-tuned", "-10.0 points"],
    ),
    Case(
        "fine-tune: 15+ points ahead at 100,000+/day",
        [prompt(range(140)), tuned(range(180))],
        CHOICE_FINE_TUNE,
        "lora n=200",
        volume=150_000,
        reasons=["ahead by 15+ points", "0.900 vs few-shot k=5 0.700", "p<0.001", "150,000 calls/day"],
    ),
    Case(
        "depends: 15+ points ahead but volume under 100,000/day",
        [prompt(range(140)), tuned(range(180))],
        CHOICE_DEPENDS,
        reasons=[
            "below ~100,000/day",
            "it depends on whether +20.0 points",
            "10,000 more right answers a day",
        ],
    ),
    Case(
        "depends: between 5 and 15 points",
        [prompt(range(160)), tuned(range(180))],
        CHOICE_DEPENDS,
        reasons=["ahead by 10.0 points", "but below 15", "break", "$"],
    ),
    Case(
        "under 10,000 calls/day: says the saving rarely pays, with numbers",
        [prompt(range(160)), tuned(range(180))],
        CHOICE_DEPENDS,
        volume=2_000,
        # (7e-6 - 1.3e-6) x 2,000 = $0.011/day against $3,060 more setup
        reasons=["under ~10,000 calls/day", "saves $0.011/day against $3,060 more setup", "paid back after"],
    ),
    Case(
        "not significant: 10-point lead on 30 rows",
        [prompt(range(24), rows=30), tuned(range(3, 30), rows=30)],
        CHOICE_PROMPT,
        "few-shot k=5",
        reasons=["no significant difference at n=30", "gap +10.0 points", "test rows", "more than measured"],
    ),
    Case(
        "not significant: tiny gap says how many rows settle 5 points",
        [prompt(range(150)), tuned(range(10, 165))],
        CHOICE_PROMPT,
        "few-shot k=5",
        reasons=["no significant difference at n=200", "a 5-point gap (the smallest", "Connor 1987"],
    ),
    Case(
        "no per-row predictions: no paired test, no claimed difference",
        [
            MethodEvidence("few-shot k=5", 0.70, PROMPT_COST, False, 5, None),
            MethodEvidence("lora n=200", 0.90, TUNED_COST, True, 0, None),
        ],
        CHOICE_PROMPT,
        "few-shot k=5",
        reasons=["no significant difference can be shown", "no per-row predictions"],
    ),
    Case(
        "every method low: possible knowledge gap -> retrieval",
        [prompt(range(130)), tuned(range(140))],
        CHOICE_RETRIEVAL,
        reasons=["every method stays low", "0.700, below the floor 0.750", "retrieval"],
        caveats=["--gap behaviour"],
    ),
    Case(
        "stated knowledge gap -> retrieval even when accurate",
        [prompt(range(140)), tuned(range(180))],
        CHOICE_RETRIEVAL,
        gap="knowledge",
        reasons=["--gap knowledge", "best fine-tuned lora n=200 0.900"],
    ),
    Case(
        "stated behaviour gap with low accuracy: rules apply, low flagged",
        [prompt(range(130)), tuned(range(139))],
        CHOICE_PROMPT,
        "few-shot k=5",
        gap="behaviour",
        caveats=["every method stays low", "whatever ships will be weak"],
    ),
    Case(
        "chance from a 5-label task lowers the floor",
        [prompt(range(130)), tuned(range(139))],
        CHOICE_PROMPT,
        "few-shot k=5",
        chance=0.2,
    ),
    Case(
        "only prompting measured",
        [prompt(range(120), shots=0), prompt(range(170), shots=8)],
        CHOICE_PROMPT,
        "few-shot k=8",
        reasons=["no fine-tuned method", "0.850"],
    ),
    Case(
        "volume not given is a caveat",
        [prompt(range(170)), tuned(range(178))],
        CHOICE_PROMPT,
        "few-shot k=5",
        volume=10_000,
        volume_given=False,
        caveats=["no --volume-per-day given: costs assume 10,000 calls/day"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_recommendation_rules(case: Case) -> None:
    rec = recommend(
        Situation(
            methods=tuple(case.methods),
            chance=case.chance,
            volume_per_day=case.volume,
            horizon_days=365,
            volume_given=case.volume_given,
            gap=case.gap,
        )
    )
    assert (rec.choice, rec.method) == (case.choice, case.method), rec.reasons
    reasons, caveats = " | ".join(rec.reasons), " | ".join(rec.caveats)
    for fragment in case.reasons:
        assert fragment in reasons, f"{fragment!r} not in: {reasons}"
    for fragment in case.caveats:
        assert fragment in caveats, f"{fragment!r} not in: {caveats}"
    assert rec.headline and rec.reasons
    as_dict = rec.to_dict()
    assert set(as_dict) >= {"choice", "reasons", "caveats"}


def test_cost_reason_cites_totals_and_break_even() -> None:
    rec = recommend(
        Situation(
            (prompt(range(170)), tuned(range(178))), chance=0.5, volume_per_day=50_000, horizon_days=365
        )
    )
    cost = next(r for r in rec.reasons if r.startswith("cost at"))
    # 18.25M requests: 760 + 7e-6 x 18.25M = $887.75; 3820 + 1.3e-6 x 18.25M = $3,844
    assert "18.2 million requests" in cost and "$887.75" in cost and "$3,844" in cost
    assert "breaks even after" in cost and "beyond the 365-day horizon" in cost


def test_connor_sample_size() -> None:
    # Connor (1987) worked example as in standard calculators: p01=0.45, p10=0.05 -> 23 pairs.
    assert mcnemar_sample_size(0.50, 0.40) == 23
    assert mcnemar_sample_size(0.10, 0.0) is None
    assert mcnemar_sample_size(0.105, 0.05) > mcnemar_sample_size(0.105, 0.10)
