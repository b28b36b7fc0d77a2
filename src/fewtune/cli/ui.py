"""The terminal: what ``fewtune run`` and ``fewtune report`` show while they work (rich progress bars, one
line per finished method, the methods table, the recommendation). The only module besides the CLI that
prints; the pipeline reports through :class:`fewtune.run.events.RunEvents`. The methods table itself, fitted
to the terminal's width, is :mod:`fewtune.cli.table`'s."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from fewtune.backends.base import ProgressFn
from fewtune.cli.console import plain_console, styled
from fewtune.cli.table import print_method_table
from fewtune.results.rows import Row
from fewtune.run.events import TrainStep

if TYPE_CHECKING:
    from fewtune.report.analysis import Report
    from fewtune.report.outputs import OutputsReport

T = TypeVar("T")


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[extra]}", markup=False),
        console=console,
    )


def describe_row(data: Mapping[str, Any]) -> str:
    """One finished method in a line: its primary metric with the interval, then the others."""
    row = Row(data)
    primary = row.primary
    if primary:  # a generated-output row: every metric of its task
        from fewtune.report.outputs_render import metric_name

        low, high = primary["ci95"]
        others = ", ".join(
            f"{metric_name(name)} {m['value']:.3f}"
            for name, m in row.metrics.items()
            if name.replace("_", "-") != primary["name"]
        )
        return f"  {row.name}: {primary['label']} {primary['value']:.3f} [{low:.3f}, {high:.3f}]; {others}"
    low, high = row.accuracy_ci95
    spread = ""
    if row.accuracy_std is not None:
        draws = len(row.accuracy_draws)
        spread = f"; over {draws} demo draws {row.accuracy_mean:.3f} ± {row.accuracy_std:.3f}"
    return (
        f"  {row.name}: accuracy {row.accuracy:.3f} [{low:.3f}, {high:.3f}], "
        f"macro-F1 {row.macro_f1:.3f}{spread}"
    )


class RichEvents:
    """:class:`~fewtune.run.events.RunEvents` on a rich console."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or plain_console()

    # Messages are plain text (rows hold data such as "[NAME]" that rich would read as markup).
    def info(self, message: str) -> None:
        self.console.print(Text(message), highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(styled("warning:", "yellow", f" {message}"), highlight=False)

    def finished(self, row: Mapping[str, Any]) -> None:
        self.console.print(Text(describe_row(row)), highlight=False)

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows and all(Row(row).accuracy is not None for row in rows):
            print_method_table(self.console, rows)

    def status(self, message: str) -> contextlib.AbstractContextManager[Any]:
        return self.console.status(Text(message))

    def progress(self, title: str, total: int, work: Callable[[ProgressFn], T]) -> T:
        with progress_bar(self.console) as bar:
            task = bar.add_task(title, total=total, extra="")
            return work(lambda n: bar.advance(task, n))

    def training(self, title: str, fit: Callable[[TrainStep], T]) -> T:
        with progress_bar(self.console) as bar:
            task = bar.add_task(title, total=None, extra="")

            def on_step(step: int, total: int, loss: float) -> None:
                bar.update(task, completed=step, total=total, extra=f"loss {loss:.3f}")

            return fit(on_step)


def print_summary(console: Console, report: Report | OutputsReport) -> None:
    """The recommendation and where the reports are, for the terminal."""
    from fewtune.decide.cost import format_count
    from fewtune.report.analysis import Report
    from fewtune.report.build import REPORT_HTML, REPORT_MD
    from fewtune.report.markdown import metric_line

    rec = report.recommendation
    console.print(styled("Recommendation:", "bold", f" {rec.headline}"), highlight=False)
    if isinstance(report, Report):
        console.print(Text(f"  {metric_line(report)}"), highlight=False)
    for reason in rec.reasons:
        console.print(Text(f"  - {reason}"), highlight=False)
    for name, why in rec.degenerate.items():
        console.print(styled("degenerate:", "yellow", f" {name} {why}"), highlight=False)
    for i, step in enumerate(rec.next_steps, 1):
        console.print(Text(f"  next {i}. {step}"), highlight=False)
    be = report.break_even
    if be is not None and report.break_even_pair:
        where = "never" if be.requests is None else f"{format_count(be.requests)} requests"
        console.print(Text(f"Break-even ({' vs '.join(report.break_even_pair)}): {where}"), highlight=False)
    console.print(Text(f"Report: {report.folder / REPORT_HTML} and {report.folder / REPORT_MD}"))


def register_run(console: Console, folder: Path, mlflow: str | None = None) -> None:
    """Record the run in the run registry (:mod:`fewtune.release.registry`) and, given a tracking URI, in
    MLflow; a registry or tracking server that cannot be written is a warning, never a lost report."""
    from fewtune.errors import FewtuneError
    from fewtune.release.registry import record_run

    run_id = None
    try:
        run_id, path = record_run(folder)
        console.print(Text(f"Recorded as run {run_id} in {path}"), highlight=False)
    except FewtuneError as err:
        console.print(
            styled("warning:", "yellow", f" run not recorded in the registry: {err}"), highlight=False
        )
    if mlflow:
        from fewtune.release.mlflow_log import log_run

        try:
            with console.status(Text(f"Logging to MLflow at {mlflow}...")):
                logged = log_run(folder, mlflow, run_id)
            console.print(Text(f"Logged to MLflow ({mlflow}) as run {logged}"), highlight=False)
        except FewtuneError as err:
            console.print(styled("warning:", "yellow", f" not logged to MLflow: {err}"), highlight=False)
