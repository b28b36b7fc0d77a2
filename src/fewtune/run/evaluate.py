"""The one evaluator: every method row of every task (a prompt, the reference, a trained adapter, a hosted
model) is scored on the test rows here, in the same steps: the batched pass over the test rows (its seconds
give the throughput), single requests timed for latency, the answers scored, token counts, the training
fields, the demos shown, and one predictions.jsonl line per test row.

What differs between tasks is the kind of answer, an :class:`Answers`: scores over a closed label set
(:mod:`fewtune.run.label_answers`: label metrics and label prediction lines) or generated text
(:mod:`fewtune.run.output_answers`: the task's parse, per-row scores and aggregate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np
from typing_extensions import TypedDict

from fewtune.backends.base import ProgressFn
from fewtune.decide.curves import accuracy_of
from fewtune.results.record import MethodRow
from fewtune.results.rows import Row

P = TypeVar("P")
# The type of a row's predictions.jsonl lines (LabelPrediction, OutputPrediction).
L = TypeVar("L", covariant=True)


class Identity(TypedDict):
    """Which row a predictions.jsonl line belongs to (the first fields of every line, and of the row)."""

    method: str
    name: str
    shots: int
    train_examples: int


@dataclass(frozen=True)
class Scored(Generic[L]):
    """How one method row's answers scored; its predictions.jsonl lines are of type ``L``."""

    quality: MethodRow
    """The row's quality fields, after its head (label metrics; the primary score and metrics)."""
    lines: list[dict[str, Any]]
    """Each test row's outcome: its predictions.jsonl line after identity, row, text and gold."""
    tail: MethodRow = field(default_factory=lambda: MethodRow())
    """The fields that close the row (how labels were scored; the task's own details)."""
    answers: Sequence[Any] = ()
    """Each test row's answer as recorded (the label chosen, the output text)."""


class Answers(Protocol[L]):
    """One method row's kind of answer: how a test row's answer is obtained and scored. The row's
    predictions.jsonl lines are of type ``L``."""

    @property
    def identity(self) -> Identity: ...

    def head(self) -> MethodRow:
        """The fields after the identity: how the demos were chosen, calibration, constraints."""
        ...

    def answer(
        self, texts: Sequence[str], batch_size: int, progress: ProgressFn | None
    ) -> tuple[Any, float | None]:
        """The batched pass: every test row's raw answer, and the seconds it took (None: not measured)."""
        ...

    def latency(self, texts: Sequence[str], requests: int) -> MethodRow:
        """The latency fields: ``requests`` single requests timed."""
        ...

    def score(self, test: Sequence[Any], answered: Any, seed: int) -> Scored[L]: ...

    def tokens(self, texts: Sequence[str], scored: Scored[Any], seconds: float | None) -> MethodRow:
        """The token fields (prompt and output tokens; None where no tokens are counted)."""
        ...

    def about(self) -> MethodRow:
        """What the answering model is: its training fields (or a reference's description)."""
        ...

    def demos(self) -> list[dict[str, Any]]:
        """The demos its prompts show."""
        ...


def evaluate(
    answers: Answers[P],
    test: Sequence[Any],
    *,
    batch_size: int = 8,
    latency_requests: int = 20,
    seed: int = 0,
    progress: ProgressFn | None = None,
    answered: tuple[Any, float | None] | None = None,
    latency: MethodRow | None = None,
) -> tuple[MethodRow, list[P]]:
    """A method's results row and its per-test-row predictions.jsonl lines.

    ``answered`` reuses the batched pass of :meth:`Answers.answer` (a calibrated row shares its uncalibrated
    twin's raw scores); ``latency`` reuses another row's latency fields instead of timing requests again.
    """
    texts = [ex.text for ex in test]
    raw, seconds = answered or answers.answer(texts, batch_size, progress)
    if latency is None:
        latency = answers.latency(texts, latency_requests)
    scored = answers.score(test, raw, seed)
    identity = answers.identity
    row: dict[str, Any] = {
        **identity,
        **answers.head(),
        **scored.quality,
        **latency,
        **answers.tokens(texts, scored, seconds),
        "throughput_rows_per_second": len(texts) / seconds if seconds else None,
        "scoring_seconds": seconds,
        **answers.about(),
        "demos": answers.demos(),
        **scored.tail,
    }
    return cast(MethodRow, row), cast(list[P], prediction_lines(identity, test, scored))


def prediction_lines(identity: Identity, test: Sequence[Any], scored: Scored[Any]) -> list[dict[str, Any]]:
    """predictions.jsonl lines: ``identity`` (method, name, shots, train_examples), the test row, its
    outcome."""
    return [
        {**identity, "row": i, "text": ex.text, "gold": ex.label, **line}
        for i, (ex, line) in enumerate(zip(test, scored.lines, strict=True))
    ]


def precision_fields(backend: Any, about: MethodRow) -> MethodRow:
    """``about`` with the precision a local model computed in, where training did not record it."""
    precision = getattr(backend, "precision", None)
    if precision is None or "precision" in about:
        return about
    return cast(MethodRow, {**about, "precision": precision.name})


def latency_fields(row: MethodRow) -> MethodRow:
    """``row``'s latency fields, for a row timed the same way (a calibrated twin, another demo draw)."""
    fields: MethodRow = {}
    if "latency_ms" in row:
        fields["latency_ms"] = row["latency_ms"]
    if "latency_ms_no_prefix_cache" in row:
        fields["latency_ms_no_prefix_cache"] = row["latency_ms_no_prefix_cache"]
    return fields


def combine_draws(rows: Sequence[MethodRow]) -> MethodRow:
    """One results row for several demo draws of the same method: the first draw's full metrics (the demo
    set drawn with ``--seed``, whose predictions keep the row's name) plus accuracy mean and std over draws.
    """
    first: MethodRow = {**rows[0]}
    accuracies = [accuracy_of(Row(row)) for row in rows]
    first["demo_seeds"] = [row.get("demo_seed") for row in rows]
    first["accuracy_draws"] = accuracies
    first["accuracy_mean"] = float(np.mean(accuracies))
    # Sample standard deviation across draws; undefined for one draw.
    first["accuracy_std"] = float(np.std(accuracies, ddof=1)) if len(rows) > 1 else None
    return first
