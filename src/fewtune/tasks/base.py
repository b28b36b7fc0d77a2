"""What a task is: how a target becomes the model's output text, how output text is read back, and how a
row is scored (after lm-evaluation-harness's ``Task``: ``doc_to_target``, ``process_results``,
``aggregation``).

Every task is a :class:`TaskType` in the registry (:mod:`fewtune.tasks.registry`): its name, whether a
target value is its kind (task inference), how it is built from the settings and read back from a run's
record. The pipeline gives it the job that runs its methods (:func:`fewtune.run.pipeline.job_for`).
Classification scores a closed label set by label log-likelihood (or generate-and-parse where the backend
has no log-probabilities; :mod:`fewtune.run.classify`).
Open-output tasks (:class:`Task`: extraction, generation, multi-label) share one job: the model generates
text after ``Output:`` until the end of the output block (the ``---`` separator line every demo ends with),
the task parses it, scores each row, and aggregates. Every task names one
:class:`~fewtune.decide.metric.PrimaryMetric` over per-row statistics, which is what the verdict's paired
comparisons resample.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.data.load import Example
from fewtune.decide.metric import PrimaryMetric
from fewtune.prompts.template import END_MARKER

if TYPE_CHECKING:
    from fewtune.config import RunConfig

Embed = Any
"""A sentence embedder's ``embed(texts) -> [n, d]`` (see :mod:`fewtune.embeddings`)."""

CLASSIFICATION = "classification"
EXTRACTION = "extraction"
GENERATION = "generation"
BOOTSTRAP_RESAMPLES = 1000


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


class TaskType:
    """What the pipeline and the report need of every task (class-level: known before any data)."""

    name: str
    target_field: str = "label"
    """The field a row's target is read from unless ``--target-field`` names another."""
    has_reference: bool = False
    """Whether a no-LLM reference exists for the task (run as the ``reference`` method)."""

    @classmethod
    def claims(cls, values: Sequence[Any], field: str) -> str | None:
        """Why target values of this shape are this task's (task inference), or None."""
        return None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> TaskType:
        return cls()

    @classmethod
    def from_record(cls, block: Mapping[str, Any]) -> TaskType:
        """The task as a run's record describes it (its ``task`` block), for the report."""
        return cls()


class Task(TaskType, abc.ABC):
    """An open-output task: rendering, parsing, per-row scores and their aggregates."""

    default_instruction: str
    primary: PrimaryMetric
    """What the verdict decides on."""
    metric_choices: tuple[str, ...] = ()
    """What ``--metric`` may name for this task."""
    stop: str = END_MARKER
    """Where generation stops: the end of the output block (one-line outputs stop at the line's end)."""
    metrics_note: str = ""
    """The report's note under the methods table: how the metrics are computed."""
    scores_with_embedder: bool = False
    """Whether scoring uses sentence embeddings (generation's semantic similarity), set as ``embed``."""
    embed: Embed | None = None

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

    def fit(self, pool: Sequence[TaskExample]) -> None:
        """Learn what the task needs from the pool (extraction: its schema)."""

    def rerender(self, example: TaskExample) -> TaskExample:
        """The example rendered again once ``fit`` has run (extraction's key order); unchanged by default."""
        return example

    def row_details(
        self, test: Sequence[TaskExample], parsed: Sequence[Parsed], scores: Any
    ) -> dict[str, Any]:
        """Extra fields of a method's results row (extraction's per-field table, multi-label's per-label
        one); none by default."""
        return {}

    def degenerate(self, examples: Sequence[TaskExample], parsed: Sequence[Parsed]) -> str | None:
        """Why a method's outputs are not doing the task, in a sentence, beyond the report's generic checks
        (the same output for every row); None by default."""
        return None

    def data_summary(
        self, pool: Sequence[TaskExample], test: Sequence[TaskExample]
    ) -> tuple[dict[str, Any], list[str]]:
        """What the data checks record about pool and test (multi-label: examples per label) and their
        warnings; nothing by default."""
        return {}, []

    def reference(self, embed: Embed, seed: int = 0) -> Any:
        """The no-LLM reference's trainer (``fit(train) -> predictor`` with ``predict(texts)`` giving
        output texts), where :attr:`has_reference`."""
        raise NotImplementedError(f"{self.name} has no reference")

    def describe(self) -> dict[str, Any]:
        """The results' ``task`` block."""
        return {"name": self.name, "primary_metric": self.primary.name}
