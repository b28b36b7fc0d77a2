"""report.md and report.html for extraction and generation runs: the verdict, every method's metrics with
95% intervals, costs, the per-field table (extraction), outputs side by side, and the rollout."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from fewtune.decide.cost import format_usd
from fewtune.report import tables
from fewtune.report.html import CHOICE_COLOURS, CSS, list_html, table_html
from fewtune.report.markdown import break_even_sentence, markdown_table
from fewtune.report.outputs import OutputsReport, output_task
from fewtune.results.rows import Row

SHOWN_OUTPUT_CHARS = 600
# Column names for the metrics' keys (others: underscores to spaces).
METRIC_NAMES = {"chrf": "chrF", "rouge_l": "ROUGE-L", "field_f1": "field F1"}


def metric_name(key: str) -> str:
    return METRIC_NAMES.get(key, key.replace("_", " "))


def _ci(metric: Mapping[str, Any] | None) -> str:
    if not metric:
        return "-"
    low, high = metric["ci95"]
    return f"{metric['value']:.3f} ({low:.3f}-{high:.3f})"


def metrics_table(report: OutputsReport) -> tables.Table:
    names = [
        name
        for name in dict.fromkeys(name for row in report.methods for name in row.metrics)
        if name.replace("_", "-") != report.metric.name
    ]
    headers = [
        "method",
        "shots",
        "train ex.",
        f"{report.metric.label} (95% CI)",
        *[metric_name(name) for name in names],
        "ended",
        "p50 ms",
        "p95 ms",
        "prompt tokens",
        "output tokens",
        "output tok/s",
        "train s",
        "per request",
        f"total, {report.horizon_label}",
    ]
    rows = []
    for row, title in zip(report.methods, tables.method_titles(report.methods), strict=True):
        metrics = row.metrics
        rows.append(
            [
                title,
                str(row.shots),
                str(row.train_examples or "-"),
                _ci(row.primary),
                *[_ci(metrics.get(name)) for name in names],
                tables.num(row.stopped_rate, ".2f"),
                tables.num(row.p50, ".0f"),
                tables.num(row.p95, ".0f"),
                tables.num(row.prompt_tokens_mean, ".0f"),
                tables.num(row.output_tokens_mean, ".1f"),
                tables.num(row.output_tokens_per_second, ".0f"),
                tables.num(row.train_seconds, ".0f"),
                format_usd(report.costs[row.name].per_request),
                tables.usd(row.total_cost),
            ]
        )
    return headers, rows


def breakdowns(row: Row) -> list[tuple[str, tables.Table]]:
    """A row's per-item tables (``per_field``, ``per_label``, any ``per_<item>`` a task writes: each item's
    precision, recall, F1 and support), most supported first, titled by the item."""
    found = []
    for item, items in row.breakdowns.items():
        rows = [
            [name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", f"{v['support']:.0f}"]
            for name, v in sorted(items.items(), key=lambda kv: (-kv[1]["support"], kv[0]))
        ]
        found.append((item, (["" + item, "precision", "recall", "F1", "support (gold)"], rows)))
    return found


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_OUTPUT_CHARS else text[:SHOWN_OUTPUT_CHARS] + " [...]"


def task_line(report: OutputsReport) -> str:
    results, task, dataset = report.results, report.task, report.results.get("dataset") or {}
    schema = f" Output schema {task['schema_source']}." if task.get("schema_source") else ""
    return (
        f"Task {task.get('name', '?')}. {tables.model_phrase(results)}: {dataset.get('test_size', '?')} "
        f"test rows ({dataset.get('test_source', '?')}), {dataset.get('pool_size', '?')} pool rows. "
        f"Decided on {report.metric.label}.{schema} Run status {results.get('status', '?')}, finished "
        f"{results.get('finished_at', '?')}; fewtune {results.get('fewtune_version', '?')}."
    )


def render_outputs_markdown(report: OutputsReport) -> str:
    rec = report.recommendation
    lines = [
        f"# fewtune report: {report.folder.name}",
        "",
        task_line(report),
        "",
        f"## Recommendation: {rec.headline}",
        "",
        *[f"- {reason}" for reason in rec.reasons],
        "",
    ]
    if rec.next_steps:
        lines += ["Next steps:", "", *[f"{i}. {step}" for i, step in enumerate(rec.next_steps, 1)], ""]
    if rec.caveats:
        lines += ["Caveats:", "", *[f"- {c}" for c in rec.caveats], ""]
    lines += [
        "## Methods",
        "",
        markdown_table(metrics_table(report)),
        "",
        output_task(report.task).metrics_note,
        "",
        break_even_sentence(report),
        "",
    ]
    for item, table in breakdowns(report.focus):
        lines += [f"## Per {item}: {report.focus.name}", "", markdown_table(table), ""]
    lines += ["## Outputs side by side", ""]
    for shown in report.side_by_side:
        lines += [
            f"### Test row {shown.row}",
            "",
            f"- **input:** {_short(shown.input)}",
            f"- **reference:** {_short(shown.reference)}",
        ]
        lines += [f"- **{name}:** {_short(out.strip())}" for name, out in shown.outputs.items()]
        lines.append("")
    rollout = report.rollout
    lines += [
        f"## Rollout: {rollout.method}",
        "",
        *[f"{i}. {c}" for i, c in enumerate(rollout.checks, 1)],
        "",
        markdown_table(tables.trigger_table(rollout)),
        "",
    ]
    return "\n".join(lines)


def _side_by_side_html(report: OutputsReport) -> str:
    parts = []
    for shown in report.side_by_side:
        rows = [("input", shown.input), ("reference", shown.reference), *shown.outputs.items()]
        body = "".join(
            f'<tr><th>{escape(name)}</th><td class="out">{escape(_short(str(text).strip()))}</td></tr>'
            for name, text in rows
        )
        parts.append(f'<h3>Test row {shown.row}</h3><table class="text side">{body}</table>')
    return "".join(parts)


def render_outputs_html(report: OutputsReport) -> str:
    rec = report.recommendation
    colour = CHOICE_COLOURS.get(rec.choice, "#4a5568")
    steps = f"<h3>Next steps</h3>{list_html(rec.next_steps, ordered=True)}" if rec.next_steps else ""
    caveats = f'<h3>Caveats</h3><div class="caveats">{list_html(rec.caveats)}</div>' if rec.caveats else ""
    per_item = "".join(
        f'<section id="per-{escape(item)}"><h2>Per {escape(item)}: {escape(report.focus.name)}</h2>'
        f"{table_html(table)}</section>"
        for item, table in breakdowns(report.focus)
    )
    rollout = report.rollout
    css = CSS + "table.side td.out { white-space: pre-wrap; max-width: 820px; }\n"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>fewtune report: {escape(report.folder.name)}</title>",
        f"<style>{css}</style></head><body><main>",
        f"<h1>fewtune report: {escape(report.folder.name)}</h1>",
        f'<p class="meta">{escape(task_line(report))}</p>',
        f'<section class="rec" id="recommendation" style="--c: {colour}">',
        f'<span class="choice">{escape(rec.choice)}</span>',
        f"<h2>{escape(rec.headline)}</h2>",
        f"<h3>Why</h3>{list_html(rec.reasons)}{steps}{caveats}",
        "</section>",
        '<section id="methods"><h2>Methods</h2><div class="wide">',
        table_html(metrics_table(report), focus=report.focus.name),
        f'</div><p class="note">{escape(output_task(report.task).metrics_note)}</p>',
        f"<p>{escape(break_even_sentence(report))}</p></section>",
        per_item,
        '<section id="outputs"><h2>Outputs side by side</h2>',
        '<p class="note">Seeded test rows: the input, the reference, and what each method wrote.</p>',
        _side_by_side_html(report),
        "</section>",
        f'<section id="rollout"><h2>Rollout: {escape(rollout.method)}</h2>',
        f"<h3>Before deploying</h3>{list_html(rollout.checks, ordered=True)}",
        "<h3>Roll back when</h3>",
        table_html(tables.trigger_table(rollout), "text"),
        "</section></main></body></html>",
    ]
    return "\n".join(parts) + "\n"
