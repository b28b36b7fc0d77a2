"""What a task is: how a target becomes the model's output text, how output text is read back, and how a
row is scored (after lm-evaluation-harness's ``Task``: ``doc_to_target``, ``process_results``,
``aggregation``).

Every task is a :class:`TaskType` in the registry (:mod:`fewtune.tasks.registry`): its name, whether a
target value is its kind (task inference), how it is built from the settings and read back from a run's
record. Every task's methods run through one job (:class:`fewtune.run.job.Job`).
Classification scores a closed label set by label log-likelihood (or generate-and-parse where the backend
has no log-probabilities; :mod:`fewtune.run.label_rows`).
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

from fewtune.backends.base import OutputEnd
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

ClassHits = dict[str, tuple[np.ndarray, np.ndarray]]
"""Per class (label, field): per-row (hits, chances), whose ratio is the class's recall (the release gate's
class floors)."""


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


def add_hit(groups: ClassHits, rows: int, name: str, row: int, hit: float, chances: float) -> None:
    """Count ``hit`` out of ``chances`` for class ``name`` on ``row`` (of ``rows``)."""
    if name not in groups:
        groups[name] = (np.zeros(rows), np.zeros(rows))
    groups[name][0][row] += hit
    groups[name][1][row] += chances


class TaskType:
    """What the pipeline, the report, the server and the release gate need of every task (class-level:
    known before any data). Code outside ``tasks/`` asks these, never the task's name."""

    name: str
    target_field: str = "label"
    """The field a row's target is read from unless ``--target-field`` names another."""
    has_reference: bool = False
    """Whether a no-LLM reference exists for the task (run as the ``reference`` method)."""
    metric_choices: tuple[str, ...] = ()
    """What ``--metric`` may name for this task."""
    open_output: bool = False
    """Whether the model writes open text the task parses (extraction, generation, multi-label): the report
    shows outputs side by side and the server generates; classification scores a closed label set."""
    labels_from_gold: bool = False
    """Whether every row's gold answer is one of the run's labels, so that a run recorded without its label
    list has them in its gold answers (classification)."""
    class_word: str = "class"
    """What the release gate calls one of the groups it floors recall over (a label; extraction: a field)."""

    @classmethod
    def failed(cls, lines: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
        """Per prediction line (predictions.jsonl), 1 where the method gave no valid answer, else 0."""
        raise NotImplementedError

    @classmethod
    def class_hits(cls, lines: Sequence[Mapping[str, Any]]) -> ClassHits:
        """Per class, per prediction line: (hits, chances); none by default."""
        return {}

    @classmethod
    def row_stats(cls, lines: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
        """The per-row statistics the primary metric aggregates, read back from prediction lines."""
        raise NotImplementedError

    @classmethod
    def degenerate_metrics(cls, metrics: Mapping[str, Any], more: str) -> tuple[str, str] | None:
        """Why a method's metrics show it is not doing the task, and what to try (``more`` names the remedy
        of its kind of method), for the report; None by default."""
        return None

    def release_metric(self, lines: Sequence[Mapping[str, Any]], override: str | None) -> PrimaryMetric:
        """The metric the release gate decides on over the baseline's prediction lines (``override``: the
        policy's metric, where the task lets the user choose at gate time)."""
        raise NotImplementedError

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
    open_output = True
    stop: str = END_MARKER
    """Where generation stops: the end of the output block (one-line outputs stop at the line's end)."""
    output_end: OutputEnd | None = None
    """Where an output is complete before ``stop`` (extraction: its JSON object closed), as
    :data:`~fewtune.backends.base.OutputEnd`; generation stops there too. Cutting an output there must not
    change what :meth:`parse` reads from it. None: at ``stop`` only."""
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

    @classmethod
    def failed(cls, lines: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
        """Unparsed, or not valid (for the schema, or the known labels): the strictest check every line
        records."""
        scores = [p.get("scores") or {} for p in lines]
        for key in ("schema_valid", "valid", "parsed"):
            if scores and all(key in s for s in scores):
                return np.array([1.0 - float(s[key]) for s in scores])
        return np.zeros(len(lines))

    @classmethod
    def row_stats(cls, lines: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
        return np.array([p["primary_stats"] for p in lines], dtype=float)

    def release_metric(self, lines: Sequence[Mapping[str, Any]], override: str | None) -> PrimaryMetric:
        return self.primary
