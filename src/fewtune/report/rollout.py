"""Rollout plan for the chosen method: pre-deploy checks and rollback triggers, with measured baselines.

The trigger factors (:mod:`fewtune.decide.thresholds`, shared with ``fewtune gate`` and ``fewtune monitor``)
are fewtune's defaults, not an industry standard: replace them with your service's SLOs in a gate policy
file. The canary step follows the practice in Google's SRE Workbook, chapter 16 ("Canarying Releases").
"""

from __future__ import annotations

from dataclasses import dataclass

from fewtune.decide.cost import MethodCost, format_usd
from fewtune.decide.thresholds import (
    CANARY_HOURS,
    CANARY_TRAFFIC_SHARE,
    ROLLBACK_COST_FACTOR,
    ROLLBACK_ERROR_RATE,
    ROLLBACK_P95_FACTOR,
)
from fewtune.results.rows import Row


@dataclass(frozen=True)
class Trigger:
    """One rollback trigger: the metric, its measured baseline and the threshold that rolls back."""

    metric: str
    baseline: str
    rollback_when: str


@dataclass(frozen=True)
class Rollout:
    """The rollout plan for one method."""

    method: str
    """The method the plan is for."""
    chosen: bool
    """False when no method is recommended yet and the plan uses the most accurate one as the baseline."""
    checks: list[str]
    """Pre-deploy checks, in order."""
    triggers: list[Trigger]
    """Rollback triggers."""


def rollout_plan(
    row: Row, cost: MethodCost, test_rows: int, chosen: bool, adapter: str | None = None
) -> Rollout:
    """Checks and triggers for the method in results.json ``row``, filled with its measured figures;
    ``adapter`` is where the plan says the adapter is (default: the row's ``adapter_path``)."""
    name = row.name
    primary = row.primary
    accuracy: float | None
    if (primary.get("ci95") or [None])[0] is not None:  # the metric the verdict was decided on
        label, accuracy, (low, high) = primary["label"], primary["value"], primary["ci95"]
    else:
        label, accuracy, (low, high) = "accuracy", row.accuracy, row.accuracy_ci95
    p95 = row.p95
    nearest = row.demo_selection == "nearest"
    if row.kind.trained:
        adapter = adapter or row.adapter_path or "the adapter folder"
        size = row.adapter_bytes
        freeze = f"Freeze the adapter ({adapter}" + (f", {size / 1e6:.1f} MB" if size else "") + ")"
        if row.shots:
            demos = "the demo pool and embedding model" if nearest else f"the {row.shots} demos"
            freeze += f" and {demos}"
        freeze += "; load it in the serving stack (peft or vLLM's LoRA support) with the same base model."
    elif nearest:
        freeze = (
            f"Freeze the prompt (task line, label list) and the demo picker: the demo pool and the sentence "
            f"embedding model that choose each request's {row.shots} nearest demos, so serving "
            "picks the same demos as this run."
        )
    else:
        freeze = f"Freeze the prompt: task line, label list and the {row.shots} demos in results.json."
    checks = [
        freeze,
        f"Re-score the frozen method on the same {test_rows} test rows through the serving path: {label} "
        f"at least {low:.3f} (measured {accuracy:.3f}, 95% CI {low:.3f}-{high:.3f}).",
        (
            f"Load-test at the expected peak: p95 latency at most {p95 * ROLLBACK_P95_FACTOR:.0f} ms "
            f"(measured p95 {p95:.0f} ms, one request at a time, on the run's hardware)."
            if p95
            else "Load-test at the expected peak and record p95 latency (not measured in this run)."
        ),
        f"Check the cost per request on the first day's bill or token logs: at most "
        f"{format_usd(cost.per_request * ROLLBACK_COST_FACTOR)} (estimated {format_usd(cost.per_request)}).",
        f"Canary: send {CANARY_TRAFFIC_SHARE:.0%} of traffic for {CANARY_HOURS} h and compare against the "
        "triggers below before full rollout; keep the current method deployable as the rollback path.",
        f"Label a fresh sample of live requests (at least {test_rows}) each month and re-score it.",
    ]
    triggers = [
        Trigger(
            "p95 latency",
            f"{p95:.0f} ms" if p95 else "not measured",
            f"> {p95 * ROLLBACK_P95_FACTOR:.0f} ms ({ROLLBACK_P95_FACTOR:g}x baseline)" if p95 else "set one",
        ),
        Trigger(
            "error rate",
            f"0 of {test_rows} scored rows failed",
            f"> {ROLLBACK_ERROR_RATE:.0%} of requests",
        ),
        Trigger(
            "cost per request",
            format_usd(cost.per_request),
            f"> {format_usd(cost.per_request * ROLLBACK_COST_FACTOR)} ({ROLLBACK_COST_FACTOR:g}x estimate)",
        ),
        Trigger(
            f"{label} floor",
            f"{accuracy:.3f} (95% CI {low:.3f}-{high:.3f}, n={test_rows})",
            f"< {low:.3f} on a labelled live sample of at least {test_rows} rows",
        ),
    ]
    return Rollout(name, chosen, checks, triggers)
