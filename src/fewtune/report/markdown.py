"""report.md: the recommendation first, then the figures behind it (PNG files saved next to it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fewtune.decide.cost import format_count, format_days
from fewtune.decide.curves import has_shot_curve, has_train_curve
from fewtune.report import checks, tables
from fewtune.results.views import Curves

if TYPE_CHECKING:
    from fewtune.report.analysis import Report
    from fewtune.report.outputs import OutputsReport


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: tables.Table) -> str:
    headers, rows = table
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def break_even_sentence(report: Report | OutputsReport) -> str:
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


def shots_note(report: Report) -> str:
    draws = max((r["draws"] for r in Curves(report.curves).shots), default=1)
    spread = (
        f": mean over {draws} demo draws, error bars ±1 std"
        if draws > 1
        else ", one demo draw each (--demo-seeds N draws N demo sets and adds error bars)"
    )
    return f"Accuracy as demos grow, per demo selection{spread}; k=0 is zero-shot."


def train_note(report: Report) -> str:
    curves, parts = Curves(report.curves), []
    if curves.train_examples:
        parts.append("LoRA with its 95% bootstrap interval")
    if curves.reference:
        parts.append("the no-LLM reference (sentence embeddings + logistic regression) on the same examples")
    return f"Accuracy as labelled training examples grow: {' and '.join(parts)}."


def crossover_sentence(report: Report) -> str:
    cross = Curves(report.curves).crossover
    if cross is None:
        return "No crossover: it needs a prompting method and at least one LoRA training size."
    return "Crossover: " + cross["statement"] + "."


def has_curves(report: Report) -> bool:
    curves = Curves(report.curves)
    return bool(curves.shots or curves.train_examples or curves.reference)


def curve_section(report: Report, plot_files: dict[str, str]) -> list[str]:
    if not has_curves(report):
        return []
    curves = Curves(report.curves)
    out = ["## Learning curves", ""]
    if curves.shots:
        out += [shots_note(report), ""]
        if has_shot_curve(report.curves):
            out += [f"![accuracy vs shots per demo selection]({plot_files['shots']})", ""]
        out += [markdown_table(tables.shots_table(curves.shots)), ""]
    if curves.train_examples or curves.reference:
        out += [train_note(report), ""]
        if has_train_curve(report.curves):
            out += [f"![accuracy vs training examples]({plot_files['train']})", ""]
        out += [markdown_table(tables.train_table(curves.train_examples, curves.reference)), ""]
    out += [crossover_sentence(report), ""]
    warnings = report.results.get("warnings") or []
    if warnings:
        out += ["Run warnings:", "", *[f"- {w}" for w in warnings], ""]
    return out


def run_line(report: Report) -> str:
    results = report.results
    dataset = results.get("dataset") or {}
    names = results.get("label_names") or {}
    shown = (
        " Label names the model saw: " + ", ".join(f"{code} = {name}" for code, name in names.items()) + "."
        if names
        else ""
    )
    return (
        f"{tables.model_phrase(results)}, {dataset.get('test_size', '?')} test rows, "
        f"{len(report.labels)} labels ({', '.join(report.labels)}); run status {results.get('status', '?')}, "
        f"finished {results.get('finished_at', '?')}; fewtune {results.get('fewtune_version', '?')}.{shown}"
    )


def metric_line(report: Report) -> str:
    rec = report.recommendation
    label = "macro-F1" if rec.metric == "macro-f1" else rec.metric
    return f"Decided on {label}: {rec.metric_reason}." if rec.metric_reason else f"Decided on {label}."


def accuracy_note(report: Report) -> str:
    return (
        f"Chance is {report.chance:.3f} (the best content-blind guess: the larger of 1/labels and the most "
        f"common test label's share). Below accuracy {report.floor:.3f} (Cohen's kappa 0.4 for predictions "
        "that follow the test label shares) a method is not good enough yet; the verdict checks each "
        "method's own kappa."
    )


def check_section(report: Report) -> list[str]:
    """The embedding-based data checks: summary lines, the likeliest label errors, near duplicates."""
    found = (report.results.get("dataset") or {}).get("checks") or {}
    if not found:
        return []
    out = [*[f"- {line}" for line in checks.check_summary_lines(found)], ""]
    issues = checks.label_issue_table(found)
    if issues[1]:
        out += [f"Likeliest label errors (top {len(issues[1])}):", "", markdown_table(issues), ""]
    pairs = checks.near_duplicate_table(found)
    if pairs[1]:
        out += ["Near duplicates:", "", markdown_table(pairs), ""]
    return out


def recommendation_section(report: Report) -> list[str]:
    """What to ship, on which metric, why, what to do next and what to watch for."""
    rec = report.recommendation
    out = [
        "## Recommendation",
        "",
        f"**{rec.headline}**",
        "",
        metric_line(report),
        "",
        "Why:",
        "",
        *[f"- {reason}" for reason in rec.reasons],
        "",
    ]
    if rec.next_steps:
        out += ["Next steps:", "", *[f"{i}. {step}" for i, step in enumerate(rec.next_steps, 1)], ""]
    if rec.caveats:
        out += ["Caveats:", "", *[f"- {caveat}" for caveat in rec.caveats], ""]
    return out


def per_class_section(report: Report, plot_files: dict[str, str]) -> list[str]:
    """The focus method's scores per class and its confusion matrix."""
    return [
        f"## Per class: {report.focus.name}",
        "",
        (
            "The recommended method."
            if report.recommendation.shipped
            else "The most accurate method that does the task (none is recommended yet)."
        ),
        "",
        markdown_table(tables.per_class_table(report.focus)),
        "",
        markdown_table(tables.confusion_table(report.labels, report.confusion)),
        "",
        f"![confusion matrix]({plot_files['confusion']})",
        "",
    ]


def data_section(report: Report) -> list[str]:
    """The data's sizes and class balance, then the embedding-based checks."""
    dataset = report.results.get("dataset") or {}
    return [
        "## Data checks",
        "",
        markdown_table(tables.data_check_table(dataset)),
        "",
        "Class balance:",
        "",
        markdown_table(tables.class_balance_table(dataset)),
        "",
        *check_section(report),
    ]


def rollout_section(report: Report) -> list[str]:
    """How to deploy the shipped method (or the baselines when none ships) and when to roll it back."""
    rollout = report.rollout
    out = [f"## Rollout: {rollout.method}", ""]
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
        markdown_table(tables.trigger_table(rollout)),
        "",
    ]
    return out


def assumption_section(report: Report) -> list[str]:
    """The price table and the volume and horizon every cost above was computed at."""
    return [
        "## Cost assumptions",
        "",
        f"Price table: preset `{report.prices.preset}`"
        + (f", overrides from `{report.prices.file}`" if report.prices.file else "")
        + " (defaults and sources: `src/fewtune/costs.yaml`). The prices are examples; replace them with "
        "yours.",
        "",
        markdown_table(
            tables.assumption_table(
                report.prices,
                f"{report.volume_per_day:,.0f} calls/day" + ("" if report.volume_given else " (default)"),
                f"{report.horizon_days:,} days",
            )
        ),
        "",
    ]


def render_markdown(report: Report, plot_files: dict[str, str]) -> str:
    """The whole report.md: the run, the recommendation, then the figures behind it, section by section."""
    out = [
        f"# fewtune report: {report.folder.name}",
        "",
        run_line(report),
        "",
        *recommendation_section(report),
        "## Methods",
        "",
        "Every method was scored on the same test rows. Costs use the assumptions at the end of this report.",
        "",
        markdown_table(tables.method_table(report.methods, report.costs, report.horizon_label)),
        "",
        "Setup cost, and how each per-request cost was computed:",
        "",
        markdown_table(tables.setup_table(report.methods, report.costs)),
        "",
        "## Accuracy",
        "",
        f"![accuracy per method with 95% intervals]({plot_files['accuracy']})",
        "",
        accuracy_note(report),
        "",
        *curve_section(report, plot_files),
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
        *per_class_section(report, plot_files),
        *data_section(report),
        *rollout_section(report),
        *assumption_section(report),
    ]
    return "\n".join(out)
