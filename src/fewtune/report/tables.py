"""The report's tables as plain strings (headers, rows), shared by the Markdown and HTML renderers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fewtune.decide.cost import MethodCost, PriceTable, format_usd
from fewtune.methods import Method
from fewtune.report.rollout import Rollout
from fewtune.results.record import MethodRow
from fewtune.results.rows import Row
from fewtune.results.views import SizePoint

Table = tuple[list[str], list[list[str]]]


def num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def usd(value: float | None) -> str:
    return "-" if value is None else format_usd(value)


def model_phrase(results: Mapping[str, Any]) -> str:
    """``Model X``, or for a two-model run ``Prompting rows on X, LoRA on Y``; with how an endpoint scored."""
    prompted = results.get("prompt_model") or {}
    phrase = f"Model {results.get('model', '?')}"
    if prompted.get("model") and prompted["model"] != results.get("model"):
        phrase = f"Prompting rows on {prompted['model']}, LoRA on {results.get('model', '?')}"
    if prompted.get("scoring_mode"):
        phrase += f" (endpoint scoring: {prompted['scoring_mode']}; {prompted.get('reason', '')})"
    return phrase


def method_titles(methods: Sequence[Row]) -> list[str]:
    """Each row's name, with the model that answered it when two models did, and ``(degenerate)``."""
    two_models = len({row.model for row in methods if row.model}) > 1
    return [
        row.name + (f" on {row.model}" if two_models else "") + (" (degenerate)" if row.degenerate else "")
        for row in methods
    ]


def draws_cell(row: MethodRow) -> str:
    """``0.842 ± 0.031 (3)`` over demo draws, or ``-`` for a row with one draw."""
    read = Row(row)
    if read.accuracy_std is None:
        return "-"
    return f"{read.accuracy_mean:.3f} ± {read.accuracy_std:.3f} ({len(read.accuracy_draws)})"


def method_table(methods: Sequence[Row], costs: dict[str, MethodCost], horizon_label: str) -> Table:
    with_draws = any(row.accuracy_std is not None for row in methods)
    headers = [
        "method",
        "shots",
        "train ex.",
        "accuracy (95% CI)",
        *(["mean ± std over demo draws"] if with_draws else []),
        "macro-F1",
        "p50 ms",
        "p95 ms",
        "prompt tokens",
        "train s",
        "setup",
        "per request",
        f"total, {horizon_label}",
    ]
    rows = []
    for row, title in zip(methods, method_titles(methods), strict=True):
        cost = costs[row.name]
        low, high = row.accuracy_ci95
        rows.append(
            [
                title,
                str(row.shots),
                str(row.train_examples or "-"),
                f"{row.accuracy:.3f} ({low:.3f}-{high:.3f})",
                *([draws_cell(row.record)] if with_draws else []),
                f"{row.macro_f1:.3f}",
                num(row.p50, ".0f"),
                num(row.p95, ".0f"),
                num(row.prompt_tokens_mean, ".0f"),
                num(row.train_seconds, ".0f"),
                format_usd(cost.setup),
                format_usd(cost.per_request),
                usd(row.total_cost),
            ]
        )
    return headers, rows


def setup_table(methods: Sequence[Row], costs: dict[str, MethodCost]) -> Table:
    headers = ["method", "engineering", "labelling", "training compute", "per request from"]
    rows = [
        [
            row.name,
            format_usd(costs[row.name].setup_breakdown.get("engineering", 0.0)),
            format_usd(costs[row.name].setup_breakdown.get("labelling", 0.0)),
            format_usd(costs[row.name].setup_breakdown.get("training_compute", 0.0)),
            costs[row.name].basis,
        ]
        for row in methods
    ]
    return headers, rows


def per_class_table(row: Row) -> Table:
    headers = ["label", "precision", "recall", "F1", "support"]
    rows = [
        [label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])]
        for label, m in row.per_class.items()
    ]
    return headers, rows


def confusion_matrix(labels: Sequence[str], predictions: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Counts with gold labels as rows and predicted labels as columns, in ``labels`` order."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for p in predictions:
        if p["gold"] in index and p["predicted"] in index:
            matrix[index[p["gold"]]][index[p["predicted"]]] += 1
    return matrix


def confusion_table(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> Table:
    headers = ["gold \\ predicted", *labels]
    return headers, [[label, *(str(n) for n in counts)] for label, counts in zip(labels, matrix, strict=True)]


def data_check_table(dataset: Mapping[str, Any]) -> Table:
    rows = [
        ["pool rows (after checks)", str(dataset.get("pool_size", "-"))],
        ["test rows", str(dataset.get("test_size", "-"))],
        ["exact duplicates removed", str(dataset.get("duplicates_removed", "-"))],
        ["duplicates with conflicting labels", str(dataset.get("conflicting_labels", "-"))],
        ["pool rows removed as test leaks", str(dataset.get("leaks_removed", "-"))],
        ["test rows from", str(dataset.get("test_source", "-"))],
    ]
    rows += [["warning", w] for w in dataset.get("warnings") or []]
    return ["check", "value"], rows


def class_balance_table(dataset: Mapping[str, Any]) -> Table:
    counts = dataset.get("label_counts") or {}
    pool, test = counts.get("pool") or {}, counts.get("test") or {}
    pool_total, test_total = sum(pool.values()) or 1, sum(test.values()) or 1
    labels = sorted(set(pool) | set(test))
    rows = [
        [
            label,
            f"{pool.get(label, 0)} ({pool.get(label, 0) / pool_total:.0%})",
            f"{test.get(label, 0)} ({test.get(label, 0) / test_total:.0%})",
        ]
        for label in labels
    ]
    return ["label", "pool", "test"], rows


def assumption_table(prices: PriceTable, volume: str, horizon: str) -> Table:
    rows = [["volume", volume, "--volume-per-day"], ["horizon", horizon, "--horizon-days"]]
    for key, entry in prices.to_dict().items():
        value = entry["value"]
        shown = "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        rows.append([key, shown, entry["source"]])
    return ["assumption", "value", "source"], rows


def trigger_table(rollout: Rollout) -> Table:
    return (
        ["metric", "measured baseline", "roll back when"],
        [[t.metric, t.baseline, t.rollback_when] for t in rollout.triggers],
    )


def shots_table(curve: Sequence[Mapping[str, Any]]) -> Table:
    """Accuracy per selection (rows) and shot count (columns): mean, with ± std over demo draws."""
    ks = sorted({r["k"] for r in curve})
    strategies = list(dict.fromkeys(r["strategy"] for r in curve))
    cells = {(r["strategy"], r["k"]): r for r in curve}
    rows = []
    for name in strategies:
        row = [name]
        for k in ks:
            point = cells.get((name, k))
            if point is None:
                row.append("-")
            elif point["std"] is None:
                row.append(f"{point['mean']:.3f}")
            else:
                row.append(f"{point['mean']:.3f} ± {point['std']:.3f}")
        rows.append(row)
    return ["demo selection", *(f"k={k}" for k in ks)], rows


def train_table(lora: Sequence[SizePoint], reference: Sequence[SizePoint]) -> Table:
    """Accuracy (95% CI) per training size: LoRA and the embedding + logistic-regression reference."""
    by_size: dict[int, dict[Method, str]] = {}
    for key, curve in ((Method.LORA, lora), (Method.REFERENCE, reference)):
        for p in curve:
            low, high = p.ci95
            by_size.setdefault(p.n, {})[key] = f"{p.accuracy:.3f} ({low:.3f}-{high:.3f})"
    keys = [key for key, curve in ((Method.LORA, lora), (Method.REFERENCE, reference)) if curve]
    titles = {Method.LORA: "LoRA accuracy (95% CI)", Method.REFERENCE: "reference: embeddings + LR (95% CI)"}
    rows = [[str(n), *(cells.get(key, "-") for key in keys)] for n, cells in sorted(by_size.items())]
    return ["training examples", *(titles[key] for key in keys)], rows
