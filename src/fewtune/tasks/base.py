"""What a task is: how a target becomes the model's output text, how output text is read back, and how a
row is scored (after lm-evaluation-harness's ``Task``: ``doc_to_target``, ``process_results``,
``aggregation``).

Classification keeps its own path (label log-likelihoods over a closed label set, :mod:`fewtune.evaluate`).
The two open-output tasks, extraction and generation, share one pipeline: the model generates text after
``Output:`` until the end of the output block (the ``---`` separator line every demo ends with), the task
parses it, scores each row, and aggregates. Every task names one :class:`~fewtune.decide.metric.PrimaryMetric`
over per-row statistics, which is what the verdict's paired comparisons resample.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.data.load import Example
from fewtune.decide.metric import PrimaryMetric

CLASSIFICATION = "classification"
EXTRACTION = "extraction"
GENERATION = "generation"
TASKS = (CLASSIFICATION, EXTRACTION, GENERATION)
# The end of an output block: every demo's output is followed by a line holding the prompt's separator.
END_MARKER = "\n---"
BOOTSTRAP_RESAMPLES = 1000
# results.json layout: 2 adds the ``task`` block, and ``primary`` / ``metrics`` on every method row.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class TaskExample(Example):
    """An example whose target is more than a label: ``label`` holds the rendered output text (what demos
    show and LoRA learns), ``target`` the parsed value it was rendered from."""

    target: Any = field(default=None, compare=False)
    references: tuple[str, ...] = field(default=(), compare=False)
    """Every acceptable output (generation); the first is ``label``."""
    fields: Mapping[str, str] | None = field(default=None, compare=False)
    """Structured input values the output should mention (data-to-text), when the row carries them."""


@dataclass(frozen=True)
class Parsed:
    """One output text read back: ``value`` is None when it could not be parsed."""

    value: Any
    ok: bool
    """Parsed at all (extraction: valid JSON object)."""
    valid: bool
    """Conforms to the output's schema (extraction); equals ``ok`` where there is no schema."""


@dataclass(frozen=True)
class Metric:
    """One aggregate metric with its 95% bootstrap interval."""

    value: float
    ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": list(self.ci95)}


def bootstrap_ci(stats: np.ndarray, aggregate: Any, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of ``aggregate`` over rows resampled with replacement (seeded)."""
    if len(stats) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = [aggregate(stats[rng.integers(0, len(stats), len(stats))]) for _ in range(BOOTSTRAP_RESAMPLES)]
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return (float(low), float(high))


class Task(abc.ABC):
    """An open-output task: rendering, parsing, per-row scores and their aggregates."""

    name: str
    default_instruction: str
    primary: PrimaryMetric
    """What the verdict decides on."""
    metric_choices: tuple[str, ...] = ()
    """What ``--metric`` may name for this task."""
    stop: str = END_MARKER
    """Where generation stops: the end of the output block (one-line outputs stop at the line's end)."""

    @abc.abstractmethod
    def read_target(
        self, value: Any, record: Mapping[str, Any], path: Path, line: int, field: str = "target"
    ) -> TaskExample:
        """Build the example's target from its target field (``value``) and the rest of its record; raise
        :class:`DataError` naming file and line when the value is not this task's kind."""

    @abc.abstractmethod
    def output_format(self) -> str:
        """The prompt's line(s) stating the exact output format."""

    @abc.abstractmethod
    def parse(self, text: str) -> Parsed: ...

    @abc.abstractmethod
    def score_rows(
        self, examples: Sequence[TaskExample], parsed: Sequence[Parsed], outputs: Sequence[str]
    ) -> list[dict[str, float]]:
        """Per-row scores, by name; ``primary_stats`` picks the primary metric's columns from them."""

    @abc.abstractmethod
    def primary_stats(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """``[rows, d]`` statistics the primary metric aggregates (and a paired bootstrap resamples)."""

    @abc.abstractmethod
    def aggregate(self, rows: Sequence[Mapping[str, float]], seed: int) -> dict[str, Metric]:
        """Every metric of the task over the rows, each with its 95% interval."""

    def stratum(self, example: TaskExample) -> str:
        """What splits and samples are stratified by; one stratum (plain random sampling) by default."""
        return ""

    def fit(self, pool: Sequence[TaskExample]) -> None:  # noqa: B027 (optional hook)
        """Learn what the task needs from the pool (extraction: its schema)."""

    def describe(self) -> dict[str, Any]:
        """The results' ``task`` block."""
        return {"name": self.name, "primary_metric": self.primary.name}
