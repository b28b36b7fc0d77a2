"""The results record's types: what a method row of results.json holds, for every task.

A row is built in one place per kind of method (:func:`fewtune.evaluate.evaluate` for label scoring,
:func:`fewtune.tasks.evaluate.evaluate_text` for generated outputs, the reference's evaluator), stored as
JSON, and read by cost, curves, the verdict and the report through these types, so a misspelt or missing
field is a type error (mypy) rather than a ``KeyError`` in a report.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, TypedDict

PROMPTING_METHODS = ("zero-shot", "few-shot")
"""Rows that ask the prompt model; the fine-tuned rows run on ``--model``."""


class Latency(TypedDict):
    p50: float | None
    p95: float | None
    mean: float | None
    requests: int


class MetricValue(TypedDict):
    value: float
    ci95: list[float]


class Primary(TypedDict, total=False):
    """The score the verdict is decided on (classification: added by the report)."""

    name: str
    metric: str
    label: str
    value: float
    ci95: list[float | None]


class Costs(TypedDict):
    setup: float
    per_request: float
    total_at_horizon: float
    setup_breakdown: dict[str, float]
    per_request_basis: str


class MethodRow(TypedDict, total=False):
    """One method's results row (results.json ``methods[]``)."""

    # identity
    method: str
    name: str
    shots: int
    train_examples: int | None
    demo_selection: str | None
    demo_seed: int | None
    calibrated: bool
    constrained: bool
    model: str
    """The model that answered: --prompt-model for prompting rows of a two-model run, else --model."""
    pricing: str
    """hosted-api for rows answered by an endpoint (priced per token); absent: the price table's pricing."""
    # quality
    primary: Primary
    metrics: dict[str, MetricValue]
    accuracy: float
    accuracy_ci95: list[float]
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    per_field: dict[str, dict[str, float]]
    accuracy_draws: list[float]
    accuracy_mean: float
    accuracy_std: float | None
    demo_seeds: list[int | None]
    label_scoring: str
    unparsed_rate: float
    stopped_rate: float
    degenerate: str | None
    cohen_kappa: float | None
    # speed and size
    latency_ms: Latency
    latency_ms_no_prefix_cache: Latency
    prompt_tokens_mean: float
    prompt_tokens_max: int
    output_tokens_mean: float
    output_tokens_per_second: float | None
    throughput_rows_per_second: float | None
    scoring_seconds: float | None
    max_new_tokens: int
    # training
    train_seconds: float | None
    train_tokens_per_second: float
    train_flops_per_token: float
    train_mfu: float
    train_steps: int
    resumed_at_step: int
    """The checkpoint's step that an interrupted training continued from (0: trained in one go)."""
    class_balance: str
    adapter_path: str
    adapter_bytes: int
    peak_memory_bytes: int | None
    # prompt
    demos: list[dict[str, str]]
    label_bias: dict[str, float]
    label_names: dict[str, str]
    # reference rows
    embedding_model: str
    classifier: str
    # added by the report
    costs: Costs


@dataclass(frozen=True)
class Answerers:
    """Which model answers a row: ``prompt_model`` the prompting rows, ``tuned_model`` the rest."""

    prompt_model: str
    tuned_model: str
    remote_prompting: bool = False
    """The prompting rows' model is an endpoint: they are priced per token (``pricing: hosted-api``)."""

    def tag(self, row: MutableMapping[str, Any]) -> None:
        """Write ``model`` (and ``pricing``) into ``row``, unless it has them already; a reference row
        (sentence embeddings + a classifier) names its own embedding model instead."""
        if row.get("method") == "reference":
            return
        prompting = row.get("method") in PROMPTING_METHODS
        row.setdefault("model", self.prompt_model if prompting else self.tuned_model)
        if prompting and self.remote_prompting:
            row.setdefault("pricing", "hosted-api")


NOT_TIMED = Latency(p50=None, p95=None, mean=None, requests=0)


def latency_of(row: MethodRow, cached: bool = True) -> Latency:
    """A row's single-request latency (with the prefix cache, or without), or an untimed one."""
    value = row.get("latency_ms") if cached else row.get("latency_ms_no_prefix_cache")
    return value or NOT_TIMED


def method_rows(results: dict[str, Any]) -> list[MethodRow]:
    """results.json's method rows, typed."""
    rows: list[MethodRow] = results.get("methods") or []
    return rows
