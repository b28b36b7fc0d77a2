"""The run record as types: a :class:`RunRecord` of :class:`MethodResult` rows, versioned, read from and
written to results.json through ``from_dict`` / ``to_dict`` (the field-by-field format is
:class:`fewtune.results.record.RunResults` and :class:`~fewtune.results.record.MethodRow`, documented in
docs/results-format.md).

Every task's row has the same typed core: the method (a :class:`~fewtune.methods.Method`), its name, shots,
training examples, and a ``metrics`` map of ``{name: {value, ci95}}``; classification rows keep their
label fields (accuracy, per_class, ...) as written and show accuracy and macro-F1 in the map too. What a
row holds beyond the core stays in it, so a record read and written again is unchanged.

Versions: 2 (this one) adds the ``task`` block and per-row ``primary``/``metrics`` for open outputs; a
version-1 record (classification, rows possibly without ``name``) is read as version 2; a newer version than
this fewtune knows is refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fewtune.errors import FewtuneError
from fewtune.methods import Method
from fewtune.results.record import MethodRow, MetricValue, RunResults

SCHEMA_VERSION = 2
"""results.json's layout: 2 adds the ``task`` block, and ``primary`` / ``metrics`` on every method row."""
# Classification's label metrics, as the map names them: (value field, interval field).
LABEL_METRICS = {"accuracy": ("accuracy", "accuracy_ci95"), "macro_f1": ("macro_f1", "macro_f1_ci95")}
# What every row of a task carries, whoever wrote it: the report, cost and verdict read these unguarded.
CLASSIFICATION = "classification"
"""The task of a record that names none (every record before tasks were recorded)."""
REQUIRED_FIELDS = {CLASSIFICATION: ("accuracy", "accuracy_ci95")}
# What the report computes: always in analysis.json, even where a results.json written by an earlier version
# (whose report added them there) already holds the same values. Recomputed, so not checked when read back.
REPORT_KEYS = ("break_even_requests", "break_even", "cost_assumptions", "recommendation", "curves")
REPORT_ROW_KEYS = ("costs", "primary", "degenerate")
_UNCHECKED_ROW_KEYS = ("costs", "degenerate")  # an open-output row's primary is the run's own: checked
_ROW = TypeAdapter(MethodRow)
_HEADER = TypeAdapter(RunResults)


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    field_path = ".".join(str(part) for part in first["loc"])
    return f"{field_path}: {first['msg']} (got {first['input']!r:.60})"


def check_row(row: Mapping[str, Any], where: str, task: str = CLASSIFICATION) -> None:
    """A one-line error naming the row and field when a row read back (an edited or damaged results.json)
    lacks what its task's rows always carry, holds a field of the wrong type (checked against
    :class:`~fewtune.results.record.MethodRow`, leniently: ``"0.5"`` reads as a number) or an interval that
    is not ``[low, high]``."""
    label = f"{where}: method row {row.get('name') or row.get('method')!r}"
    missing = [key for key in REQUIRED_FIELDS.get(task, ()) if key not in row]
    if missing:
        raise FewtuneError(f"{label} has no {', '.join(repr(k) for k in missing)} (a {task} row always does)")
    try:
        _ROW.validate_python({k: v for k, v in row.items() if k not in _UNCHECKED_ROW_KEYS})
    except ValidationError as err:
        raise FewtuneError(f"{label}: {_first_error(err)}") from None
    metrics = row.get("metrics") or {}
    intervals = [(key, row[key]) for key in row if key.endswith("_ci95")]
    intervals += [(f"metrics.{name}.ci95", metric.get("ci95")) for name, metric in metrics.items()]
    for key, interval in intervals:
        if interval is None or interval == []:
            continue  # no interval recorded
        if not _is_interval(interval):
            raise FewtuneError(
                f"{label}: {key}: an interval is [low, high] with low <= high, got {interval!r:.60}"
            )


def _is_interval(value: Any) -> bool:
    if not isinstance(value, list) or len(value) != 2:
        return False
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return False
    return bool(value[0] <= value[1])


def check_header(data: Mapping[str, Any], where: str) -> None:
    """The run-level fields of results.json (everything but ``methods``), checked against
    :class:`fewtune.results.record.RunResults`."""
    try:
        _HEADER.validate_python({k: v for k, v in data.items() if k != "methods" and k not in REPORT_KEYS})
    except ValidationError as err:
        raise FewtuneError(f"{where}: {_first_error(err)}") from None


@dataclass
class MethodResult:
    """One method's row of a run."""

    method: Method
    name: str
    shots: int
    train_examples: int | None
    metrics: dict[str, MetricValue]
    """Every metric with its 95% interval (``ci95`` is empty where the row recorded none)."""
    row: Mapping[str, Any] = field(repr=False)
    """The row as results.json holds it."""

    @property
    def primary_value(self) -> float | None:
        """The row's own primary score (open outputs record it; classification's is chosen by the report)."""
        primary = self.row.get("primary")
        return float(primary["value"]) if primary else None

    @classmethod
    def from_dict(
        cls,
        row: Mapping[str, Any],
        where: str = "results.json",
        task: str = CLASSIFICATION,
        check: bool = True,
    ) -> MethodResult:
        if not isinstance(row, Mapping) or "method" not in row:
            raise FewtuneError(f"{where}: a method row without a 'method' field")
        method = Method.of(row)
        if check:
            check_row(row, where, task)
        data = dict(row)
        data.setdefault("name", str(row["method"]))  # version 1 rows may lack a name
        metrics: dict[str, MetricValue] = dict(data.get("metrics") or {})
        for key, (value, interval) in LABEL_METRICS.items():
            if value in data and key not in metrics:
                metrics[key] = MetricValue(value=float(data[value]), ci95=list(data.get(interval) or []))
        return cls(
            method=method,
            name=str(data["name"]),
            shots=int(data.get("shots") or 0),
            train_examples=data.get("train_examples"),
            metrics=metrics,
            row=data,
        )

    def to_dict(self) -> MethodRow:
        return MethodRow(**self.row)  # type: ignore[typeddict-item]


@dataclass
class RunRecord:
    """A run: what it measured on which data, and each finished method."""

    schema_version: int
    task: Mapping[str, Any]
    status: str
    methods: list[MethodResult]
    header: dict[str, Any] = field(repr=False)
    """Every other top-level field as written (model, seed, dataset, hardware, labels, curves, ...)."""
    folder: Path | None = field(default=None, compare=False)
    """The run folder it was read from (None for a record built from a dict); not part of results.json."""

    @property
    def task_name(self) -> str:
        return str(self.task.get("name") or CLASSIFICATION)

    def method(self, name: str) -> MethodResult:
        for result in self.methods:
            if result.name == name:
                return result
        raise KeyError(name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path = "results.json") -> RunRecord:
        """A record as results.json holds it; one-line errors name ``where`` when it is not one."""
        if not isinstance(data, Mapping):
            raise FewtuneError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = int(data.get("schema_version") or 1)
        if version > SCHEMA_VERSION:
            raise FewtuneError(
                f"{where}: schema_version {version} is newer than this fewtune reads ({SCHEMA_VERSION}); "
                "upgrade fewtune"
            )
        rows = data.get("methods") or []
        if not isinstance(rows, list):
            raise FewtuneError(f"{where}: 'methods' must be a list")
        check_header(data, str(where))
        header = {k: v for k, v in data.items() if k not in ("schema_version", "task", "status", "methods")}
        task = data.get("task") or {"name": CLASSIFICATION}
        task_name = str(task.get("name") or CLASSIFICATION)
        return cls(
            schema_version=SCHEMA_VERSION,
            task=dict(task),
            status=str(data.get("status") or "unknown"),
            methods=[MethodResult.from_dict(row, str(where), task_name) for row in rows],
            header=header,
        )

    def to_dict(self) -> dict[str, Any]:
        """The record for results.json, in the order ``fewtune run`` writes its fields."""
        head = {k: self.header[k] for k in ("fewtune_version",) if k in self.header}
        rest = {k: v for k, v in self.header.items() if k not in head}
        return {
            "schema_version": self.schema_version,
            **head,
            "task": self.task,
            "status": self.status,
            **rest,
            "methods": [m.to_dict() for m in self.methods],
        }
