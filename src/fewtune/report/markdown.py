"""report.md: the recommendation first, then the figures behind it (PNG files saved next to it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fewtune.cost import format_count, format_days
from fewtune.report import tables

if TYPE_CHECKING:
    from fewtune.report.build import Report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(table: tables.Table) -> str:
    headers, rows = table
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def break_even_sentence(report: Report) -> str:
    be, pair = report.break_even, report.break_even_pair
    if be is None or pair is None:
        return "No break-even: the run needs one prompting and one fine-tuned method."
    head = f"Break-even between {pair[0]} and {pair[1]}: "
    if be.requests is None or be.requests == 0:
        return head + be.reason + "."
    days = be.requests / report.volume_per_day
    return head + (
        f"{format_count(be.requests)} requests ({be.reason}), {format_days(days)} at "
        f"{report.volume_per_day:,.0f} calls/day; the horizon is {report.horizon_days:,} days "
        f"({format_count(report.horizon_requests)} requests)."
    )


def run_line(report: Report) -> str:
    results = report.results
    dataset = results.get("dataset") or {}
    return (
        f"Model {results.get('model', '?')}, {dataset.get('test_size', '?')} test rows, "
        f"{len(report.labels)} labels ({', '.join(report.labels)}); run status {results.get('status', '?')}, "
        f"finished {results.get('finished_at', '?')}; fewtune {results.get('fewtune_version', '?')}."
    )


def render_markdown(report: Report, plot_files: dict[str, str]) -> str:
    rec = report.recommendation
    focus = report.focus["name"]
    rollout = report.rollout
    out = [
        f"# fewtune report: {report.folder.name}",
        "",
        run_line(report),
        "",
        "## Recommendation",
        "",
        f"**{rec.headline}**",
        "",
        "Why:",
        "",
        *[f"- {reason}" for reason in rec.reasons],
        "",
    ]
    if rec.caveats:
        out += ["Caveats:", "", *[f"- {caveat}" for caveat in rec.caveats], ""]
    out += [
        "## Methods",
        "",
        "Every method was scored on the same test rows. Costs use the assumptions at the end of this report.",
        "",
        _table(tables.method_table(report.methods, report.costs, report.horizon_label)),
        "",
        "Setup cost, and how each per-request cost was computed:",
        "",
        _table(tables.setup_table(report.methods, report.costs)),
        "",
        "## Accuracy",
        "",
        f"![accuracy per method with 95% intervals]({plot_files['accuracy']})",
        "",
        f"Chance is {report.chance:.3f} (the larger of 1/labels and the most common test label's share); "
        f"below {report.floor:.3f} a method counts as low.",
        "",
        "## Cost vs requests",
        "",
        f"![total cost vs requests served]({plot_files['cost']})",
        "",
        break_even_sentence(report),
        "",
        "## Latency",
        "",
        f"![latency per request]({plot_files['latency']})",
        "",
        "One request at a time after warm-up, on the run's hardware; the run keeps p50, p95 and the mean.",
        "",
        f"## Per class: {focus}",
        "",
        ("The recommended method." if rec.method else "The most accurate method (none is recommended yet)."),
        "",
        _table(tables.per_class_table(report.focus)),
        "",
        _table(tables.confusion_table(report.labels, report.confusion)),
        "",
        f"![confusion matrix]({plot_files['confusion']})",
        "",
        "## Data checks",
        "",
        _table(tables.data_check_table(report.results.get("dataset") or {})),
        "",
        "Class balance:",
        "",
        _table(tables.class_balance_table(report.results.get("dataset") or {})),
        "",
        f"## Rollout: {rollout.method}",
        "",
    ]
    if not rollout.chosen:
        out += [
            "No method is recommended to ship yet; these are the baselines any deployment should meet.",
            "",
        ]
    out += [
        "Before deploying:",
        "",
        *[f"{i}. {check}" for i, check in enumerate(rollout.checks, 1)],
        "",
        "Roll back when:",
        "",
        _table(tables.trigger_table(rollout)),
        "",
        "## Cost assumptions",
        "",
        f"Price table: preset `{report.prices.preset}`"
        + (f", overrides from `{report.prices.file}`" if report.prices.file else "")
        + " (defaults and sources: `src/fewtune/costs.yaml`). The prices are examples; replace them with "
        "yours.",
        "",
        _table(
            tables.assumption_table(
                report.prices,
                f"{report.volume_per_day:,.0f} calls/day" + ("" if report.volume_given else " (default)"),
                f"{report.horizon_days:,} days",
            )
        ),
        "",
    ]
    return "\n".join(out)
