"""``fewtune gate``: may the candidate replace the baseline? Each check is measured on the same test rows.

Checks, in order (thresholds from :class:`~fewtune.release.policy.Policy`):

1. **Same test rows**: both methods were scored on identical rows (row number, input and gold, hashed);
   otherwise nothing below is comparable and the gate cannot judge.
2. **Non-inferiority** on the primary metric: the paired 95% interval of candidate minus baseline (exact
   McNemar's rows for accuracy, a paired bootstrap otherwise; :func:`fewtune.decide.evidence.compare`) must
   lie above ``-margin``. Entirely below it: fail. Straddling it: the rows cannot tell (cannot judge), with
   the rows a decision would take.
3. **Class floors**: no class (label, extraction field) may fall below its floor, the baseline's recall minus
   ``class_drop_points`` or a floor the policy names. A class fails only when the candidate's recall is shown
   to be under it: the one-sided Clopper-Pearson upper bound at ``alpha / classes`` (Bonferroni) is below it,
   so that with many small classes routine variance does not fail the gate but a collapsed class does.
4. **Valid answers**: the candidate's rate of answers that are no label, unparsed or schema-invalid may
   exceed the baseline's by at most ``unparsed_points``, shown on the paired rows (one-sided 95% bound).
5. **p95 latency ratio** and 6. **cost per request ratio** against the policy's ratios. Latency is compared
   only when both runs were timed on the same hardware.

Exit codes: 0 every check passes, 1 a check fails, 2 a check cannot be judged (and none fails).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

from fewtune.decide.cost import format_usd
from fewtune.decide.evidence import MethodEvidence, compare, describe
from fewtune.decide.metric import PrimaryMetric
from fewtune.release.policy import Policy
from fewtune.release.sides import Side
from fewtune.tasks.registry import task_of_record

PASS, FAIL, UNKNOWN, SKIPPED = "pass", "fail", "cannot judge", "not checked"
# 2 is left to usage errors (a bad flag, run, method or file: click's and fewtune's own), so a script can
# tell "cannot judge" from a typo.
EXIT_CODES = {PASS: 0, FAIL: 1, UNKNOWN: 3}
# Hardware fields that must match for two runs' latencies to be compared.
HARDWARE_KEYS = ("platform", "cpu_count", "device")


@dataclass(frozen=True)
class Check:
    """One row of the gate's table."""

    name: str
    measured: str
    threshold: str
    status: str
    why: str


@dataclass(frozen=True)
class GateResult:
    baseline: Side
    candidate: Side
    policy: Policy
    metric: str
    checks: list[Check]

    @property
    def decision(self) -> str:
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else UNKNOWN if UNKNOWN in statuses else PASS

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]

    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.status in (FAIL, UNKNOWN)]

    def notes(self) -> list[str]:
        """One line per side that is its run's recommended method on a provisional verdict: the gate's
        checks stand either way, but the run itself did not settle what to ship."""
        notes = (s.verdict.note(s.spec) for s in (self.baseline, self.candidate) if s.verdict)
        return [n for n in notes if n]

    def to_dict(self) -> dict[str, Any]:
        def side(s: Side) -> dict[str, Any]:
            verdict = s.verdict.to_dict() if s.verdict else {"settled": None, "unsettled": None}
            return {
                "run": str(s.folder),
                "method": s.method,
                "recommended": s.verdict is not None,
                **verdict,
                "rows": len(s.lines),
                "rows_sha256": s.rows_hash,
            }

        return {
            "decision": self.decision,
            "exit_code": self.exit_code,
            "baseline": side(self.baseline),
            "candidate": side(self.candidate),
            "metric": self.metric,
            "policy": self.policy.to_dict(),
            "checks": [asdict(c) for c in self.checks],
            "notes": self.notes(),
        }


def _metric(baseline: Side, policy: Policy) -> PrimaryMetric:
    return task_of_record(baseline.task).release_metric(baseline.lines, policy.metric)


def _evidence(side: Side, metric: PrimaryMetric) -> MethodEvidence:
    stats = side.kind.row_stats(side.lines, side.labels)
    return MethodEvidence(name=side.method, kind="", score=metric.value(stats), cost=side.cost, stats=stats)


def same_rows(baseline: Side, candidate: Side) -> Check:
    name = "same test rows"
    counts = f"{len(baseline.lines)} / {len(candidate.lines)} rows"
    if baseline.task_name != candidate.task_name:
        why = f"different tasks ({baseline.task_name} vs {candidate.task_name})"
        return Check(name, counts, "identical rows", UNKNOWN, why)
    for side in (baseline, candidate):
        if not side.lines:
            why = f"{side.spec} has no per-row predictions (predictions.jsonl), so nothing can be paired"
            return Check(name, counts, "identical rows", UNKNOWN, why)
    if baseline.rows_hash != candidate.rows_hash:
        why = (
            "the runs were scored on different test rows (inputs or gold differ): rerun the candidate on the "
            "baseline's test file, --max-test and seed"
        )
        return Check(name, counts, "identical rows", UNKNOWN, why)
    return Check(
        name,
        f"{len(baseline.lines)} rows, sha256 {(baseline.rows_hash or '')[:12]}",
        "identical rows",
        PASS,
        "",
    )


def non_inferiority(baseline: Side, candidate: Side, metric: PrimaryMetric, policy: Policy) -> Check:
    a, b = _evidence(baseline, metric), _evidence(candidate, metric)
    c = compare(a, b, metric)
    margin = policy.margin_points
    measured = f"{c.candidate_score:.3f} vs {c.baseline_score:.3f} ({c.lead_points:+.1f} points)"
    threshold = f"95% CI of the gap above -{margin:g} points"
    if c.lead_ci95 is None:
        return Check(f"{metric.label} non-inferiority", measured, threshold, UNKNOWN, describe(c))
    low, high = c.lead_ci95
    if low > -margin:
        return Check(f"{metric.label} non-inferiority", measured, threshold, PASS, describe(c))
    if high < -margin:
        why = f"worse by more than the {margin:g}-point margin: {describe(c)}"
        return Check(f"{metric.label} non-inferiority", measured, threshold, FAIL, why)
    more = (
        f"; settling a {c.rows_needed_points:.1f}-point gap takes about {c.rows_needed:,} test rows"
        if c.rows_needed and c.rows_needed_points
        else ""
    )
    why = (
        f"the interval reaches past -{margin:g} points, so these rows cannot show non-inferiority: "
        f"{describe(c)}{more}"
    )
    return Check(f"{metric.label} non-inferiority", measured, threshold, UNKNOWN, why)


def upper_bound(hits: float, chances: float, alpha: float) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a recall ``hits / chances`` at level ``alpha``."""
    if hits >= chances:
        return 1.0
    return float(beta.ppf(1 - alpha, hits + 1, chances - hits))


def class_floors(baseline: Side, candidate: Side, policy: Policy) -> Check:
    base, cand = baseline.class_hits(), candidate.class_hits()
    kind = baseline.kind.class_word
    name = f"per-{kind} recall floors"
    if not base:
        return Check(
            name, "no classes or fields", "-", SKIPPED, f"the {baseline.task_name} task has no {kind}es"
        )
    alpha = policy.alpha / len(base)
    below, worst = [], None
    for label, (hits_b, chances_b) in sorted(base.items()):
        chances = float(chances_b.sum())
        if chances == 0:
            continue
        hits_c = float(cand.get(label, (np.zeros(1), np.zeros(1)))[0].sum())
        recall_b, recall_c = float(hits_b.sum()) / chances, hits_c / chances
        floor = policy.class_floors.get(label, max(recall_b - policy.class_drop_points / 100, 0.0))
        bound = upper_bound(hits_c, chances, alpha)
        gap = recall_c - floor
        if worst is None or gap < worst[0]:
            worst = (gap, label, recall_c, recall_b, floor, int(chances))
        if bound < floor:
            below.append(
                f"{label} {recall_c:.2f} (baseline {recall_b:.2f}, floor {floor:.2f}, n={int(chances)})"
            )
    threshold = (
        f"recall >= baseline - {policy.class_drop_points:g} points"
        + (f" ({len(policy.class_floors)} named floors)" if policy.class_floors else "")
        + f"; upper bound at {policy.alpha:g}/{len(base)}"
    )
    if below:
        why = f"{len(below)} {kind}(es) shown below the floor: " + "; ".join(below)
        return Check(name, f"{len(base)} {kind}es, {len(below)} below", threshold, FAIL, why)
    assert worst is not None
    _, label, recall_c, recall_b, floor, n = worst
    measured = f"{len(base)} {kind}es, none below"
    why = f"closest: {label} {recall_c:.2f} (baseline {recall_b:.2f}, floor {floor:.2f}, n={n})"
    return Check(name, measured, threshold, PASS, why)


def valid_answers(baseline: Side, candidate: Side, policy: Policy) -> Check:
    a, b = baseline.failed(), candidate.failed()
    diff = b - a
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, diff.size, size=(2000, diff.size))].mean(axis=1)
    low = float(np.percentile(means, 100 * policy.alpha)) * 100
    measured = f"{b.mean():.1%} vs {a.mean():.1%} without a valid answer"
    threshold = f"at most {policy.unparsed_points:g} points more than the baseline"
    if low > policy.unparsed_points:
        why = (
            f"the candidate fails to answer more often: one-sided {1 - policy.alpha:.0%} bound of the "
            f"increase +{low:.1f} points"
        )
        return Check("valid answers", measured, threshold, FAIL, why)
    return Check(
        "valid answers", measured, threshold, PASS, f"one-sided bound of the increase {low:+.1f} points"
    )


def ratio_check(
    name: str, base: float | None, cand: float | None, limit: float | None, show: Callable[[float], str]
) -> Check:
    if limit is None:
        return Check(name, "-", "-", SKIPPED, "switched off in the policy")
    threshold = f"at most {limit:g}x the baseline"
    if not base or not cand:
        return Check(name, "not measured", threshold, UNKNOWN, "one of the methods has no measurement")
    ratio = cand / base
    measured = f"{ratio:.2f}x ({show(cand)} vs {show(base)})"
    status = PASS if ratio <= limit else FAIL
    return Check(
        name, measured, threshold, status, "" if status == PASS else f"{ratio:.2f}x exceeds {limit:g}x"
    )


def _ms(value: float) -> str:
    return f"{value:.0f} ms"


def latency(baseline: Side, candidate: Side, policy: Policy) -> Check:
    check = ratio_check("p95 latency", baseline.p95_ms, candidate.p95_ms, policy.p95_ratio, _ms)
    if check.status in (PASS, FAIL):
        differ = [k for k in HARDWARE_KEYS if baseline.hardware.get(k) != candidate.hardware.get(k)]
        if differ:
            why = (
                f"timed on different hardware ({', '.join(differ)} differ): time both on the serving hardware"
            )
            return Check(check.name, check.measured, check.threshold, UNKNOWN, why)
    return check


def run_gate(baseline: Side, candidate: Side, policy: Policy) -> GateResult:
    """Every check of the module docstring; when the rows differ the rest are not comparable, so the gate
    stops there."""
    metric = _metric(baseline, policy)
    rows = same_rows(baseline, candidate)
    if rows.status != PASS:  # other rows or another task: nothing else is comparable
        return GateResult(baseline, candidate, policy, metric.label, [rows])
    checks = [
        rows,
        non_inferiority(baseline, candidate, metric, policy),
        class_floors(baseline, candidate, policy),
        valid_answers(baseline, candidate, policy),
        latency(baseline, candidate, policy),
        ratio_check(
            "cost per request",
            baseline.cost.per_request,
            candidate.cost.per_request,
            policy.cost_ratio,
            format_usd,
        ),
    ]
    return GateResult(baseline, candidate, policy, metric.label, checks)
