"""Pure decision rules: accuracy on the same test rows and cost at the user's volume -> what to ship, and why.

The rules follow the practitioners' guides on prompting vs fine-tuning (numbers below are theirs unless
marked as fewtune's own):

1. prompting with at least 5 examples is always measured first;
2. a knowledge gap (stated with ``--gap knowledge``, or every method staying low) calls for retrieval (RAG),
   not fine-tuning;
3. a difference counts only when a paired test on the same test rows finds it (exact McNemar);
4. best prompt within 5 points of the best fine-tuned method -> ship the prompt;
5. fine-tuning ahead by 15+ points and volume around 100,000 calls/day or more -> fine-tune;
6. under ~10,000 calls/day the token saving rarely pays the engineering time;
7. anything else depends on whether the accuracy gain is worth its cost; the figures say how much.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fewtune.cost import BreakEven, MethodCost, break_even, format_count, format_days, format_usd
from fewtune.metrics import mcnemar, mcnemar_sample_size, paired_bootstrap_diff

# Guides: "always measure prompting with at least 5 examples before fine-tuning".
MIN_PROMPT_SHOTS = 5
# Guides: best prompting within 5 accuracy points of best fine-tuned -> ship the prompt.
PROMPT_WITHIN_POINTS = 5.0
# Guides: fine-tuning ahead by 15+ points, at high volume -> fine-tune.
FINE_TUNE_LEAD_POINTS = 15.0
# Guides: "around 100,000 calls/day or more" is where fine-tuning's per-request saving adds up.
HIGH_VOLUME_PER_DAY = 100_000
# Guides: "under ~10,000 calls/day the token saving rarely pays the engineering time".
LOW_VOLUME_PER_DAY = 10_000
# Conventional significance level (Fisher): a paired difference with p < 0.05 counts.
SIGNIFICANCE_ALPHA = 0.05
# fewtune's own threshold for "every method stays low": the best method closes less than half the distance
# from chance to perfect accuracy. Chance is the larger of 1/labels and the most common test label's share.
LOW_ACCURACY_SHARE = 0.5
GAPS = ("knowledge", "behaviour")

CHOICE_PROMPT = "prompt"
CHOICE_FINE_TUNE = "fine-tune"
CHOICE_DEPENDS = "depends"
CHOICE_RETRIEVAL = "retrieval"
CHOICE_MEASURE_PROMPTING = "measure-prompting-first"


@dataclass(frozen=True)
class MethodEvidence:
    """One measured method, as the rules see it."""

    name: str
    """Unique method name, e.g. "few-shot k=8" or "lora n=200"."""
    accuracy: float
    """Accuracy on the test rows (0-1)."""
    cost: MethodCost
    """Setup and per-request cost under the resolved price table."""
    fine_tuned: bool
    """True for LoRA methods (with or without demos)."""
    shots: int = 0
    """Demos in the prompt."""
    correct: tuple[bool, ...] | None = None
    """Per-test-row correctness, same row order for every method (for the paired test); None if unknown."""


@dataclass(frozen=True)
class Situation:
    """Everything the rules decide from."""

    methods: tuple[MethodEvidence, ...]
    """Every measured method."""
    chance: float
    """Accuracy of guessing: max(1/labels, most common test label's share)."""
    volume_per_day: float
    """Expected requests per day."""
    horizon_days: float
    """Days the totals are summed over."""
    volume_given: bool = True
    """False when volume_per_day is fewtune's default rather than the user's figure."""
    gap: str | None = None
    """What the user says the model lacks: "knowledge" (facts) or "behaviour" (format); None = unsaid."""
    extra_caveats: tuple[str, ...] = ()
    """Caveats from the cost model and the run, passed through."""
    seed: int = 0
    """Seed of the paired bootstrap."""


@dataclass(frozen=True)
class Comparison:
    """Best prompting vs best fine-tuned method on the same rows."""

    prompt: str
    fine_tuned: str
    prompt_accuracy: float
    fine_tuned_accuracy: float
    rows: int | None = None
    """Paired test rows; None when per-row predictions are missing."""
    p_value: float | None = None
    """Exact McNemar p-value (two-sided)."""
    lead_ci95: tuple[float, float] | None = None
    """95% paired-bootstrap interval of fine-tuned minus prompt, in accuracy points."""
    discordant_share: float | None = None
    """Share of rows where exactly one of the two is right."""
    rows_needed: int | None = None
    """Test rows for 80% power to detect ``rows_needed_points`` at this disagreement rate (Connor 1987)."""
    rows_needed_points: float | None = None
    """The gap rows_needed is for: the observed gap, or 5 points when the observed gap is smaller."""

    @property
    def lead_points(self) -> float:
        """Fine-tuned minus prompt accuracy, in points (positive = fine-tuning ahead)."""
        return (self.fine_tuned_accuracy - self.prompt_accuracy) * 100

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < SIGNIFICANCE_ALPHA


@dataclass
class Recommendation:
    """What to do: a choice, the reasons (each with its figures) and the caveats."""

    choice: str
    """prompt | fine-tune | depends | retrieval | measure-prompting-first."""
    method: str | None
    """The method to ship, when there is one."""
    headline: str
    """One line for the top of the report."""
    reasons: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    break_even: BreakEven | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.comparison:
            out["comparison"]["lead_points"] = self.comparison.lead_points
            out["comparison"]["significant"] = self.comparison.significant
        return out


def _best(methods: list[MethodEvidence]) -> MethodEvidence:
    """Most accurate; ties go to the cheaper request."""
    return max(methods, key=lambda m: (m.accuracy, -m.cost.per_request))


def compare(prompt: MethodEvidence, tuned: MethodEvidence, seed: int = 0) -> Comparison:
    """Paired comparison of two methods on the same test rows (exact McNemar, paired bootstrap)."""
    names = (prompt.name, tuned.name, prompt.accuracy, tuned.accuracy)
    if not prompt.correct or not tuned.correct or len(prompt.correct) != len(tuned.correct):
        return Comparison(*names)
    test = mcnemar(tuned.correct, prompt.correct)
    low, high = paired_bootstrap_diff(tuned.correct, prompt.correct, seed=seed)
    rows = int(test["n"])
    discordant = (test["a_only"] + test["b_only"]) / rows
    points = max(abs(tuned.accuracy - prompt.accuracy) * 100, PROMPT_WITHIN_POINTS)
    return Comparison(
        *names,
        rows=rows,
        p_value=float(test["p_value"]),
        lead_ci95=(low * 100, high * 100),
        discordant_share=discordant,
        rows_needed=mcnemar_sample_size(discordant, points / 100),
        rows_needed_points=points,
    )


def _significance(c: Comparison) -> str:
    if c.rows is None or c.p_value is None or c.lead_ci95 is None:
        return "no per-row predictions, so no paired test"
    low, high = c.lead_ci95
    p_value = "<0.001" if c.p_value < 0.001 else f"={c.p_value:.3f}"
    return f"McNemar p{p_value}, 95% CI {low:+.1f} to {high:+.1f} points, n={c.rows}"


def _not_significant(c: Comparison) -> str:
    figures = (
        f"{c.fine_tuned} {c.fine_tuned_accuracy:.3f} vs {c.prompt} {c.prompt_accuracy:.3f}, "
        f"gap {c.lead_points:+.1f} points ({_significance(c)})"
    )
    if c.rows is None:
        return f"no significant difference can be shown: {figures}"
    text = f"no significant difference at n={c.rows}: {figures}"
    if c.rows_needed and c.rows_needed_points is not None and c.discordant_share is not None:
        more = max(c.rows_needed - c.rows, 0)
        gap = f"a {c.rows_needed_points:.1f}-point gap"
        if abs(c.lead_points) < PROMPT_WITHIN_POINTS:
            gap = f"a {PROMPT_WITHIN_POINTS:.0f}-point gap (the smallest that would change the choice)"
        text += (
            f"; settling {gap} at this disagreement rate ({c.discordant_share:.1%} of rows) takes about "
            f"{c.rows_needed:,} test rows, {more:,} more than measured (80% power, Connor 1987)"
        )
    return text


def _cost_reason(prompt: MethodEvidence, tuned: MethodEvidence, s: Situation, be: BreakEven) -> str:
    requests = s.volume_per_day * s.horizon_days
    p, t = prompt.cost, tuned.cost
    text = (
        f"cost at {s.volume_per_day:,.0f} calls/day over {s.horizon_days:,.0f} days "
        f"({format_count(requests)} requests): {prompt.name} {format_usd(p.total(requests))} "
        f"({format_usd(p.setup)} setup + {format_usd(p.per_request)}/request), {tuned.name} "
        f"{format_usd(t.total(requests))} ({format_usd(t.setup)} + {format_usd(t.per_request)}/request); "
    )
    if be.requests is None or be.requests == 0:
        return text + f"break-even: {be.reason}"
    days = be.requests / s.volume_per_day if s.volume_per_day else float("inf")
    where = "within" if days <= s.horizon_days else "beyond"
    return text + (
        f"fine-tuning breaks even after {format_count(be.requests)} requests ({be.reason}), "
        f"{format_days(days)} at this volume, {where} the {s.horizon_days:,.0f}-day horizon"
    )


def _low_volume_reason(prompt: MethodEvidence, tuned: MethodEvidence, s: Situation) -> str:
    per_day = s.volume_per_day * (prompt.cost.per_request - tuned.cost.per_request)
    extra = tuned.cost.setup - prompt.cost.setup
    if per_day <= 0:
        saving = f"fine-tuning saves nothing per request ({format_usd(per_day)}/day)"
    else:
        payback = f", paid back after {format_days(extra / per_day)}" if extra > 0 else ""
        saving = (
            f"fine-tuning saves {format_usd(per_day)}/day against {format_usd(extra)} more setup{payback}"
        )
    return (
        f"at {s.volume_per_day:,.0f} calls/day {saving}: under ~{LOW_VOLUME_PER_DAY:,} calls/day the "
        "token saving rarely pays the engineering time"
    )


def _depends_reason(c: Comparison, prompt: MethodEvidence, tuned: MethodEvidence, s: Situation) -> str:
    requests = s.volume_per_day * s.horizon_days
    extra_total = tuned.cost.total(requests) - prompt.cost.total(requests)
    gained = s.volume_per_day * c.lead_points / 100
    text = (
        f"it depends on whether {c.lead_points:+.1f} points of accuracy (about {gained:,.0f} more right "
        f"answers a day) are worth "
    )
    if extra_total > 0:
        text += f"{format_usd(extra_total)} more over {s.horizon_days:,.0f} days"
    else:
        text += (
            f"the engineering time and an adapter to serve: fine-tuning is also {format_usd(-extra_total)} "
            f"cheaper over {s.horizon_days:,.0f} days"
        )
    saving = prompt.cost.per_request - tuned.cost.per_request
    extra_setup = tuned.cost.setup - prompt.cost.setup
    if saving > 0 and extra_setup > 0 and extra_total > 0:
        volume = extra_setup / (saving * s.horizon_days)
        text += f"; on cost alone it would pay back within the horizon from {format_count(volume)} calls/day"
    return text


def recommend(s: Situation) -> Recommendation:
    """Apply the rules (module docstring) to one run's evidence."""
    caveats = list(s.extra_caveats)
    if not s.volume_given:
        caveats.insert(0, f"no --volume-per-day given: costs assume {s.volume_per_day:,.0f} calls/day")
    prompts = [m for m in s.methods if not m.fine_tuned]
    tuned_methods = [m for m in s.methods if m.fine_tuned]
    measured = ", ".join(m.name for m in s.methods)
    if not any(m.shots >= MIN_PROMPT_SHOTS for m in prompts):
        return Recommendation(
            CHOICE_MEASURE_PROMPTING,
            None,
            f"Measure prompting with at least {MIN_PROMPT_SHOTS} examples before deciding",
            [
                f"no prompting method with {MIN_PROMPT_SHOTS} or more examples was measured (measured: "
                f"{measured}); it is always measured first because it often closes the gap with no "
                f"training: re-run with --shots 0,{MIN_PROMPT_SHOTS} (or more) and few-shot in --methods"
            ],
            caveats,
        )
    best = _best(list(s.methods))
    floor = s.chance + LOW_ACCURACY_SHARE * (1 - s.chance)
    low = best.accuracy < floor
    low_text = (
        f"every method stays low: the best, {best.name}, reaches {best.accuracy:.3f}, below the floor "
        f"{floor:.3f} (halfway from chance {s.chance:.3f} to perfect)"
    )
    if s.gap == "knowledge" or (low and s.gap != "behaviour"):
        reasons = []
        if s.gap == "knowledge":
            reasons.append("you stated the model lacks knowledge (--gap knowledge), not behaviour")
        if low:
            reasons.append(low_text + "; that pattern suggests the model lacks facts the task needs")
        figures = [f"best prompt {_best(prompts).name} {_best(prompts).accuracy:.3f}"]
        if tuned_methods:
            figures.append(f"best fine-tuned {_best(tuned_methods).name} {_best(tuned_methods).accuracy:.3f}")
        reasons.append(
            ", ".join(figures)
            + "; fine-tuning on a few hundred examples teaches format and behaviour more reliably than new "
            "facts, while retrieval puts the missing facts into the prompt"
        )
        if s.gap is None:
            caveats.append(
                "if the model knows the facts but not the task's format or behaviour, re-run the report with "
                "--gap behaviour to apply the accuracy and cost rules instead"
            )
        headline = "Add retrieval (RAG) rather than fine-tuning: a possible knowledge gap"
        return Recommendation(CHOICE_RETRIEVAL, None, headline, reasons, caveats)
    if low:
        caveats.append(low_text + "; whatever ships will be weak")
    prompt = _best(prompts)
    if not tuned_methods:
        return Recommendation(
            CHOICE_PROMPT,
            prompt.name,
            f"Ship the prompt: {prompt.name}",
            [
                f"{prompt.name} is the most accurate prompt ({prompt.accuracy:.3f}) and no fine-tuned method "
                f"was measured; setup {format_usd(prompt.cost.setup)}, "
                f"{format_usd(prompt.cost.per_request)}/request"
            ],
            caveats,
        )
    tuned = _best(tuned_methods)
    c = compare(prompt, tuned, s.seed)
    be = break_even(prompt.cost, tuned.cost)
    cost = _cost_reason(prompt, tuned, s, be)
    low_volume = s.volume_per_day < LOW_VOLUME_PER_DAY
    extra = [_low_volume_reason(prompt, tuned, s)] if low_volume else []
    lead = c.lead_points
    versus = (
        f"{tuned.name} {tuned.accuracy:.3f} vs {prompt.name} {prompt.accuracy:.3f}: "
        f"gap {lead:+.1f} points ({_significance(c)})"
    )

    def result(choice: str, method: str | None, headline: str, reasons: list[str]) -> Recommendation:
        return Recommendation(choice, method, headline, reasons, caveats, c, be)

    if not c.significant:
        return result(
            CHOICE_PROMPT,
            prompt.name,
            f"Ship the prompt: {prompt.name} (no significant difference from fine-tuning)",
            [
                _not_significant(c),
                "without a proven gain the prompt is the simpler option: no training, no adapter to serve, "
                "changed by editing text",
                cost,
                *extra,
            ],
        )
    if lead <= PROMPT_WITHIN_POINTS:
        where = "ahead of" if lead < 0 else f"within {PROMPT_WITHIN_POINTS:.0f} points of"
        return result(
            CHOICE_PROMPT,
            prompt.name,
            f"Ship the prompt: {prompt.name}",
            [f"the best prompt is {where} the best fine-tuned method: {versus}", cost, *extra],
        )
    if lead >= FINE_TUNE_LEAD_POINTS and s.volume_per_day >= HIGH_VOLUME_PER_DAY:
        return result(
            CHOICE_FINE_TUNE,
            tuned.name,
            f"Fine-tune: {tuned.name}",
            [
                f"fine-tuning is ahead by {FINE_TUNE_LEAD_POINTS:.0f}+ points: {versus}",
                f"{s.volume_per_day:,.0f} calls/day is at or above ~{HIGH_VOLUME_PER_DAY:,}/day, where "
                "fine-tuning's accuracy and per-request cost both pay",
                cost,
            ],
        )
    why = (
        f"fine-tuning is ahead by {lead:.1f} points, above the {PROMPT_WITHIN_POINTS:.0f}-point margin"
        + (f" but below {FINE_TUNE_LEAD_POINTS:.0f}" if lead < FINE_TUNE_LEAD_POINTS else "")
        + f": {versus}"
    )
    if lead >= FINE_TUNE_LEAD_POINTS:
        why += f"; {s.volume_per_day:,.0f} calls/day is below ~{HIGH_VOLUME_PER_DAY:,}/day"
    return result(
        CHOICE_DEPENDS,
        None,
        f"It depends: {tuned.name} is {lead:.1f} points more accurate than {prompt.name}, at a cost",
        [why, _depends_reason(c, prompt, tuned, s), cost, *extra],
    )
