"""Whether a run's verdict is settled: the report's ``recommendation.settled`` and ``.unsettled``, read
for the registry and the gate.

A verdict is *provisional* when the shipped method's comparison with one other method did not settle on the
run's test rows (a dearer method may be better by more than the margin, or a cheaper one may be within it).
Reports written before the flag existed say neither (nor do verdicts that weighed no options): that is
*unknown*, never settled nor provisional.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fewtune.results.views import Recommendation

SETTLED, PROVISIONAL, UNKNOWN = "settled", "provisional", "-"


@dataclass(frozen=True)
class Unsettled:
    """The shipped method's comparison that did not settle."""

    shipped: str
    other: str
    lead_points: float
    """The other method minus the shipped one, in points of the primary metric."""
    lead_ci95: tuple[float, float] | None
    rows: int
    """Test rows the comparison was made on."""
    rows_to_settle: int | None
    """About how many test rows would settle it; None when no size would."""
    margin_points: float

    @classmethod
    def of(cls, value: Any) -> Unsettled | None:
        """From analysis.json's ``recommendation.unsettled``; None when it is missing or malformed."""
        if not isinstance(value, dict):
            return None
        try:
            interval, to_settle = value.get("lead_ci95"), value.get("rows_to_settle")
            return cls(
                shipped=str(value["shipped"]),
                other=str(value["other"]),
                lead_points=float(value["lead_points"]),
                lead_ci95=(float(interval[0]), float(interval[1])) if interval is not None else None,
                rows=int(value["rows"]),
                rows_to_settle=int(to_settle) if to_settle is not None else None,
                margin_points=float(value["margin_points"]),
            )
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        """E.g. "lora n=200 may be 7.2 points better than few-shot k=8 balanced (95% CI +1.0 to +13.4 at
        n=200; about 460 test rows would settle it)"."""
        if self.lead_points > 0:
            claim = f"{self.other} may be {self.lead_points:.1f} points better than {self.shipped}"
        else:
            behind = f", {-self.lead_points:.1f} points behind" if self.lead_points < 0 else ""
            claim = f"{self.other} may do as well as {self.shipped}{behind}"
        at = f"n={self.rows:,}"
        if self.lead_ci95:
            at = f"95% CI {self.lead_ci95[0]:+.1f} to {self.lead_ci95[1]:+.1f} at {at}"
        if self.rows_to_settle:
            at += f"; about {self.rows_to_settle:,} test rows would settle it"
        return f"{claim} ({at})"


@dataclass(frozen=True)
class Verdict:
    """A run's recommendation as far as release needs it."""

    method: str | None
    """The method to ship; None when the report recommends none (or was not written)."""
    settled: bool | None
    """True settled, False provisional, None unknown (a report older than the flag, or one that weighed no
    options against each other)."""
    unsettled: Unsettled | None = None
    """What did not settle, when provisional (None also when the report's detail is unreadable)."""

    @classmethod
    def of(cls, recommendation: Any) -> Verdict:
        """From analysis.json's ``recommendation`` object (or anything else, read as no recommendation)."""
        if not isinstance(recommendation, dict):
            return cls(None, None)
        read = Recommendation(recommendation)
        detail = Unsettled.of(read.unsettled) if read.settled is False else None
        return cls(read.method, read.settled, detail)

    @property
    def label(self) -> str:
        """settled, provisional or - (unknown)."""
        return settled_label(self.settled)

    def note(self, run: str) -> str | None:
        """One line for a provisional verdict (None otherwise): "runs/x's verdict is provisional: ..."."""
        if self.settled is not False:
            return None
        detail = self.unsettled.describe() if self.unsettled else "the report gives no detail"
        return f"{run}'s verdict is provisional: {detail}"

    def to_dict(self) -> dict[str, Any]:
        """``{settled, unsettled}`` as analysis.json spells them (``lead_ci95`` a list)."""
        unsettled = asdict(self.unsettled) if self.unsettled else None
        if unsettled and unsettled["lead_ci95"]:
            unsettled["lead_ci95"] = list(unsettled["lead_ci95"])
        return {"settled": self.settled, "unsettled": unsettled}


def settled_label(settled: bool | int | None) -> str:
    """The registry's ``settled`` column (1, 0 or NULL) or the flag, in words."""
    return UNKNOWN if settled is None else SETTLED if settled else PROVISIONAL
