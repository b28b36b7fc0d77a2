"""The terminal's method table at the width it is given: at 80 columns (a piped or narrow terminal) every
method name and both metrics that can decide a run are whole, and the columns left out are named; at 120
the demo's full table is shown as before."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from fewtune.cli.table import LEFT_OUT_FIRST, METRICS, method_columns, table_width
from fewtune.cli.ui import RichEvents

HEADERS = ["method", "shots", "train ex.", "accuracy (95% CI)", "macro-F1", "p50 ms", "p95 ms", "prompt tok"]


def _row(
    name: str, method: str, shots: int = 0, n: int = 0, acc: float = 0.8, **extra: Any
) -> dict[str, Any]:
    return {
        "method": method,
        "name": name,
        "shots": shots,
        "train_examples": n,
        "accuracy": acc,
        "accuracy_ci95": [acc - 0.05, min(acc + 0.05, 1.0)],
        "macro_f1": acc - 0.011,
        "latency_ms": {"p50": 84.0, "p95": 131.0},
        "prompt_tokens_mean": 312.0 if shots else 51.0,
        "train_seconds": 95.0 if n else None,
        **extra,
    }


def demo_rows() -> list[dict[str, Any]]:
    """The rows of ``make demo`` (the default methods on the built-in data)."""
    return [
        _row("zero-shot", "zero-shot", acc=0.339),
        _row("few-shot k=5 balanced", "few-shot", shots=5, acc=0.412),
        _row("reference n=200", "reference", n=200, acc=0.745, prompt_tokens_mean=None),
        _row("lora n=200", "lora", n=200, acc=0.831),
        _row("lora+few-shot n=200 k=5 balanced", "lora+few-shot", shots=5, n=200, acc=0.856),
    ]


def long_rows() -> list[dict[str, Any]]:
    """Longer names (calibration, a plain adapter) and demo draws, which add a column."""
    draws = {"accuracy_draws": [0.82, 0.86, 0.84], "accuracy_mean": 0.84, "accuracy_std": 0.02}
    return [
        *demo_rows(),
        _row("few-shot k=8 nearest calibrated", "few-shot", shots=8, acc=0.874, **draws),
        _row("lora+few-shot n=200 k=8 balanced plain-adapter", "lora+few-shot", shots=8, n=200, acc=0.67),
    ]


def render(rows: list[dict[str, Any]], width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    RichEvents(console).summary(rows)
    return console.export_text()


def headers(shown: str) -> list[str]:
    """The table's headers, each a header's lines joined (a narrow table puts short ones on two lines)."""
    lines = shown.splitlines()
    above = lines[: next(i for i, line in enumerate(lines) if "┡" in line)]
    cells = [line.strip()[1:-1].split("┃") for line in above if line.strip().startswith("┃")]
    return [" ".join(" ".join(column).split()) for column in zip(*cells, strict=True)]


def assert_names_and_metrics_whole(shown: str, rows: list[dict[str, Any]]) -> None:
    assert "…" not in shown
    lines = shown.splitlines()
    for row in rows:
        assert any(row["name"] in line for line in lines), f"{row['name']!r} is cut in\n{shown}"
        low, high = row["accuracy_ci95"]
        assert f"{row['accuracy']:.3f}" in shown and f"{low:.3f}" in shown and f"{high:.3f}" in shown
        assert f"{row['macro_f1']:.3f}" in shown


@pytest.mark.parametrize("rows", [demo_rows(), long_rows()], ids=["demo", "long names, draws"])
@pytest.mark.parametrize("width", [80, 120])
def test_method_names_and_metrics_are_whole(rows: list[dict[str, Any]], width: int) -> None:
    shown = render(rows, width)
    assert_names_and_metrics_whole(shown, rows)
    assert all(len(line) <= width for line in shown.splitlines())
    if "┃" in shown:  # the table (not the one-method-a-line fallback): both metric headers whole
        assert "accuracy (95% CI)" in shown and "macro-F1" in shown
    if any("accuracy_std" in row for row in rows):
        assert "0.840 ± 0.020" in shown  # the demo draws, kept as long as the metrics


def test_the_demo_at_80_columns_leaves_out_the_least_needed_columns_and_says_so() -> None:
    shown = render(demo_rows(), 80)
    assert headers(shown) == ["method", "accuracy (95% CI)", "macro-F1", "p95 ms"]
    left_out = ["shots", "train ex.", "p50 ms", "prompt tok", "train s"]  # shots and n= are in the names
    assert shown.splitlines()[-1] == f"Not shown here (see report.md): {', '.join(left_out)}"
    assert set(left_out) == set(LEFT_OUT_FIRST[: len(left_out)])  # the first to go, named in table order


def test_the_demo_at_120_columns_has_every_column() -> None:
    shown = render(demo_rows(), 120)
    assert headers(shown) == [*HEADERS, "train s"]  # the short ones on two lines
    assert "Not shown" not in shown


def test_a_table_that_fits_is_the_full_table_on_one_header_line() -> None:
    for rows, width in [(demo_rows(), 130), (long_rows(), 200)]:
        shown = render(rows, width)
        header_lines = [line for line in shown.splitlines() if "┃" in line]
        assert len(header_lines) == 1 and "Not shown" not in shown
        assert headers(shown) == [column.header for column in method_columns(rows)]


def test_names_too_long_for_any_table_get_a_line_each_with_the_metrics_below() -> None:
    name = "lora+few-shot n=1000 k=16 nearest calibrated plain-adapter"
    rows = [*long_rows(), _row(name, "lora+few-shot")]
    assert table_width([c for c in method_columns(rows) if c.header in ("method", *METRICS)]) > 80
    shown = render(rows, 80)
    assert_names_and_metrics_whole(shown, rows)
    lines = shown.splitlines()
    assert lines[lines.index(name) + 1] == "  accuracy 0.800 (95% CI 0.750-0.850), macro-F1 0.789"
    calibrated = lines.index("few-shot k=8 nearest calibrated")
    assert lines[calibrated + 2] == "  over 3 demo draws 0.840 ± 0.020"
    note = "Not shown here (see report.md): shots, train ex., p50 ms, p95 ms, prompt tok, train s"
    assert " ".join(shown.split()).endswith(note)  # the fallback shows the names, metrics and draws
