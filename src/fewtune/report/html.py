"""report.html: one self-contained file (inline CSS, images as base64 PNG, no scripts, no network)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
from typing import TYPE_CHECKING, Any

from fewtune.decide.curves import has_shot_curve, has_train_curve
from fewtune.decide.verdict import (
    CHOICE_FINE_TUNE,
    CHOICE_MEASURE_PROMPTING,
    CHOICE_NOT_GOOD_ENOUGH,
    CHOICE_PROMPT,
    CHOICE_REFERENCE,
    CHOICE_RETRIEVAL,
    CHOICE_UNDECIDABLE,
)
from fewtune.report import checks, tables
from fewtune.report.markdown import (
    accuracy_note,
    break_even_sentence,
    crossover_sentence,
    has_curves,
    metric_line,
    run_line,
    shots_note,
    train_note,
)
from fewtune.results.views import Curves

if TYPE_CHECKING:
    from fewtune.report.analysis import Report

CHOICE_COLOURS = {
    CHOICE_PROMPT: "#2b6cb0",
    CHOICE_FINE_TUNE: "#c05621",
    CHOICE_UNDECIDABLE: "#6b46c1",
    CHOICE_RETRIEVAL: "#2c7a7b",
    CHOICE_REFERENCE: "#2f855a",
    CHOICE_NOT_GOOD_ENOUGH: "#c53030",
    CHOICE_MEASURE_PROMPTING: "#4a5568",
}

CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1a202c;
       margin: 0; background: #f7fafc; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #e2e8f0; padding-bottom: 4px; }
.meta { color: #4a5568; font-size: 13px; margin: 0 0 18px; }
.rec { border-left: 6px solid var(--c); background: #f8fafc; padding: 14px 20px; border-radius: 4px; }
.rec .choice { display: inline-block; background: var(--c); color: #fff; font-size: 12px; font-weight: 600;
               text-transform: uppercase; letter-spacing: .04em; padding: 2px 8px; border-radius: 3px; }
.rec h2 { border: 0; margin: 8px 0 6px; font-size: 21px; }
.rec h3 { font-size: 14px; margin: 12px 0 4px; color: #2d3748; }
.rec ul, .rec ol { margin: 0; padding-left: 20px; }
.rec .caveats li { color: #4a5568; font-size: 14px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border: 1px solid #e2e8f0; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #edf2f7; }
td:first-child, th:first-child { text-align: left; }
table.text td, table.text th { text-align: left; }
table:not(.text) td { white-space: nowrap; }
.wide { overflow-x: auto; }
tr.focus td { background: #fffbea; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0 4px; }
.note { color: #4a5568; font-size: 13px; }
.grid { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
ol li { margin-bottom: 4px; }
"""


def table_html(table: tables.Table, css_class: str = "", focus: str | None = None) -> str:
    headers, rows = table
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    marked = '<tr class="focus">'
    body = "".join(
        (marked if focus is not None and row[0] == focus else "<tr>")
        + "".join(f"<td>{escape(c)}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    klass = f' class="{css_class}"' if css_class else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'


def list_html(items: list[str], ordered: bool = False) -> str:
    tag = "ol" if ordered else "ul"
    return f"<{tag}>" + "".join(f"<li>{escape(item)}</li>" for item in items) + f"</{tag}>"


def _curve_section(report: Report, images: dict[str, bytes]) -> str:
    if not has_curves(report):
        return ""
    curves = Curves(report.curves)
    parts = ['<section id="curves"><h2>Learning curves</h2>']
    if curves.shots:
        parts.append(f'<p class="note">{escape(shots_note(report))}</p>')
        if has_shot_curve(report.curves) and "shots" in images:
            parts.append(_image(images["shots"], "accuracy vs shots per demo selection"))
        parts.append(f'<div class="wide">{table_html(tables.shots_table(curves.shots))}</div>')
    if curves.train_examples or curves.reference:
        parts.append(f'<p class="note">{escape(train_note(report))}</p>')
        if has_train_curve(report.curves) and "train" in images:
            parts.append(_image(images["train"], "accuracy vs training examples"))
        parts.append(table_html(tables.train_table(curves.train_examples, curves.reference)))
    parts.append(f'<p id="crossover">{escape(crossover_sentence(report))}</p>')
    warnings = report.results.get("warnings") or []
    if warnings:
        parts.append(f'<h3>Run warnings</h3><div class="caveats">{list_html(warnings)}</div>')
    parts.append("</section>")
    return "\n".join(parts)


def _check_section(found: Mapping[str, Any]) -> str:
    if not found:
        return ""
    parts = [list_html(checks.check_summary_lines(found))]
    issues, pairs = checks.label_issue_table(found), checks.near_duplicate_table(found)
    if issues[1]:
        parts += [f"<h3>Likeliest label errors (top {len(issues[1])})</h3>", table_html(issues, "text")]
    if pairs[1]:
        parts += ["<h3>Near duplicates</h3>", table_html(pairs, "text")]
    return "\n".join(parts)


def render_html(report: Report, images: dict[str, bytes]) -> str:
    rec = report.recommendation
    rollout = report.rollout
    focus = report.focus.name
    colour = CHOICE_COLOURS.get(rec.choice, "#4a5568")
    dataset = report.results.get("dataset") or {}
    caveats = f'<h3>Caveats</h3><div class="caveats">{list_html(rec.caveats)}</div>' if rec.caveats else ""
    steps = f"<h3>Next steps</h3>{list_html(rec.next_steps, ordered=True)}" if rec.next_steps else ""
    not_chosen = (
        ""
        if rollout.chosen
        else '<p class="note">No method is recommended to ship yet; these are the baselines any deployment '
        "should meet.</p>"
    )
    price_source = f"preset <code>{escape(report.prices.preset)}</code>" + (
        f", overrides from <code>{escape(report.prices.file)}</code>" if report.prices.file else ""
    )
    which = (
        "The recommended method"
        if rec.shipped
        else "The most accurate method that does the task (none is recommended yet)"
    )
    volume = f"{report.volume_per_day:,.0f} calls/day" + ("" if report.volume_given else " (default)")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>fewtune report: {escape(report.folder.name)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>fewtune report: {escape(report.folder.name)}</h1>",
        f'<p class="meta">{escape(run_line(report))}</p>',
        f'<section class="rec" id="recommendation" style="--c: {colour}">',
        f'<span class="choice">{escape(rec.choice)}</span>',
        f"<h2>{escape(rec.headline)}</h2>",
        f'<p class="note">{escape(metric_line(report))}</p>',
        f"<h3>Why</h3>{list_html(rec.reasons)}{steps}{caveats}",
        "</section>",
        '<section id="methods"><h2>Methods</h2>',
        '<p class="note">Every method was scored on the same test rows. Costs use the assumptions at the '
        "end.</p>",
        '<div class="wide">',
        table_html(tables.method_table(report.methods, report.costs, report.horizon_label), focus=focus),
        "</div>",
        '<p class="note">Setup cost, and how each per-request cost was computed:</p>',
        table_html(tables.setup_table(report.methods, report.costs), "text"),
        "</section>",
        '<section id="accuracy"><h2>Accuracy</h2>',
        _image(images["accuracy"], "accuracy per method with 95% intervals"),
        f'<p class="note">{escape(accuracy_note(report))}</p></section>',
        _curve_section(report, images),
        '<section id="cost"><h2>Cost vs requests</h2>',
        _image(images["cost"], "total cost vs requests served"),
        f"<p>{escape(break_even_sentence(report))}</p></section>",
        '<section id="latency"><h2>Latency</h2>',
        _image(images["latency"], "latency per request"),
        '<p class="note">One request at a time after warm-up, on the run\'s hardware; the run keeps p50, p95 '
        "and the mean.</p></section>",
        f'<section id="per-class"><h2>Per class: {escape(focus)}</h2>',
        f'<p class="note">{which}.</p>',
        '<div class="grid"><div>',
        table_html(tables.per_class_table(report.focus)),
        table_html(tables.confusion_table(report.labels, report.confusion)),
        "</div><div>",
        _image(images["confusion"], f"confusion matrix of {focus}"),
        "</div></div></section>",
        '<section id="data"><h2>Data checks</h2><div class="grid">',
        table_html(tables.data_check_table(dataset), "text"),
        table_html(tables.class_balance_table(dataset)),
        "</div>",
        _check_section(dataset.get("checks") or {}),
        "</section>",
        f'<section id="rollout"><h2>Rollout: {escape(rollout.method)}</h2>{not_chosen}',
        f"<h3>Before deploying</h3>{list_html(rollout.checks, ordered=True)}",
        "<h3>Roll back when</h3>",
        table_html(tables.trigger_table(rollout), "text"),
        "</section>",
        '<section id="assumptions"><h2>Cost assumptions</h2>',
        f'<p class="note">Price table: {price_source} (defaults and sources: <code>costs.yaml</code> in the '
        "fewtune package). The prices are examples; replace them with yours.</p>",
        table_html(tables.assumption_table(report.prices, volume, f"{report.horizon_days:,} days"), "text"),
        "</section></main></body></html>",
    ]
    return "\n".join(parts) + "\n"
