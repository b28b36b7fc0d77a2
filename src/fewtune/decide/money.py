"""The money side of a verdict, in sentences with their figures: totals at the user's volume, the break-even,
the low-volume rule of thumb, and the value of one extra correct answer at which fine-tuning pays."""

from __future__ import annotations

from dataclasses import dataclass

from fewtune.cost import BreakEven, format_count, format_days, format_usd
from fewtune.decide.evidence import MethodEvidence
from fewtune.decide.thresholds import LOW_VOLUME_PER_DAY


@dataclass(frozen=True)
class Volume:
    per_day: float
    horizon_days: float

    @property
    def requests(self) -> float:
        return self.per_day * self.horizon_days


def cost_reason(a: MethodEvidence, b: MethodEvidence, v: Volume, be: BreakEven | None = None) -> str:
    """Both methods' totals at the volume over the horizon, and where ``b`` (the trained one) breaks even."""
    requests = v.requests
    text = (
        f"cost at {v.per_day:,.0f} calls/day over {v.horizon_days:,.0f} days "
        f"({format_count(requests)} requests): {a.name} {format_usd(a.cost.total(requests))} "
        f"({format_usd(a.cost.setup)} setup + {format_usd(a.cost.per_request)}/request), {b.name} "
        f"{format_usd(b.cost.total(requests))} ({format_usd(b.cost.setup)} + "
        f"{format_usd(b.cost.per_request)}/request)"
    )
    if be is None:
        return text
    if be.requests is None or be.requests == 0:
        return text + f"; break-even: {be.reason}"
    days = be.requests / v.per_day if v.per_day else float("inf")
    where = "within" if days <= v.horizon_days else "beyond"
    return text + (
        f"; fine-tuning breaks even after {format_count(be.requests)} requests ({be.reason}), "
        f"{format_days(days)} at this volume, {where} the {v.horizon_days:,.0f}-day horizon"
    )


def low_volume_reason(prompt: MethodEvidence, tuned: MethodEvidence, v: Volume) -> str:
    per_day = v.per_day * (prompt.cost.per_request - tuned.cost.per_request)
    extra = tuned.cost.setup - prompt.cost.setup
    if per_day <= 0:
        saving = f"fine-tuning saves nothing per request ({format_usd(per_day)}/day)"
    else:
        payback = f", paid back after {format_days(extra / per_day)}" if extra > 0 else ""
        saving = (
            f"fine-tuning saves {format_usd(per_day)}/day against {format_usd(extra)} more setup{payback}"
        )
    return (
        f"at {v.per_day:,.0f} calls/day {saving}: under ~{LOW_VOLUME_PER_DAY:,} calls/day the token saving "
        "rarely pays the engineering time"
    )


@dataclass(frozen=True)
class ValueOfCorrect:
    """What one extra correct answer must be worth for the more accurate method to pay over the horizon."""

    extra_cost: float
    """Dearer method's extra total cost over the horizon (negative: it is cheaper)."""
    extra_correct: float
    """Extra correct answers over the horizon (volume x horizon x score gap)."""

    @property
    def break_even_value(self) -> float | None:
        """Dollars per extra correct answer at which both cost the same; None when it is free or no gain."""
        if self.extra_cost <= 0 or self.extra_correct <= 0:
            return None
        return self.extra_cost / self.extra_correct


def value_of_correct(base: MethodEvidence, better: MethodEvidence, v: Volume) -> ValueOfCorrect:
    extra_cost = better.cost.total(v.requests) - base.cost.total(v.requests)
    extra_correct = v.requests * max(better.score - base.score, 0.0)
    return ValueOfCorrect(extra_cost, extra_correct)


def value_reason(value: ValueOfCorrect, tuned: str, v: Volume, label: str) -> str:
    per = value.break_even_value
    gained = f"about {format_count(value.extra_correct)} more right answers ({label} as the proxy)"
    if per is None:
        return (
            f"{tuned} gives {gained} over {v.horizon_days:,.0f} days and costs "
            f"{format_usd(-value.extra_cost)} less in total: it is both better and no dearer"
        )
    return (
        f"{tuned} gives {gained} over {v.horizon_days:,.0f} days for {format_usd(value.extra_cost)} more: "
        f"fine-tuning pays when one more correct answer is worth at least {format_usd(per)} "
        "(extra cost / extra correct answers; give --value-per-correct to decide)"
    )
