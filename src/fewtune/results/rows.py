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

    # -- added for decide/release/cli/
    @property
    def train_examples_recorded(self) -> int | None:
        """train_examples as the row holds it: None where it is null (prompting rows may hold 0 or null)."""
        return self.data.get("train_examples")

    @property
    def calibrated(self) -> bool:
        """A contextually calibrated row (--calibrate)."""
        return bool(self.data.get("calibrated"))

    @property
    def constrained(self) -> bool:
        """Extraction: decoded under the output's JSON Schema."""
        return bool(self.data.get("constrained"))

    @property
    def demo_seed(self) -> int | None:
        return self.data.get("demo_seed")

    @property
    def demos(self) -> list[Mapping[str, str]]:
        """The demos shown: ``[{text, label}]``; extraction and generation ``[{text, output}]``."""
        return list(self.data.get("demos") or [])

    @property
    def label_bias(self) -> Mapping[str, float] | None:
        """Calibrated rows: ``{label: log p}`` of the content-free inputs; None otherwise."""
        return self.data.get("label_bias") or None

    @property
    def max_new_tokens(self) -> int | None:
        return self.data.get("max_new_tokens")

    @property
    def pricing(self) -> str | None:
        """hosted-api for rows answered by an endpoint; None: the price table's pricing."""
        return self.data.get("pricing")

    @property
    def train_tokens_per_second(self) -> float | None:
        return self.data.get("train_tokens_per_second")

    @property
    def train_steps(self) -> int | None:
        return self.data.get("train_steps")

    @property
    def trained_tokens(self) -> int | None:
        """hosted-ft: the tokens the job trained on as the provider counts them."""
        return self.data.get("trained_tokens")


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
