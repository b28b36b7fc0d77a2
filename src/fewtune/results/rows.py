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
from typing import Any

from fewtune.methods import Method
from fewtune.results.record import Costs, Latency, MetricValue, Primary


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
    def accuracy_draws(self) -> list[float]:
        """Prompting rows: accuracy of every demo draw; empty for a row with one draw."""
        return list(self.data.get("accuracy_draws") or [])

    @property
    def accuracy_mean(self) -> float | None:
        """Prompting rows: mean accuracy over the demo draws; None for a row without draws."""
        return self.data.get("accuracy_mean")

    @property
    def accuracy_std(self) -> float | None:
        """Prompting rows: sample std of accuracy over the demo draws; None for one draw."""
        return self.data.get("accuracy_std")

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
    def metrics(self) -> Mapping[str, MetricValue]:
        """Extraction and generation: every metric of the task with its interval; empty for label rows."""
        return dict(self.data.get("metrics") or {})

    @property
    def max_new_tokens(self) -> int | None:
        return self.data.get("max_new_tokens")

    @property
    def pricing(self) -> str | None:
        """hosted-api for rows answered by an endpoint; None: the price table's pricing."""
        return self.data.get("pricing")

    @property
    def output_tokens_mean(self) -> float | None:
        return self.data.get("output_tokens_mean")

    @property
    def mean_latency_ms(self) -> float | None:
        return None if self.latency is None else self.latency.get("mean")

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


# -- added for decide/release/cli/
@dataclass(frozen=True)
class CurvePoint:
    """A typed view of one point of a training-size curve (``curves.train_examples[]`` or ``reference[]``)."""

    data: Mapping[str, Any]

    @property
    def n(self) -> int:
        """Training examples."""
        return int(self.data["n"])

    @property
    def accuracy(self) -> float:
        return float(self.data["accuracy"])

    @property
    def ci95(self) -> list[float]:
        return list(self.data.get("ci95") or [])

    @property
    def name(self) -> str:
        return str(self.data.get("name"))


@dataclass(frozen=True)
class Curves:
    """A typed view of a record's ``curves`` (:func:`fewtune.decide.curves.build_curves`'s record)."""

    data: Mapping[str, Any]

    @property
    def shots(self) -> list[Mapping[str, Any]]:
        """The shot curve's points ``{strategy, k, mean, std, draws, name}``."""
        return list(self.data.get("shots") or [])

    @property
    def train_examples(self) -> list[Mapping[str, Any]]:
        """LoRA's points by training size (see :class:`CurvePoint`)."""
        return list(self.data.get("train_examples") or [])

    @property
    def reference(self) -> list[Mapping[str, Any]]:
        """The reference's points by training size (see :class:`CurvePoint`)."""
        return list(self.data.get("reference") or [])

    @property
    def crossover(self) -> Mapping[str, Any] | None:
        return self.data.get("crossover")


@dataclass(frozen=True)
class Recommendation:
    """A typed view of a record's ``recommendation`` as far as release reads it (the method and whether the
    verdict is settled); :func:`fewtune.decide.recommend.recommend` writes the whole record."""

    data: Mapping[str, Any]

    @property
    def method(self) -> str | None:
        """The method to ship; None when the report recommends none."""
        value = self.data.get("method")
        return str(value) if value else None

    @property
    def settled(self) -> bool | None:
        """True settled, False provisional, None unknown (a report older than the flag)."""
        value = self.data.get("settled")
        return value if isinstance(value, bool) else None

    @property
    def unsettled(self) -> Any:
        """What did not settle, as written (``{shipped, other, lead_points, ...}``), when provisional."""
        return self.data.get("unsettled")


def training_fields(info: Mapping[str, Any]) -> Mapping[str, Any]:
    """A method row's training fields from what its training measured (``Strategy.info``): train_seconds
    first, null for a method that did not train, then the rest in the order training reported them."""
    return {
        "train_seconds": info.get("train_seconds"),
        **{k: v for k, v in info.items() if k != "train_seconds"},
    }


def degenerate_fields(reason: str | None) -> Mapping[str, Any]:
    """A method row's ``degenerate_reason`` (the task's own check) where its outputs do not do the task;
    nothing where they do."""
    return {"degenerate_reason": reason} if reason else {}
