"""The verdict's records: what the rules decide from (:class:`Situation`) and what they return
(:class:`Recommendation`), plus the choice names the report and tests share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fewtune.decide.evidence import Comparison, MethodEvidence, missing_evidence
from fewtune.decide.metric import ACCURACY_METRIC, PrimaryMetric
from fewtune.methods import Method

CHOICE_PROMPT = "prompt"
CHOICE_FINE_TUNE = "fine-tune"
CHOICE_RETRIEVAL = "retrieval"
CHOICE_REFERENCE = Method.REFERENCE.value
CHOICE_NOT_GOOD_ENOUGH = "not-good-enough"
CHOICE_MEASURE_PROMPTING = "measure-prompting-first"
CHOICE_UNDECIDABLE = "undecidable"


@dataclass(frozen=True)
class Situation:
    """Everything the rules decide from."""

    methods: tuple[MethodEvidence, ...]
    volume_per_day: float
    horizon_days: float
    metric: PrimaryMetric = ACCURACY_METRIC
    metric_reason: str = ""
    kappa: dict[str, float] = field(default_factory=dict)
    """Cohen's kappa of each method's predictions (classification); empty when the task has none."""
    volume_given: bool = True
    gap: str | None = None
    """"knowledge" (facts) or "behaviour" (format), as the user says; None = unsaid."""
    value_per_correct: float | None = None
    """Dollars one extra correct answer is worth (--value-per-correct); None = unsaid."""
    class_balance: str | None = None
    """The LoRA trainer's --class-balance setting, for the degenerate-method advice."""
    extra_caveats: tuple[str, ...] = ()
    seed: int = 0
    floor: MethodEvidence | None = None
    """Open outputs: what needs no model (the most common output, or the input copied), with its per-row
    statistics; a method that is not significantly better than it is not good enough."""


@dataclass
class Recommendation:
    """What to do: a choice, the reasons (each with its figures), the caveats and the next steps."""

    choice: str
    method: str | None
    """The method to ship (or the best so far, for not-good-enough)."""
    headline: str
    reasons: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    metric: str = ACCURACY_METRIC.name
    metric_reason: str = ""
    comparison: Comparison | None = None
    """Best prompt (baseline) vs best fine-tuned (candidate), when both were measured."""
    comparisons: list[Comparison] = field(default_factory=list)
    """Every paired test the verdict used."""
    degenerate: dict[str, str] = field(default_factory=dict)
    break_even: Any = None
    settled: bool | None = True
    """False: provisional, the shipped option's comparison with ``unsettled['other']`` did not settle; None:
    no verdict between options (undecidable, prompting not measured)."""
    unsettled: Mapping[str, Any] | None = None
    """The open pair when provisional: ``{shipped, other, lead_points (other minus shipped), lead_ci95,
    rows, rows_to_settle, margin_points}``."""

    @property
    def shipped(self) -> str | None:
        """The method to ship; None when the verdict ships nothing yet (not good enough, measure first)."""
        return self.method if self.choice not in (CHOICE_NOT_GOOD_ENOUGH, CHOICE_MEASURE_PROMPTING) else None

    def to_dict(self) -> dict[str, Any]:
        c = self.comparison
        comparison = None
        if c is not None:
            comparison = {
                "prompt": c.baseline,
                "fine_tuned": c.candidate,
                "prompt_accuracy": c.baseline_accuracy,
                "fine_tuned_accuracy": c.candidate_accuracy,
                **c.to_dict(),
            }
        return {
            "choice": self.choice,
            "method": self.method,
            "headline": self.headline,
            "reasons": self.reasons,
            "caveats": self.caveats,
            "next_steps": self.next_steps,
            "metric": self.metric,
            "metric_reason": self.metric_reason,
            "comparison": comparison,
            "comparisons": [x.to_dict() for x in self.comparisons],
            "degenerate": self.degenerate,
            "settled": self.settled,
            "unsettled": self.unsettled,
            "break_even": None
            if self.break_even is None
            else {"requests": self.break_even.requests, "reason": self.break_even.reason},
        }


def best(methods: list[MethodEvidence]) -> MethodEvidence | None:
    """Highest primary score; ties go to the cheaper request."""
    return max(methods, key=lambda m: (m.score, -m.cost.per_request), default=None)


@dataclass
class Verdict:
    choice: str
    method: MethodEvidence | None
    headline: str
    reasons: list[str]
    settled: bool | None = True
    unsettled: Mapping[str, Any] | None = None


def undecidable(c: Comparison, methods: dict[str, MethodEvidence]) -> Verdict:
    """A comparison the verdict turns on has no paired evidence: neither side wins by default."""
    return Verdict(
        CHOICE_UNDECIDABLE,
        None,
        f"Undecidable: {c.candidate} and {c.baseline} cannot be compared on the same rows",
        [
            f"{missing_evidence(c, methods)}, so no paired test can say which is better "
            f"({c.candidate} {c.candidate_score:.3f}, {c.baseline} {c.baseline_score:.3f}); a verdict on "
            "averages alone would favour whichever side the rules default to",
            "to decide: re-run both methods into one run folder (fewtune run --resume keeps the finished "
            "ones), so predictions.jsonl holds each method's per-row predictions on the same test rows",
        ],
        settled=None,
    )
