"""``fewtune monitor``: the canary's candidate against its baseline, live, from the server's request log.

Over a window (default 24 h) of a route's requests, each metric is judged pass / marginal / fail with an
effect-size tolerance and a test, so that routine variance is not an alarm (Kayenta's lesson: a
significant but tiny difference is not a regression, and a big one seen on a few requests is not yet
evidence):

- **p95 latency**: candidate p95 / baseline p95, with a seeded bootstrap interval of the ratio. Fail when the
  interval's lower bound is above ``p95_ratio`` (the rollback factor): shown slower than allowed. Marginal
  when the point ratio is above it but not shown.
- **error rate** (HTTP 5xx: the arm failed or timed out; 4xx are the caller's): the candidate's rate minus
  the baseline's, Newcombe's hybrid score interval (method 10, from Wilson intervals; good at rare events).
  Fail when its lower bound is above ``error_points`` (the 1% rollback trigger).
- **cost per request**: ratio of the means, bootstrap interval; fail when its lower bound is above
  ``cost_ratio``.
- **quality**, where feedback gave the right answer for requests: the candidate's share right minus the
  baseline's, Newcombe interval; fail when its upper bound is below ``-margin``.

Each interval is one-sided at ``alpha / checks`` (Bonferroni across the metrics). No metric is judged on
fewer than :data:`MIN_REQUESTS` requests per arm (``not enough``): then nothing is rolled back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Required

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from scipy.stats import norm
from typing_extensions import TypedDict

from fewtune.errors import FewtuneError
from fewtune.release.policy import Policy

PASS, MARGINAL, FAIL, NOT_ENOUGH, NOT_JUDGED = "pass", "marginal", "fail", "not enough", "not judged"
# The smallest sample whose largest latency is a 95% upper confidence bound for the p95
# (1 - 0.95^n >= 0.95 needs n >= 59): below it a p95 cannot be bounded at all, so no arm is judged on less.
MIN_REQUESTS = 60
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Verdict:
    metric: str
    baseline: str
    candidate: str
    interval: str
    threshold: str
    status: str
    why: str


@dataclass(frozen=True)
class Watch:
    route: str
    window_start: str
    window_end: str
    requests: dict[str, int]
    verdicts: list[Verdict]
    skipped_lines: int = 0
    """Lines of the request log in no shape to judge (torn, not JSON, a field of the wrong type)."""
    candidate_weight: float | None = None
    """The route's candidate weight when the window was checked (None: not asked)."""

    @property
    def rolled_back_already(self) -> bool:
        """The candidate gets no traffic: nothing left to roll back."""
        return self.candidate_weight == 0

    @property
    def decision(self) -> str:
        statuses = [v.status for v in self.verdicts]
        for status in (FAIL, NOT_ENOUGH, MARGINAL):
            if status in statuses:
                return status
        return PASS

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}


@with_config(ConfigDict(allow_inf_nan=False))
class LogLine(TypedDict, total=False):
    """A line of the request log that ``fewtune serve`` writes (docs/request-log.schema.json); a route
    request's line has the last five fields. What the monitor reads is checked (:data:`_LINE`): a number
    that is none, NaN or infinite, or a time without its zone, makes the line one to skip."""

    time: Required[str]
    model: str
    adapter: str | None
    endpoint: str
    latency_ms: float
    prompt_tokens: int | None
    completion_tokens: int | None
    status: Required[int]
    request_id: str
    route: str
    arm: str
    cost_usd: float | None
    answer: str | None


_LINE = TypeAdapter(LogLine)


def _when(entry: LogLine) -> datetime | None:
    """The line's time, or None when it is no ISO time with a zone."""
    try:
        when = datetime.fromisoformat(entry["time"])
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def read_log(path: Path, route: str, start: datetime, end: datetime) -> tuple[list[LogLine], int]:
    """The route's request-log lines timed within [start, end), and how many lines were skipped as
    malformed (a write cut short, not JSON, a field the monitor reads of the wrong type)."""
    if not path.is_file():
        raise FewtuneError(f"{path}: no request log here (fewtune serve writes it)")
    found, skipped = [], 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = _LINE.validate_json(line)
            except ValidationError:
                skipped += 1
                continue
            when = _when(entry)
            if when is None:
                skipped += 1
            elif entry.get("route") == route and start <= when < end and entry.get("arm"):
                found.append(entry)
    return found, skipped


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float) -> tuple[float, float]:
    """Interval of p1 - p2 (Newcombe 1998, method 10, from Wilson score intervals)."""

    def wilson(x: int, n: int) -> tuple[float, float]:
        p = x / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return centre - half, centre + half

    p1, p2 = x1 / n1, x2 / n2
    (l1, u1), (l2, u2) = wilson(x1, n1), wilson(x2, n2)
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return low, high


def _ratio_interval(
    cand: np.ndarray, base: np.ndarray, stat: Any, alpha: float, seed: int
) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    ratios = np.empty(BOOTSTRAP)
    for i in range(BOOTSTRAP):
        c = cand[rng.integers(0, cand.size, cand.size)]
        b = base[rng.integers(0, base.size, base.size)]
        ratios[i] = stat(c) / max(stat(b), 1e-12)
    point = stat(cand) / max(stat(base), 1e-12)
    return point, float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))


def _ratio_verdict(
    metric: str, cand: np.ndarray, base: np.ndarray, stat: Any, limit: float, alpha: float, unit: str
) -> Verdict:
    if not cand.size or not base.size:  # an arm with no answer at all (its errors are the error check's)
        why = f"{cand.size} candidate and {base.size} baseline requests answered"
        return Verdict(metric, "-", "-", "-", f"lower bound <= {limit:g}x", NOT_JUDGED, why)
    point, low, high = _ratio_interval(cand, base, stat, alpha, seed=0)
    shown = f"{point:.2f}x ({low:.2f}-{high:.2f})"
    threshold = f"lower bound <= {limit:g}x"
    base_text, cand_text = f"{stat(base):{unit}}", f"{stat(cand):{unit}}"
    if low > limit:
        return Verdict(metric, base_text, cand_text, shown, threshold, FAIL, f"shown above {limit:g}x")
    if point > limit:
        why = f"{point:.2f}x is above {limit:g}x but not shown beyond noise yet"
        return Verdict(metric, base_text, cand_text, shown, threshold, MARGINAL, why)
    return Verdict(metric, base_text, cand_text, shown, threshold, PASS, "")


def _answered(lines: Sequence[LogLine], key: Literal["latency_ms", "cost_usd"]) -> np.ndarray:
    """``key`` of the requests that were answered (status below 400)."""
    return np.array([float(x.get(key) or 0.0) for x in lines if int(x["status"]) < 400])


def judge(
    lines: Sequence[LogLine],
    route: str,
    policy: Policy,
    start: datetime,
    end: datetime,
    feedback: dict[str, str] | None = None,
) -> Watch:
    """The module docstring's verdicts on one window's log lines."""
    arms: dict[str, list[LogLine]] = {"baseline": [], "candidate": []}
    for line in lines:
        arms.setdefault(str(line["arm"]), []).append(line)
    base, cand = arms["baseline"], arms["candidate"]
    counts = {"baseline": len(base), "candidate": len(cand)}
    window = (start.isoformat(timespec="seconds"), end.isoformat(timespec="seconds"))
    if min(counts.values()) < MIN_REQUESTS:
        why = (
            f"{counts['candidate']} candidate and {counts['baseline']} baseline requests; "
            f"{MIN_REQUESTS} each needed"
        )
        verdict = Verdict(
            "all",
            str(counts["baseline"]),
            str(counts["candidate"]),
            "-",
            f">= {MIN_REQUESTS} requests per arm",
            NOT_ENOUGH,
            why,
        )
        return Watch(route, *window, counts, [verdict])
    checks = 3 + (1 if feedback else 0)
    alpha = policy.alpha / checks
    z = float(norm.ppf(1 - alpha))
    verdicts = []
    if policy.p95_ratio is not None:
        verdicts.append(
            _ratio_verdict(
                "p95 latency (ms)",
                _answered(cand, "latency_ms"),
                _answered(base, "latency_ms"),
                lambda a: float(np.percentile(a, 95)),
                policy.p95_ratio,
                alpha,
                ".0f",
            )
        )
    errors = [sum(int(x["status"]) >= 500 for x in arm) for arm in (cand, base)]
    low, high = newcombe(errors[0], len(cand), errors[1], len(base), z)
    limit = policy.unparsed_points / 100
    diff = errors[0] / len(cand) - errors[1] / len(base)
    status = FAIL if low > limit else MARGINAL if diff > limit else PASS
    verdicts.append(
        Verdict(
            "error rate",
            f"{errors[1] / len(base):.1%}",
            f"{errors[0] / len(cand):.1%}",
            f"{100 * diff:+.1f} points ({100 * low:+.1f} to {100 * high:+.1f})",
            f"lower bound <= +{100 * limit:g} points",
            status,
            "" if status == PASS else f"{errors[0]} of {len(cand)} candidate requests failed",
        )
    )
    if policy.cost_ratio is not None:
        verdicts.append(
            _ratio_verdict(
                "cost per request ($)",
                _answered(cand, "cost_usd"),
                _answered(base, "cost_usd"),
                lambda a: float(np.mean(a)),
                policy.cost_ratio,
                alpha,
                ".3g",
            )
        )
    if feedback:
        verdicts.append(_quality(base, cand, feedback, policy, z))
    return Watch(route, *window, counts, verdicts)


def _quality(
    base: list[LogLine], cand: list[LogLine], feedback: dict[str, str], policy: Policy, z: float
) -> Verdict:
    def right(lines: list[LogLine]) -> tuple[int, int]:
        scored = [x for x in lines if x.get("request_id") in feedback and x.get("answer") is not None]
        return sum(str(x["answer"]) == feedback[x["request_id"]] for x in scored), len(scored)

    (xc, nc), (xb, nb) = right(cand), right(base)
    threshold = f"upper bound >= -{policy.margin_points:g} points"
    if min(nc, nb) < MIN_REQUESTS:
        return Verdict(
            "quality (feedback)",
            f"n={nb}",
            f"n={nc}",
            "-",
            threshold,
            NOT_JUDGED,
            f"feedback on {nc} candidate and {nb} baseline requests; {MIN_REQUESTS} each needed",
        )
    low, high = newcombe(xc, nc, xb, nb, z)
    diff = xc / nc - xb / nb
    margin = policy.margin_points / 100
    status = FAIL if high < -margin else MARGINAL if diff < -margin else PASS
    return Verdict(
        "quality (feedback)",
        f"{xb / nb:.3f}",
        f"{xc / nc:.3f}",
        f"{100 * diff:+.1f} points ({100 * low:+.1f} to {100 * high:+.1f})",
        threshold,
        status,
        "",
    )


def read_feedback(path: Path | None) -> dict[str, str]:
    """request id -> the right answer, from the server's feedback log (later lines win)."""
    if path is None or not path.is_file():
        return {}
    found = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
                found[str(entry["request_id"])] = str(entry["answer"])
            except (ValueError, KeyError, TypeError, IndexError, RecursionError):
                continue
    return found


def window_of(seconds: float, now: datetime | None = None) -> tuple[datetime, datetime]:
    end = now or datetime.now(UTC)
    return end - timedelta(seconds=seconds), end
