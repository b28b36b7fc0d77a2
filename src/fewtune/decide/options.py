"""The order of options: one rule over a list of candidates, each with its total cost and its score.

Every candidate (the best prompt, the best fine-tuned method, the best no-LLM reference, the retrieved-demos
prompt when retrieval is shown to help) is priced over the horizon at the run's volume: setup + per request x
requests. Which one is cheaper is a measured fact of the run, not of the option's kind: at 1,000 calls/day a
prompt undercuts a classifier whose engineering week dominates; at 10 million a day a short prompt undercuts
one that carries eight demos in every call.

The rule, for each candidate from the cheapest up: it ships unless a dearer candidate beats it.

- A dearer candidate that scores no higher never beats it: the cheaper option ships without a test.
- Totals within :data:`~fewtune.decide.thresholds.CLOSE_COST_SHARE` of each other: cost does not decide and
  the higher-scoring option is the default, settled when the paired test finds its lead significant (or shows
  the two within the margin of each other either way).
- Otherwise the dearer candidate beats it only when its lead is *shown* to exceed the guides' margin (the
  paired 95% interval's lower bound above :data:`~fewtune.decide.thresholds.MARGIN_POINTS`, simultaneous over
  the rows each side was picked among: :mod:`fewtune.decide.selection`). The margin is the guides'
  indifference threshold between a cheaper and a dearer option: a dearer option must be shown to be worth it.
  When its point estimate is past the margin but the interval reaches below it, the cheaper option ships
  *provisionally*.

With ``--value-per-correct`` the margin is not needed: each candidate is worth ``value x score x requests -
total cost``, the best value ships, and a pair is settled when the interval of the score gap excludes the gap
at which the dearer option's extra correct answers pay for its extra cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import norm

from fewtune.decide.cost import format_count, format_usd
from fewtune.decide.evidence import Comparison, MethodEvidence, describe, not_significant, versus
from fewtune.decide.money import Volume, pays_per_correct
from fewtune.decide.selection import compare_selected
from fewtune.decide.thresholds import CLOSE_COST_SHARE, MARGIN_POINTS
from fewtune.decide.verdict import Situation
from fewtune.metrics import PLANNING_ALPHA, PLANNING_POWER


@dataclass(frozen=True)
class Candidate:
    """One option the verdict can ship: its best row, what shipping it is called, the rows it was picked
    among (for the selection-adjusted test) and its total cost over the horizon."""

    method: MethodEvidence
    choice: str
    rows: tuple[MethodEvidence, ...]
    total: float

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def score(self) -> float:
        return self.method.score


def candidate(method: MethodEvidence, choice: str, rows: Sequence[MethodEvidence], v: Volume) -> Candidate:
    return Candidate(method, choice, tuple(rows) or (method,), method.cost.total(v.requests))


def close_in_cost(cheaper: Candidate, dearer: Candidate) -> bool:
    """The totals are within :data:`CLOSE_COST_SHARE` of each other (the dearer at most that much more)."""
    return dearer.total <= cheaper.total * (1 + CLOSE_COST_SHARE)


@dataclass(frozen=True)
class Step:
    """One pair weighed: ``cheaper`` against ``dearer``, who wins and whether the evidence settles it."""

    cheaper: Candidate
    dearer: Candidate
    winner: Candidate
    settled: bool
    reason: str
    comparison: Comparison | None = None
    """dearer (candidate) against cheaper (baseline); None when no test was needed."""
    margin: float = MARGIN_POINTS
    """The lead (dearer minus cheaper, points) the pair is settled against."""

    @property
    def loser(self) -> Candidate:
        return self.cheaper if self.winner is self.dearer else self.dearer

    @property
    def paired(self) -> bool:
        return self.comparison is None or self.comparison.paired


@dataclass(frozen=True)
class Ordering:
    """What the rule ships, the pairs it weighed for it, and the one left open (provisional) if any."""

    shipped: Candidate
    steps: tuple[Step, ...]
    """Every pair that decided: the shipped option against each dearer one, and each cheaper option
    against what beat it."""

    @property
    def open_step(self) -> Step | None:
        """The unsettled pair the verdict is provisional on (the one with the largest possible loss)."""
        unsettled = [s for s in self.steps if not s.settled]
        return max(unsettled, key=lambda s: s.loser.score, default=None)

    @property
    def settled(self) -> bool:
        return self.open_step is None

    @property
    def unpaired(self) -> Step | None:
        return next((s for s in self.steps if not s.paired), None)


def _costs(cheaper: Candidate, dearer: Candidate) -> str:
    return f"{format_usd(cheaper.total)} vs {format_usd(dearer.total)} over the horizon"


def weigh(cheaper: Candidate, dearer: Candidate, s: Situation, out: list[Comparison]) -> Step:
    """The rule (module docstring) for one pair; ``cheaper.total <= dearer.total``."""
    label = s.metric.label
    close = close_in_cost(cheaper, dearer)
    if not close and dearer.score <= cheaper.score:
        why = (
            f"{cheaper.name} costs less than {dearer.name} ({_costs(cheaper, dearer)}) and scores at least "
            f"as high ({cheaper.score:.3f} vs {dearer.score:.3f} {label}): the cheaper option ships, no test "
            "needed"
        )
        return Step(cheaper, dearer, cheaper, True, why)
    c = compare_selected(cheaper.rows, dearer.rows, cheaper.method, dearer.method, s.metric, s.seed)
    out.append(c)
    if not c.paired:
        return Step(cheaper, dearer, cheaper, False, "", c)
    if close:
        return _close(cheaper, dearer, c, label)
    if c.ahead_by_more_than(MARGIN_POINTS):
        pays = pays_per_correct(cheaper.method, dearer.method, Volume(s.volume_per_day, s.horizon_days))
        why = (
            f"{dearer.name} is shown to be more than {MARGIN_POINTS:.0f} points ahead of the cheaper "
            f"{cheaper.name} (the paired interval's lower bound is above the margin): {versus(c, label)}; "
            f"it costs {_costs(cheaper, dearer)}" + (f": {pays}" if pays else "")
        )
        return Step(cheaper, dearer, dearer, True, why, c)
    if c.lead_points > MARGIN_POINTS:
        why = (
            f"{dearer.name} may be more than {MARGIN_POINTS:.0f} points ahead of the cheaper {cheaper.name}, "
            f"but it is not shown (the paired interval reaches below the margin): {versus(c, label)}; the "
            f"cheaper option ships until more test rows settle it ({_costs(cheaper, dearer)})"
        )
        return Step(cheaper, dearer, cheaper, False, why, c)
    if not c.significant:
        where = not_significant(c, label)
    elif c.lead_points < 0:
        where = f"the cheaper {cheaper.name} is ahead: {versus(c, label)}"
    elif c.within(MARGIN_POINTS):
        where = f"{dearer.name} is shown to be within {MARGIN_POINTS:.0f} points of it: {versus(c, label)}"
    else:
        where = (
            f"{dearer.name} is not shown to be more than {MARGIN_POINTS:.0f} points ahead: {versus(c, label)}"
        )
    why = f"{cheaper.name} costs less than {dearer.name} ({_costs(cheaper, dearer)}) and {where}"
    return Step(cheaper, dearer, cheaper, True, why, c)


def _close(cheaper: Candidate, dearer: Candidate, c: Comparison, label: str) -> Step:
    """Totals within the cost tolerance: the higher score is the default, settled when significant (or when
    the two are shown to be within the margin of each other both ways)."""
    winner = dearer if dearer.score > cheaper.score else cheaper
    low, high = c.lead_ci95 or (-math.inf, math.inf)
    equivalent = low > -MARGIN_POINTS and high < MARGIN_POINTS
    settled = c.significant or equivalent
    if c.significant:
        evidence = f"its lead is significant: {versus(c, label)}"
    elif equivalent:
        evidence = (
            f"the two are shown to be within {MARGIN_POINTS:.0f} points of each other: {versus(c, label)}"
        )
    else:
        evidence = not_significant(c, label)
    why = (
        f"{cheaper.name} and {dearer.name} cost within {CLOSE_COST_SHARE:.0%} of each other "
        f"({_costs(cheaper, dearer)}), so cost does not decide: the higher-scoring {winner.name} is the "
        f"default, and {evidence}"
    )
    return Step(cheaper, dearer, winner, settled, why, c, margin=0.0)


def order(candidates: Sequence[Candidate], s: Situation, out: list[Comparison]) -> Ordering:
    """The cheapest candidate that no dearer candidate beats (module docstring), with the pairs that
    decided: every dearer candidate against it, and each cheaper one against what beat it."""
    ranked = sorted(candidates, key=lambda x: (x.total, -x.score))
    cache: dict[tuple[str, str], Step] = {}

    def step(cheaper: Candidate, dearer: Candidate) -> Step:
        key = (cheaper.name, dearer.name)
        if key not in cache:
            cache[key] = weigh(cheaper, dearer, s, out)
        return cache[key]

    passed_over: list[Step] = []
    for i, option in enumerate(ranked):
        against = [step(option, dearer) for dearer in ranked[i + 1 :]]
        unpaired = next((x for x in against if not x.paired), None)
        if unpaired is not None:
            return Ordering(option, (*passed_over, unpaired))
        beaten = [x for x in against if x.winner is not option]
        if not beaten:
            return Ordering(option, (*passed_over, *against))
        # The settled reason it lost, if any (one settled loss is enough to pass it over for good).
        passed_over.append(next((x for x in beaten if x.settled), beaten[0]))
    raise AssertionError("the dearest candidate has no dearer one to lose to")


def by_value(candidates: Sequence[Candidate], value: float, s: Situation, out: list[Comparison]) -> Ordering:
    """``--value-per-correct``: the candidate with the best value net of its cost ships; each pair with it is
    settled when the score gap's interval excludes the gap at which the dearer one pays."""
    requests = Volume(s.volume_per_day, s.horizon_days).requests
    worth = {x.name: value * x.score * requests - x.total for x in candidates}
    best = max(candidates, key=lambda x: (worth[x.name], -x.total))
    steps = []
    for other in candidates:
        if other is best:
            continue
        cheaper, dearer = sorted((best, other), key=lambda x: (x.total, -x.score))
        steps.append(_value_step(cheaper, dearer, best, value, requests, s, out))
    return Ordering(best, tuple(steps))


def _value_step(
    cheaper: Candidate,
    dearer: Candidate,
    winner: Candidate,
    value: float,
    requests: float,
    s: Situation,
    out: list[Comparison],
) -> Step:
    c = compare_selected(cheaper.rows, dearer.rows, cheaper.method, dearer.method, s.metric, s.seed)
    out.append(c)
    if not c.paired:
        return Step(cheaper, dearer, winner, False, "", c)
    pays_at = (dearer.total - cheaper.total) / (value * requests) * 100 if requests else math.inf
    low, high = c.lead_ci95 or (-math.inf, math.inf)
    settled = low > pays_at if winner is dearer else high < pays_at
    worth = {x.name: value * x.score * requests - x.total for x in (cheaper, dearer)}
    extra = format_usd(dearer.total - cheaper.total)
    threshold = (
        f"no lead pays for its extra {extra} (it would take {pays_at:,.0f} points)"
        if pays_at >= 100
        else f"it pays for its extra {extra} when it leads {cheaper.name} by more than {pays_at:.2f} points"
    )
    why = (
        f"at {format_usd(value)} per correct answer (--value-per-correct) over {format_count(requests)} "
        f"requests, {dearer.name} against {cheaper.name}: {threshold}; it leads by {c.lead_points:+.1f} "
        f"({describe(c)}): net of cost {winner.name} is worth more "
        f"({', '.join(f'{name} {format_usd(v)}' for name, v in worth.items())}), "
        + ("settled" if settled else f"not settled: the interval includes {pays_at:+.2f}")
    )
    return Step(cheaper, dearer, winner, settled, why, c, margin=pays_at)


def rows_to_settle(step: Step) -> int | None:
    """Test rows at which the pair's interval would clear its margin if the observed lead held (80% power at
    the planning level, the interval's half-width scaled by 1/sqrt(rows)); None when the lead sits on it."""
    c = step.comparison
    if c is None or c.lead_ci95 is None or not c.rows:
        return None
    gap = abs(c.lead_points - step.margin)
    low, high = c.lead_ci95
    error = (high - low) / 2 / norm.ppf(0.975)
    if gap == 0 or error <= 0:
        return None
    z = norm.ppf(1 - PLANNING_ALPHA / 2) + norm.ppf(PLANNING_POWER)
    return max(math.ceil(c.rows * (z * error / gap) ** 2), c.rows + 1)
