"""The money side of a verdict, in sentences with their figures: totals at the user's volume, the break-even,
the low-volume rule of thumb, and the value of one extra correct answer at which a dearer option pays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fewtune.decide.cost import BreakEven, format_count, format_days, format_usd
from fewtune.decide.evidence import MethodEvidence
from fewtune.decide.thresholds import LOW_VOLUME_PER_DAY


@dataclass(frozen=True)
class Volume:
    per_day: float
    horizon_days: float

    @property
    def requests(self) -> float:
        return self.per_day * self.horizon_days


def _priced(m: MethodEvidence, requests: float) -> str:
    return (
        f"{m.name} {format_usd(m.cost.total(requests))} ({format_usd(m.cost.setup)} setup + "
        f"{format_usd(m.cost.per_request)}/request)"
    )


def cost_reason(methods: Sequence[MethodEvidence], v: Volume, be: BreakEven | None = None) -> str:
    """Each method's total at the volume over the horizon, cheapest first, and where fine-tuning breaks
    even against prompting (``be``)."""
    requests = v.requests
    ranked = sorted(methods, key=lambda m: m.cost.total(requests))
    text = (
        f"cost at {v.per_day:,.0f} calls/day over {v.horizon_days:,.0f} days "
        f"({format_count(requests)} requests): {', '.join(_priced(m, requests) for m in ranked)}"
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


def pays_per_correct(cheaper: MethodEvidence, dearer: MethodEvidence, v: Volume) -> str | None:
    """What one extra correct answer must be worth for ``dearer``'s extra cost over the horizon to pay
    (extra cost / extra correct answers), in a clause; None when it is no dearer or no better."""
    extra_cost = dearer.cost.total(v.requests) - cheaper.cost.total(v.requests)
    extra_correct = v.requests * (dearer.score - cheaper.score)
    if extra_cost <= 0 or extra_correct <= 0:
        return None
    return (
        f"its extra {format_usd(extra_cost)} over {v.horizon_days:,.0f} days buys about "
        f"{format_count(extra_correct)} more right answers, so it pays when one more correct answer is worth "
        f"at least {format_usd(extra_cost / extra_correct)} (give --value-per-correct to decide by value)"
    )
