"""The one typed reading of a run's rows, for every reader (report, decide, release, serve, the terminal).

A :class:`Row` is a method row as results.json holds it, with what the report adds (costs, the primary score,
degenerate) when it was read through the run folder: ``Row(row).accuracy`` instead of ``row["accuracy"]``.
It wraps the mapping without copying, so the field names of :class:`~fewtune.results.record.MethodRow` are
spelled here and nowhere else. :class:`Run` does the same for the run-level fields a reader needs (its rows,
the recommendation, the break-even, the curves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from typing_extensions import TypedDict

from fewtune.methods import Method
from fewtune.results.record import Costs, Latency, MethodRow, MetricValue, Primary


@dataclass(frozen=True)
class Row:
    """A typed view of one method row (a results.json row, or an analysed one with its costs)."""

    data: Mapping[str, Any]

    @property
    def method(self) -> str:
        return str(self.data.get("method"))

    @property
    def kind(self) -> Method:
        """The row's method as a type."""
        return Method.of(self.data)

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.data.get("method"))

    @property
    def shots(self) -> int:
        return int(self.data.get("shots") or 0)

    @property
    def train_examples(self) -> int:
        return int(self.data.get("train_examples") or 0)

    @property
    def demo_selection(self) -> str | None:
        return self.data.get("demo_selection")

    @property
    def accuracy(self) -> float | None:
        value = self.data.get("accuracy")
        return None if value is None else float(value)

    @property
    def accuracy_ci95(self) -> list[float]:
        return list(self.data.get("accuracy_ci95") or [])

    @property
    def macro_f1(self) -> float | None:
        value = self.data.get("macro_f1")
        return None if value is None else float(value)

    @property
    def cohen_kappa(self) -> float | None:
        return self.data.get("cohen_kappa")

    @property
    def primary(self) -> Primary:
        """The score the verdict decides on (``{name, value, ci95, ...}``); empty when none was recorded."""
        return Primary(**(self.data.get("primary") or {}))

    @property
    def primary_value(self) -> float | None:
        value = self.primary.get("value")
        return None if value is None else float(value)

    @property
    def degenerate(self) -> str | None:
        """Why the row's outputs do not do the task (the report's check), or None."""
        return self.data.get("degenerate")

    @property
    def degenerate_reason(self) -> str | None:
        """The task's own degenerate check, made when the row was scored, or None."""
        return self.data.get("degenerate_reason")

    @property
    def latency(self) -> Latency | None:
        return self.data.get("latency_ms")

    @property
    def p50(self) -> float | None:
        return None if self.latency is None else self.latency.get("p50")

    @property
    def p95(self) -> float | None:
        return None if self.latency is None else self.latency.get("p95")

    @property
    def prompt_tokens_mean(self) -> float | None:
        return self.data.get("prompt_tokens_mean")

    @property
    def throughput(self) -> float | None:
        """Test rows scored per second in batches."""
        return self.data.get("throughput_rows_per_second")

    @property
    def train_seconds(self) -> float | None:
        return self.data.get("train_seconds")

    @property
    def adapter_path(self) -> str | None:
        return self.data.get("adapter_path")

    @property
    def adapter_bytes(self) -> int | None:
        return self.data.get("adapter_bytes")

    @property
    def trained_parameters(self) -> int | None:
        return self.data.get("trained_parameters")

    @property
    def kshot_training(self) -> str | None:
        return self.data.get("kshot_training")

    @property
    def per_class(self) -> dict[str, dict[str, float]]:
        return dict(self.data.get("per_class") or {})

    @property
    def per_item(self) -> dict[str, dict[str, float]]:
        """The row's per-item table: per class, per field (extraction) or per label (multi-label)."""
        for key in ("per_class", "per_field", "per_label"):
            if self.data.get(key):
                return dict(self.data[key])
        return {}

    @property
    def costs(self) -> Costs | None:
        """``{setup, per_request, total_at_horizon, ...}`` (added by the report); None before it."""
        return self.data.get("costs")

    @property
    def setup_cost(self) -> float | None:
        return None if self.costs is None else self.costs["setup"]

    @property
    def per_request_cost(self) -> float | None:
        return None if self.costs is None else self.costs["per_request"]

    @property
    def total_cost(self) -> float | None:
        return None if self.costs is None else self.costs["total_at_horizon"]

    # -- added for report/

    @property
    def record(self) -> MethodRow:
        """The row as results.json's typed dict, for the functions that take one whole (cost, curves)."""
        return cast(MethodRow, self.data)

    @property
    def model(self) -> str | None:
        """The model that answered the row (absent on reference rows)."""
        return self.data.get("model")

    @property
    def metrics(self) -> dict[str, MetricValue]:
        """Open outputs: every metric of the task with its interval, by name."""
        return dict(self.data.get("metrics") or {})

    @property
    def accuracy_mean(self) -> float | None:
        """Prompting rows: mean accuracy over the demo draws."""
        return self.data.get("accuracy_mean")

    @property
    def accuracy_std(self) -> float | None:
        """Prompting rows: sample std of accuracy over the demo draws; None for one draw."""
        return self.data.get("accuracy_std")

    @property
    def accuracy_draws(self) -> list[float]:
        """Prompting rows: accuracy of every demo draw; empty when not recorded."""
        return list(self.data.get("accuracy_draws") or [])

    @property
    def latency_mean(self) -> float | None:
        return None if self.latency is None else self.latency.get("mean")

    @property
    def stopped_rate(self) -> float | None:
        """Open outputs: share of outputs that ended on their own."""
        return self.data.get("stopped_rate")

    @property
    def output_tokens_mean(self) -> float | None:
        return self.data.get("output_tokens_mean")

    @property
    def output_tokens_per_second(self) -> float | None:
        return self.data.get("output_tokens_per_second")

    @property
    def breakdowns(self) -> dict[str, dict[str, dict[str, float]]]:
        """Every non-empty ``per_<item>`` table of the row (per_class, per_field, per_label, any a task
        writes), by item name, in the row's order."""
        return {
            key.removeprefix("per_"): dict(items)
            for key, items in self.data.items()
            if key.startswith("per_") and isinstance(items, dict) and items
        }


def rows(results: Mapping[str, Any]) -> list[Row]:
    """Every method row of a record (results.json, or the analysed record), typed."""
    return [Row(row) for row in results.get("methods") or []]


@dataclass(frozen=True)
class Run:
    """A typed view of a record's run-level fields (results.json, or the analysed record)."""

    data: Mapping[str, Any]

    @property
    def rows(self) -> list[Row]:
        return rows(self.data)

    @property
    def row_dicts(self) -> Sequence[Mapping[str, Any]]:
        """The rows as written, for code that passes them on whole."""
        return list(self.data.get("methods") or [])

    @property
    def recommendation(self) -> Mapping[str, Any]:
        """The verdict as the report wrote it (:func:`fewtune.decide.recommend.recommend`'s record)."""
        return self.data.get("recommendation") or {}

    @property
    def break_even(self) -> Mapping[str, Any]:
        return self.data.get("break_even") or {}

    @property
    def curves(self) -> Mapping[str, Any]:
        return self.data.get("curves") or {}

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)


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


@dataclass(frozen=True)
class SizePoint:
    """One point of a training-size curve (LoRA's or the reference's): ``{n, accuracy, ci95, name}``."""

    data: Mapping[str, Any]

    @property
    def n(self) -> int:
        return int(self.data["n"])

    @property
    def accuracy(self) -> float:
        return float(self.data["accuracy"])

    @property
    def ci95(self) -> tuple[float, float]:
        low, high = self.data["ci95"]
        return float(low), float(high)


@dataclass(frozen=True)
class Curves:
    """A typed view of a record's ``curves`` (:func:`fewtune.decide.curves.build_curves`)."""

    data: Mapping[str, Any]

    @property
    def shots(self) -> list[Mapping[str, Any]]:
        """``[{strategy, k, mean, std, draws, name}]``: accuracy per demo selection and shot count."""
        return list(self.data.get("shots") or [])

    @property
    def train_examples(self) -> list[SizePoint]:
        """LoRA's accuracy per training size."""
        return [SizePoint(p) for p in self.data.get("train_examples") or []]

    @property
    def reference(self) -> list[SizePoint]:
        """The no-LLM reference's accuracy per training size."""
        return [SizePoint(p) for p in self.data.get("reference") or []]

    @property
    def crossover(self) -> Mapping[str, Any] | None:
        """``{reached, n, prompt_accuracy, statement, ...}``, or None without a pair to compare."""
        return self.data.get("crossover")
