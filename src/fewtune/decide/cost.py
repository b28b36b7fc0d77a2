"""Cost model: setup and per-request cost of each method, totals over a horizon, and the break-even point.

Every price and rate comes from a documented YAML price table (``costs.yaml`` in the package: defaults with
their sources, and presets); ``--costs`` names a preset or a file of overrides. The formulas:

- per request, self-hosted: ``$/hour / 3600 / measured batched rows per second / utilization``;
- per request, hosted API: ``(prompt tokens x input price + output tokens x output price) / 1e6``, with the
  fine-tuned model's prices for fine-tuned methods; rows answered by an endpoint (``pricing: hosted-api``
  in the row, token counts from the server's usage) are priced so whatever the table's pricing;
- setup, prompting: ``prompt-engineering hours x rate``;
- setup, fine-tuning: ``engineering hours x rate + examples x $/label + measured train seconds x $/hour``
  (or measured training tokens x $/million training tokens on a hosted API);
- total: ``setup + per request x requests``; break-even: the request count where fine-tuning's total falls
  below prompting's, ``(setup_ft - setup_prompt) / (per_request_prompt - per_request_ft)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from fewtune.errors import ConfigError
from fewtune.methods import Method
from fewtune.results.record import Costs, MethodRow
from fewtune.results.rows import Row

SECONDS_PER_HOUR = 3600
TOKENS_PER_MILLION = 1_000_000
# One budgeting year: the horizon teams usually weigh a one-off cost against.
DEFAULT_HORIZON_DAYS = 365
# The guides' "under ~10,000 calls/day" line, used when no --volume-per-day is given (and said so).
DEFAULT_VOLUME_PER_DAY = 10_000
PRICINGS = ("self-hosted", "hosted-api")
AUTO_PRESET = "auto"
PRICE_TABLE_FILE = "costs.yaml"


@dataclass(frozen=True)
class PriceTable:
    """Resolved prices and rates (see costs.yaml for each default's source)."""

    pricing: str
    """How a request is priced: self-hosted (per machine-hour) or hosted-api (per token)."""
    serving_hardware: str
    """What serves requests, in words (for the report and caveats)."""
    serving_dollars_per_hour: float
    """$/hour of the machine that serves requests (self-hosted)."""
    serving_utilization: float
    """Share of paid machine time spent serving (self-hosted); 1.0 = pay-per-use or always busy."""
    training_dollars_per_hour: float
    """$/hour of the machine that trains the adapter."""
    training_dollars_per_million_tokens: float | None
    """Hosted fine-tuning price per million training tokens; None = bill training by the hour."""
    input_dollars_per_million_tokens: float
    """Hosted API price per million prompt tokens, base model."""
    output_dollars_per_million_tokens: float
    """Hosted API price per million output tokens, base model."""
    fine_tuned_input_dollars_per_million_tokens: float
    """Hosted API price per million prompt tokens, fine-tuned model (usually higher than the base)."""
    fine_tuned_output_dollars_per_million_tokens: float
    """Hosted API price per million output tokens, fine-tuned model."""
    engineer_dollars_per_hour: float
    """Loaded cost of an engineer-hour."""
    prompt_engineering_hours: float
    """Hours to write, test and freeze a prompt."""
    fine_tuning_engineering_hours: float
    """Hours to prepare data, train, evaluate and serve an adapter."""
    labelling_dollars_per_example: float
    """Cost of labelling one training example."""
    preset: str = "self-hosted-cpu"
    """The preset the table started from."""
    file: str | None = None
    """The user's --costs file, if any."""
    sources: dict[str, str] = field(default_factory=dict)
    """Where each number comes from."""

    def __post_init__(self) -> None:
        if self.pricing not in PRICINGS:
            raise ConfigError(
                f"price table: pricing must be one of {', '.join(PRICINGS)}, got {self.pricing!r}"
            )
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"price table: {item.name} must be 0 or more, got {value}")
        if not 0 < self.serving_utilization <= 1:
            raise ConfigError(
                f"price table: serving_utilization must be in (0, 1], got {self.serving_utilization}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The resolved table as results.json's ``cost_assumptions.prices``: ``{key: {value, source}}``."""
        return {
            name: {"value": getattr(self, name), "source": self.sources.get(name, "")} for name in PRICE_KEYS
        }


PRICE_KEYS = tuple(f.name for f in fields(PriceTable) if f.name not in ("preset", "file", "sources"))
_NUMBER_KEYS = {name for name in PRICE_KEYS if name not in ("pricing", "serving_hardware")}


def _builtin_table() -> dict[str, Any]:
    return yaml.safe_load(files("fewtune").joinpath(PRICE_TABLE_FILE).read_text(encoding="utf-8"))


def preset_names() -> list[str]:
    return [AUTO_PRESET, *_builtin_table()["presets"]]


def _entries(values: Mapping[str, Any], where: str) -> dict[str, tuple[Any, str]]:
    """``{key: value}`` or ``{key: {value, source}}`` -> ``{key: (value, source)}``, with checked keys."""
    out: dict[str, tuple[Any, str]] = {}
    for key, entry in values.items():
        if key in ("description", "preset"):
            continue
        if key not in PRICE_KEYS:
            raise ConfigError(f"{where}: unknown price key {key!r} (known: {', '.join(PRICE_KEYS)})")
        value, source = entry, where
        if isinstance(entry, dict):
            value, source = entry.get("value"), str(entry.get("source", where))
        if key in _NUMBER_KEYS and value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
            value = float(value)
        out[key] = (value, source)
    return out


def _read_user_file(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: price table not found (give a file or one of: {', '.join(preset_names())})"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of price keys")
    return values


def load_price_table(costs: str | None = None, device: str | None = None) -> PriceTable:
    """Resolve defaults <- preset <- the user's file. ``costs`` is a preset name or a YAML file path.

    ``device`` (e.g. "cpu", "cuda:0") picks the preset for ``auto``: the GPU preset when the run measured on
    a GPU, since per-request cost comes from the throughput measured there.
    """
    table = _builtin_table()
    presets: dict[str, dict[str, Any]] = table["presets"]
    user: dict[str, Any] = {}
    file = None
    preset = AUTO_PRESET
    if costs in presets or costs == AUTO_PRESET:
        preset = costs
    elif costs:
        file = str(costs)
        user = _read_user_file(Path(costs))
        preset = str(user.get("preset", AUTO_PRESET))
    if preset == AUTO_PRESET:
        preset = "self-hosted-gpu" if device and not device.startswith("cpu") else "self-hosted-cpu"
    if preset not in presets:
        raise ConfigError(f"{file or 'price table'}: unknown preset {preset!r} ({', '.join(preset_names())})")
    resolved = _entries(table["defaults"], "costs.yaml defaults")
    resolved.update(_entries(presets[preset] or {}, f"costs.yaml preset {preset}"))
    resolved.update(_entries(user, file or ""))
    missing = [key for key in PRICE_KEYS if key not in resolved]
    if missing:
        raise ConfigError(f"price table: missing {', '.join(missing)}")
    values = {key: value for key, (value, _) in resolved.items()}
    sources = {key: source for key, (_, source) in resolved.items()}
    return PriceTable(**values, preset=preset, file=file, sources=sources)


@dataclass(frozen=True)
class MethodCost:
    """What one method costs: once (setup) and per request."""

    setup: float
    """One-off dollars before the first request."""
    per_request: float
    """Dollars per request."""
    setup_breakdown: dict[str, float] = field(default_factory=dict)
    """Setup split into engineering, labelling and training_compute."""
    basis: str = ""
    """How per_request was computed, with the measured figures."""

    def total(self, requests: float) -> float:
        """Setup plus per-request cost times ``requests``."""
        return self.setup + self.per_request * requests

    def to_row(self, horizon_requests: float) -> Costs:
        """The results row's ``costs`` field."""
        return Costs(
            setup=self.setup,
            per_request=self.per_request,
            total_at_horizon=self.total(horizon_requests),
            setup_breakdown=self.setup_breakdown,
            per_request_basis=self.basis,
        )


def is_trained(row: MethodRow) -> bool:
    """The row's method learns from labelled examples (LoRA, the reference): its setup pays for labelling,
    training compute and fine-tuning hours."""
    return Method.of(row).trained


def uses_prompt_engineering(row: MethodRow) -> bool:
    """Someone writes and tunes its prompt: every LLM method that is not trained, and any that shows demos."""
    method = Method.of(row)
    return not method.trained or method.uses_demos


def _seconds_per_request(row: Row) -> tuple[float, str]:
    throughput = row.throughput
    if throughput:
        return 1 / throughput, f"{throughput:.3g} requests/s measured in batches"
    mean_ms = row.latency_mean
    if mean_ms:
        return mean_ms / 1000, f"{mean_ms:.0f} ms mean single-request latency (no batch throughput)"
    raise ConfigError(f"method {row.name}: no throughput or latency to price")


def token_prices(prices: PriceTable, tuned: bool) -> tuple[float, float]:
    """Dollars per million input and output tokens, at the fine-tuned model's prices when ``tuned``."""
    if tuned:
        return (
            prices.fine_tuned_input_dollars_per_million_tokens,
            prices.fine_tuned_output_dollars_per_million_tokens,
        )
    return prices.input_dollars_per_million_tokens, prices.output_dollars_per_million_tokens


def per_request_cost(row: MethodRow, prices: PriceTable) -> tuple[float, str]:
    """Dollars per request for one results.json method row, and how it was computed."""
    typed = Row(row)
    if (typed.pricing or prices.pricing) == "self-hosted":
        seconds, measured = _seconds_per_request(typed)
        dollars = prices.serving_dollars_per_hour / SECONDS_PER_HOUR * seconds / prices.serving_utilization
        return dollars, (
            f"{measured} x ${prices.serving_dollars_per_hour:g}/h ({prices.serving_hardware})"
            f" / utilization {prices.serving_utilization:g}"
        )
    tuned = is_trained(row)
    price_in, price_out = token_prices(prices, tuned)
    prompt_tokens = float(typed.prompt_tokens_mean or 0)
    output_tokens = float(typed.output_tokens_mean or 0)
    dollars = (prompt_tokens * price_in + output_tokens * price_out) / TOKENS_PER_MILLION
    model = "fine-tuned" if tuned else "base"
    return dollars, (
        f"{prompt_tokens:.0f} prompt tokens x ${price_in:g}/M + {output_tokens:.1f} output tokens x "
        f"${price_out:g}/M ({model} model prices)"
    )


def training_compute_cost(row: MethodRow, prices: PriceTable) -> float:
    """Training tokens x the per-token training price when the table has one (a hosted-ft row's
    ``trained_tokens`` as its provider billed them, else measured seconds x tokens per second), else
    training seconds x the training machine's $/hour."""
    typed = Row(row)
    seconds = float(typed.train_seconds or 0)
    trained = typed.trained_tokens
    tokens_per_second = typed.train_tokens_per_second
    tokens = float(trained) if trained is not None else seconds * float(tokens_per_second or 0)
    if prices.training_dollars_per_million_tokens is not None and tokens:
        return tokens / TOKENS_PER_MILLION * prices.training_dollars_per_million_tokens
    return seconds / SECONDS_PER_HOUR * prices.training_dollars_per_hour


def method_cost(row: MethodRow, prices: PriceTable) -> MethodCost:
    """Setup and per-request cost of one results.json method row under ``prices``."""
    hours = prices.prompt_engineering_hours if uses_prompt_engineering(row) else 0.0
    breakdown = {"engineering": 0.0, "labelling": 0.0, "training_compute": 0.0}
    if is_trained(row):
        hours += prices.fine_tuning_engineering_hours
        breakdown["labelling"] = float(Row(row).train_examples) * prices.labelling_dollars_per_example
        breakdown["training_compute"] = training_compute_cost(row, prices)
    breakdown["engineering"] = hours * prices.engineer_dollars_per_hour
    per_request, basis = per_request_cost(row, prices)
    return MethodCost(sum(breakdown.values()), per_request, breakdown, basis)


@dataclass(frozen=True)
class BreakEven:
    """Where fine-tuning's total cost falls below prompting's."""

    requests: float | None
    """Request count from which fine-tuning is cheaper in total; None = never."""
    reason: str
    """One sentence with the figures."""


def break_even(prompting: MethodCost, fine_tuned: MethodCost) -> BreakEven:
    """Solve ``prompting.total(n) == fine_tuned.total(n)`` for the request count ``n``."""
    extra_setup = fine_tuned.setup - prompting.setup
    saving = prompting.per_request - fine_tuned.per_request
    if saving > 0:
        if extra_setup <= 0:
            return BreakEven(
                0.0, "fine-tuning is cheaper from the first request (less setup and per request)"
            )
        return BreakEven(
            extra_setup / saving,
            f"{format_usd(extra_setup)} of extra setup / {format_usd(saving)} saved per request",
        )
    if extra_setup < 0:
        if saving == 0:
            return BreakEven(0.0, "fine-tuning is cheaper to set up and costs the same per request")
        return BreakEven(
            0.0,
            "fine-tuning is cheaper to set up but dearer per request; prompting is cheaper in total after "
            f"{format_count(extra_setup / saving)} requests",
        )
    paid_back = f", so its {format_usd(extra_setup)} of extra setup is never paid back" if extra_setup else ""
    return BreakEven(
        None,
        f"never: a fine-tuned request costs {format_usd(fine_tuned.per_request)}, no less than the "
        f"prompt's {format_usd(prompting.per_request)}{paid_back}",
    )


def format_usd(value: float) -> str:
    """Dollars for people: $5,500 / $12.34 / $0.0071 / $0.0000071 (two significant digits when small)."""
    if value == 0:
        return "$0"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value >= 1000:
        return f"{sign}${value:,.0f}"
    if value >= 1:
        return f"{sign}${value:,.2f}"
    digits = max(2, 1 - math.floor(math.log10(value)))
    return f"{sign}${value:.{digits}f}"


def format_days(days: float) -> str:
    """A duration for people: 12 days / 7 months / 29 years."""
    if days < 60:
        return f"{days:,.0f} days"
    if days < 730:
        return f"{days / 30.4:,.0f} months"
    return f"{days / 365:,.0f} years"


def format_count(value: float) -> str:
    """A request count for people: 100,000 / 1.2 million / 3.4 billion."""
    if value >= 1e9:
        return f"{value / 1e9:.3g} billion"
    if value >= 1e6:
        return f"{value / 1e6:.3g} million"
    return f"{math.ceil(value):,}"
