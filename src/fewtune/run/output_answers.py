"""Open outputs (extraction, generation, multi-label): text generated for each test row, then the task's
parse, per-row scores and aggregate with intervals. The answer kind the one evaluator
(:func:`fewtune.run.evaluate.evaluate`) scores open-output rows with."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

import numpy as np

from fewtune.backends.base import Backend, Generation, OutputEnd, ProgressFn
from fewtune.data.load import Example
from fewtune.methods import Method, row_name
from fewtune.prompts.template import QUERY_LEAD, OutputTemplate
from fewtune.results.builders import degenerate_fields, training_fields
from fewtune.results.record import MethodRow
from fewtune.results.sections import Fitted
from fewtune.run.evaluate import Identity, Scored, precision_fields
from fewtune.run.latency import time_requests, wall_seconds
from fewtune.strategies.base import PerRowDemos
from fewtune.tasks.base import END_MARKER, Task, TaskExample, bootstrap_ci

# New tokens allowed per output: the longest pool target (plus the end marker), with this much headroom.
MAX_NEW_TOKENS_HEADROOM = 1.25
# Pool targets tokenised to find that longest one (a seeded sample above this many).
LENGTH_SAMPLE = 2000
# Single-request timing stops after this many seconds once LATENCY_MIN_REQUESTS are timed: a 400-token
# support reply takes 10-15 s on two CPU cores, and 20 of them would cost more than the method's whole
# batched evaluation. The row records how many requests were timed.
LATENCY_BUDGET_SECONDS = 60.0
LATENCY_MIN_REQUESTS = 5
# One untimed request first (classification's scorer takes two): the batched pass has just run the same
# model and prefix, so only the one-row shapes are new, and a long answer's warm-up costs a request's time.
LATENCY_WARMUP_REQUESTS = 1


class OutputPrediction(Identity):
    """An open-output row's predictions.jsonl line: one test row's output and its scores."""

    row: int
    text: str
    gold: str
    references: list[str] | None
    """Every reference output, where the row has several (None: ``gold`` alone)."""
    output: str
    parsed: Any
    """The output as the task parsed it (JSON for extraction, labels for multi-label), or None."""
    stopped: bool
    scores: dict[str, float]
    primary_stats: list[float]


@dataclass(frozen=True)
class TextPredictor:
    """A model (base or adapter-merged), its template and demos; generates outputs for inputs."""

    method: str
    backend: Backend
    template: OutputTemplate
    max_new_tokens: int
    stop: str = END_MARKER
    output_end: OutputEnd | None = field(default=None, compare=False)
    """Where an output is complete before ``stop``: the task's :attr:`~fewtune.tasks.base.Task.output_end`."""
    demos: tuple[Example, ...] = ()
    per_row_demos: PerRowDemos | None = None
    train_examples: int = 0
    demo_selection: str | None = None
    demo_seed: int | None = None
    constraint: Callable[[], Any] | None = field(default=None, compare=False)
    """Makes a logits processor that constrains decoding to the output schema (``--constrained``)."""
    fitted: Fitted | None = field(default=None, compare=False)
    """What training measured (a trained row), None for a prompt."""
    recipe: str | None = None
    """A prompted adapter trained another way than usual (``plain-adapter``), named in the row."""

    @property
    def shots(self) -> int:
        return self.per_row_demos.shots if self.per_row_demos else len(self.demos)

    @property
    def name(self) -> str:
        constrained = "constrained" if self.constraint is not None else ""
        return row_name(
            self.method, self.train_examples, self.shots, self.demo_selection, constrained, self.recipe or ""
        )

    def prompts(self, texts: Sequence[str]) -> list[str]:
        demos = self.per_row_demos.for_texts(texts) if self.per_row_demos else [self.demos] * len(texts)
        return [self.template.render(t, d) for t, d in zip(texts, demos, strict=True)]

    def shared_prefix(self) -> str:
        if self.per_row_demos is not None:
            return self.template.header()
        return self.template.prefix(self.demos) + QUERY_LEAD

    def generate(
        self, texts: Sequence[str], batch_size: int = 16, progress: ProgressFn | None = None
    ) -> list[Generation]:
        return self.backend.generate_batch(
            self.prompts(texts),
            prefix=self.shared_prefix(),
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
            output_end=self.output_end,
            batch_size=batch_size,
            progress=progress,
            constraint=self.constraint,
        )

    def with_demos(
        self, demos: Sequence[Example], method: str, selection: str | None, **kw: Any
    ) -> TextPredictor:
        return replace(self, demos=tuple(demos), method=method, demo_selection=selection, **kw)


def max_new_tokens(backend: Backend, template: OutputTemplate, pool: Sequence[TaskExample], seed: int) -> int:
    """The cap on new tokens: the longest pool target's tokens (with the end marker), plus headroom."""
    rng = np.random.default_rng(seed)
    rows = (
        pool if len(pool) <= LENGTH_SAMPLE else [pool[i] for i in rng.choice(len(pool), LENGTH_SAMPLE, False)]
    )
    longest = max(backend.count_tokens_batch([template.continuation(ex.label) for ex in rows]))
    return math.ceil(longest * MAX_NEW_TOKENS_HEADROOM)


def score_outputs(
    task: Task,
    test: Sequence[TaskExample],
    outputs: Sequence[str],
    seed: int,
    stopped: Sequence[bool] | None = None,
) -> Scored[OutputPrediction]:
    """Output texts parsed, scored per row and aggregated with intervals (the floor's outputs are scored
    this way too). ``stopped``: whether each generation ended at the stop marker (None: every row did).

    The quality fields are the primary score and the task's metrics (and ``stopped_rate`` for
    generations); the tail is the task's ``row_details`` and ``degenerate_reason``."""
    parsed = [task.parse(text) for text in outputs]
    scores = task.score_rows(test, parsed, outputs)
    stats = task.primary_stats(scores)
    primary = task.primary
    quality: dict[str, Any] = {
        "primary": {
            "name": primary.name,
            "label": primary.label,
            "value": primary.value(stats),
            "ci95": list(bootstrap_ci(stats, primary.aggregate, seed)),
        },
        "metrics": {name: metric.to_dict() for name, metric in task.aggregate(scores, seed).items()},
    }
    if stopped is not None:
        quality["stopped_rate"] = float(np.mean(stopped))
    tail = {**task.row_details(test, parsed, scores), **degenerate_fields(task.degenerate(test, parsed))}
    lines: list[dict[str, Any]] = [
        {
            "references": list(ex.references) if len(ex.references) > 1 else None,
            "output": out,
            "parsed": p.value if p.ok else None,
            "stopped": stop,
            "scores": score,
            "primary_stats": stats[i].tolist(),
        }
        for i, (ex, out, p, stop, score) in enumerate(
            zip(test, outputs, parsed, stopped or [True] * len(outputs), scores, strict=True)
        )
    ]
    return Scored(cast(MethodRow, quality), lines, cast(MethodRow, tail), outputs)


@dataclass(frozen=True)
class GeneratedOutputs:
    """A language model's outputs: a prompt or a trained adapter, generating up to its token cap."""

    predictor: TextPredictor
    task: Task

    @property
    def identity(self) -> Identity:
        p = self.predictor
        return Identity(method=p.method, name=p.name, shots=p.shots, train_examples=p.train_examples)

    def head(self) -> MethodRow:
        p = self.predictor
        return {
            "demo_selection": p.demo_selection,
            "demo_seed": p.demo_seed,
            "calibrated": False,
            "constrained": p.constraint is not None,
        }

    def answer(
        self, texts: Sequence[str], batch_size: int = 16, progress: ProgressFn | None = None
    ) -> tuple[list[Generation], float | None]:
        return self.predictor.backend.pass_seconds(
            partial(self.predictor.generate, texts, batch_size, progress)
        )

    def latency(self, texts: Sequence[str], requests: int) -> MethodRow:
        """Single-request latency; long outputs stop the timing early (:data:`LATENCY_BUDGET_SECONDS`)."""
        predictor = self.predictor

        def one(text: str) -> float:
            return predictor.backend.timed(
                partial(
                    predictor.backend.generate_batch,
                    predictor.prompts([text]),
                    prefix=predictor.shared_prefix(),
                    max_new_tokens=predictor.max_new_tokens,
                    stop=predictor.stop,
                    output_end=predictor.output_end,
                    batch_size=1,
                    constraint=predictor.constraint,
                )
            )

        latency = time_requests(
            one,
            texts,
            requests,
            warmup=LATENCY_WARMUP_REQUESTS,
            budget_seconds=LATENCY_BUDGET_SECONDS,
            min_requests=LATENCY_MIN_REQUESTS,
        )
        return {"latency_ms": latency}

    def score(
        self, test: Sequence[TaskExample], answered: Sequence[Generation], seed: int
    ) -> Scored[OutputPrediction]:
        scored = score_outputs(
            self.task, test, [g.text for g in answered], seed, [g.stopped for g in answered]
        )
        return replace(scored, answers=answered)

    def tokens(
        self, texts: Sequence[str], scored: Scored[OutputPrediction], seconds: float | None
    ) -> MethodRow:
        generations: Sequence[Generation] = scored.answers
        output_tokens = [g.output_tokens for g in generations]
        return {
            "prompt_tokens_mean": float(np.mean([g.prompt_tokens for g in generations])),
            "prompt_tokens_max": int(max(g.prompt_tokens for g in generations)),
            "output_tokens_mean": float(np.mean(output_tokens)),
            "output_tokens_per_second": sum(output_tokens) / seconds if seconds else None,
        }

    def about(self) -> MethodRow:
        about: MethodRow = {
            "max_new_tokens": self.predictor.max_new_tokens,
            **training_fields(self.predictor.fitted),
        }
        return precision_fields(self.predictor.backend, about)

    def demos(self) -> list[dict[str, Any]]:
        return [{"text": d.text, "output": d.label} for d in self.predictor.demos]


@dataclass(frozen=True)
class ReferenceOutputs:
    """A task's no-LLM reference (``model.predict(texts)`` gives output texts), timed on this machine: its
    own description (``model.describe()``) and the ``embedding_model`` it was fitted over in place of the
    training fields."""

    model: Any
    embedding_model: str
    task: Task
    train_examples: int

    @property
    def identity(self) -> Identity:
        n = self.train_examples
        return Identity(
            method=Method.REFERENCE.value, name=f"{Method.REFERENCE} n={n}", shots=0, train_examples=n
        )

    def head(self) -> MethodRow:
        return {"demo_selection": None, "demo_seed": None, "calibrated": False, "constrained": False}

    def answer(
        self, texts: Sequence[str], batch_size: int = 16, progress: ProgressFn | None = None
    ) -> tuple[list[str], float | None]:
        began = time.perf_counter()
        outputs = self.model.predict(texts)
        return outputs, time.perf_counter() - began

    def latency(self, texts: Sequence[str], requests: int) -> MethodRow:
        latency = time_requests(
            lambda text: wall_seconds(lambda: self.model.predict([text])),
            texts,
            requests,
            warmup=LATENCY_WARMUP_REQUESTS,
        )
        return {"latency_ms": latency}

    def score(
        self, test: Sequence[TaskExample], answered: Sequence[str], seed: int
    ) -> Scored[OutputPrediction]:
        return score_outputs(self.task, test, answered, seed)

    def tokens(
        self, texts: Sequence[str], scored: Scored[OutputPrediction], seconds: float | None
    ) -> MethodRow:
        return {"prompt_tokens_mean": None, "output_tokens_mean": None}

    def about(self) -> MethodRow:
        return {**self.model.describe(), "embedding_model": self.embedding_model}

    def demos(self) -> list[dict[str, Any]]:
        return []
