"""The methods table ``fewtune run`` prints when its methods are done, fitted to the terminal's width.

A method's name and the metrics that can decide the run are never cut: where the full table is wider than the
terminal (80 columns when piped), the short columns' headers go on two lines, then the least needed columns
are left out (named under the table; the report keeps every column), and where even the names and metrics
side by side do not fit, each method's name takes a line with its metrics on the next. A terminal wide enough
for the full table gets it as it always was."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fewtune.report.tables import draws_cell, num
from fewtune.results.rows import Row

TITLE = "fewtune: methods on the same test rows"
DRAWS = "mean ± std (draws)"
METRICS = ("accuracy (95% CI)", "macro-F1")
"""Either can decide the run (macro-F1 when the test labels are imbalanced; the report says which): like the
method's name, never left out, wrapped or cut."""
LEFT_OUT_FIRST = ("shots", "train ex.", "prompt tok", "p50 ms", "train s", "p95 ms", DRAWS)
"""The columns a narrow terminal leaves out, first to last (shots and train ex. repeat the name's k=, n=)."""
TWO_LINE_HEADERS = ("train ex.", "p50 ms", "p95 ms", "prompt tok", "train s")
"""Headers wider than their numbers, put on two lines before any column is left out."""


class Column(NamedTuple):
    header: str
    cells: list[str]
    """One per row, as shown."""
    two_lines: bool = False

    @property
    def shown_header(self) -> str:
        return self.header.replace(" ", "\n") if self.two_lines else self.header

    @property
    def width(self) -> int:
        """Enough for every cell and the header whole."""
        return max(cell_len(line) for text in [self.shown_header, *self.cells] for line in text.split("\n"))


def method_columns(rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    """The classification methods' columns, all of them, in the order the full table shows them."""
    typed = [Row(row) for row in rows]
    with_draws = any(row.accuracy_std is not None for row in typed)

    def accuracy(row: Row) -> str:
        low, high = row.accuracy_ci95
        return f"{row.accuracy:.3f} ({low:.3f}-{high:.3f})"

    columns: list[tuple[str, Callable[[Row], str]]] = [
        ("method", lambda row: row.name),
        ("shots", lambda row: str(row.shots)),
        ("train ex.", lambda row: str(row.train_examples or "-")),
        (METRICS[0], accuracy),
        *([(DRAWS, lambda row: draws_cell(row.data))] if with_draws else []),
        (METRICS[1], lambda row: f"{row.macro_f1:.3f}"),
        ("p50 ms", lambda row: num(row.p50, ".0f")),
        ("p95 ms", lambda row: num(row.p95, ".0f")),
        ("prompt tok", lambda row: num(row.prompt_tokens_mean, ".0f")),
        ("train s", lambda row: num(row.train_seconds, ".0f")),
    ]
    return [Column(header, [cell(row) for row in typed]) for header, cell in columns]


def table_width(columns: Sequence[Column]) -> int:
    """The table's width with every cell whole (rich's default box: a space of padding either side of each
    cell, a rule between columns and at both edges)."""
    return sum(column.width + 3 for column in columns) + 1


def fitting_columns(columns: Sequence[Column], width: int | None) -> list[Column]:
    """``columns`` as ``width`` holds them whole: all of them when they fit (or without a width), else with
    two-line headers, less the columns of ``LEFT_OUT_FIRST`` in that order until they fit. The method and
    metric columns stay even when they do not fit."""
    if width is None or table_width(columns) <= width:
        return list(columns)
    kept = [column._replace(two_lines=column.header in TWO_LINE_HEADERS) for column in columns]
    for header in LEFT_OUT_FIRST:
        if table_width(kept) <= width:
            break
        kept = [column for column in kept if column.header != header]
    return kept


def method_table(rows: Sequence[Mapping[str, Any]], width: int | None = None) -> Table:
    """The classification methods side by side (open outputs print a line per method instead), in the
    columns ``width`` (the terminal's) holds whole; every column without a width."""
    table = Table(title=TITLE)
    kept = fitting_columns(method_columns(rows), width)
    for column in kept:
        name = column.header == "method"
        whole = name or column.header in METRICS  # never wrapped, whatever the width
        table.add_column(column.shown_header, justify="left" if name else "right", no_wrap=whole)
    for i in range(len(rows)):  # the names are Text: they hold the user's data
        table.add_row(
            *(Text(column.cells[i]) if column.header == "method" else column.cells[i] for column in kept)
        )
    return table


def print_method_table(console: Console, rows: Sequence[Mapping[str, Any]]) -> None:
    """The method table at the console's width, naming the columns it left out; where even the names and
    metrics side by side are too wide, each method's name on a line and its metrics under it."""
    columns = method_columns(rows)
    kept = fitting_columns(columns, console.width)
    if table_width(kept) <= console.width:
        console.print(method_table(rows, console.width))
    else:
        console.print(Text(TITLE), highlight=False)
        for row in rows:
            console.print(Text(Row(row).name), highlight=False, soft_wrap=True)
            for line in metric_lines(row):
                console.print(Text(f"  {line}"), highlight=False)
        kept = [column for column in columns if column.header in ("method", *METRICS, DRAWS)]
    shown = {column.header for column in kept}
    left_out = [column.header for column in columns if column.header not in shown]
    if left_out:
        console.print(Text(f"Not shown here (see report.md): {', '.join(left_out)}"), highlight=False)


def metric_lines(data: Mapping[str, Any]) -> list[str]:
    """A method's metrics, under its name where no table fits: the interval, and the demo draws if any."""
    row = Row(data)
    low, high = row.accuracy_ci95
    lines = [f"accuracy {row.accuracy:.3f} (95% CI {low:.3f}-{high:.3f}), macro-F1 {row.macro_f1:.3f}"]
    if row.accuracy_std is not None:
        draws = len(row.accuracy_draws)
        lines.append(f"over {draws} demo draws {row.accuracy_mean:.3f} ± {row.accuracy_std:.3f}")
    return lines
