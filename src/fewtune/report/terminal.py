"""The method table printed at the end of a run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from fewtune.record import MethodRow
from fewtune.report.tables import draws_cell


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def method_table(rows: Sequence[MethodRow]) -> Table:
    table = Table(title="fewtune: methods on the same test rows")
    with_draws = any(row.get("accuracy_std") is not None for row in rows)
    headers = [
        "method",
        "shots",
        "train ex.",
        "accuracy (95% CI)",
        *(["mean ± std (draws)"] if with_draws else []),
        "macro-F1",
        "p50 ms",
        "p95 ms",
        "prompt tok",
        "train s",
    ]
    for header in headers:
        table.add_column(header, justify="left" if header == "method" else "right")
    for row in rows:
        low, high = row["accuracy_ci95"]
        table.add_row(
            row.get("name") or row["method"],
            str(row["shots"]),
            str(row["train_examples"] or "-"),
            f"{row['accuracy']:.3f} ({low:.3f}-{high:.3f})",
            *([draws_cell(row)] if with_draws else []),
            f"{row['macro_f1']:.3f}",
            _num(row["latency_ms"]["p50"], ".0f"),
            _num(row["latency_ms"]["p95"], ".0f"),
            _num(row.get("prompt_tokens_mean"), ".0f"),
            _num(row.get("train_seconds"), ".0f"),
        )
    return table
