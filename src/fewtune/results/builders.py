"""The rows and records fewtune writes, built in one place: a method row's training and degenerate fields,
and the report's analysed rows and record laid over what it read (never changing it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from typing_extensions import TypedDict

from fewtune.results.record import Costs, MethodRow, Primary
from fewtune.results.rows import Row, Run
from fewtune.results.sections import Fitted


class RowAnalysis(TypedDict, total=False):
    """What the report adds to a method row (analysis.json's ``methods.<name>``), in the order given."""

    primary: Primary
    degenerate: str | None
    cohen_kappa: float | None
    costs: Costs


def analysed(row: Row, analysis: RowAnalysis) -> Row:
    """A new row: ``row`` with the report's fields laid over it (a field it holds keeps its place); the row
    read is left as it was."""
    return Row({**row.data, **analysis})


class BreakEvenRecord(TypedDict, total=False):
    """The report's ``break_even``: the pair compared and where fine-tuning becomes cheaper."""

    prompting: str | None
    fine_tuned: str | None
    requests: float | None
    days_at_volume: float | None
    """Classification reports: the requests at the run's volume per day."""
    reason: str


class RunAnalysis(TypedDict, total=False):
    """What the report adds to a run's record (analysis.json's top-level keys), in the order given."""

    break_even_requests: float | None
    break_even: BreakEvenRecord
    cost_assumptions: Mapping[str, Any]
    recommendation: Mapping[str, Any]
    curves: Mapping[str, Any]


def analysed_run(results: Mapping[str, Any], analysed_rows: Sequence[Row], analysis: RunAnalysis) -> Run:
    """A new record: ``results`` with its rows replaced by ``analysed_rows`` and the report's fields laid
    over it (a field it holds keeps its place); the record read is left as it was."""
    return Run({**results, "methods": [row.data for row in analysed_rows], **analysis})


def training_fields(fitted: Fitted | None) -> MethodRow:
    """A method row's training fields from what fitting it measured (a predictor's ``fitted``):
    train_seconds first, null for a method that did not train (``fitted`` None), then the rest of its
    section's fields."""
    return {"train_seconds": None} if fitted is None else fitted.fields()


def degenerate_fields(reason: str | None) -> MethodRow:
    """A method row's ``degenerate_reason`` (the task's own check) where its outputs do not do the task;
    nothing where they do."""
    return {"degenerate_reason": reason} if reason else {}
