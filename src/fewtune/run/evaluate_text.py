"""One open-output method on the test rows: generate, parse, score each row, aggregate, time requests."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from fewtune.backends.base import Backend, Generation, ProgressFn
from fewtune.data.load import Example
from fewtune.methods import Method, row_name
from fewtune.prompts.template import QUERY_LEAD, OutputTemplate
from fewtune.results.builders import degenerate_fields, training_fields
from fewtune.results.record import Latency, MethodRow
from fewtune.results.sections import Fitted
from fewtune.run.evaluate import Identity
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
# What a method measured that leads its row, after its identity (the rest follows the primary metrics).
HEAD_FIELDS = ("demo_selection", "demo_seed", "calibrated", "constrained")


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


def _latency(predictor: TextPredictor, texts: Sequence[str], requests: int) -> Latency:
    """Single-request latency; long outputs stop the timing early (:data:`LATENCY_BUDGET_SECONDS`)."""

    def one(text: str) -> float:
        return predictor.backend.timed(
            partial(
                predictor.backend.generate_batch,
                predictor.prompts([text]),
                prefix=predictor.shared_prefix(),
                max_new_tokens=predictor.max_new_tokens,
                stop=predictor.stop,
                batch_size=1,
                constraint=predictor.constraint,
            )
        )

    return time_requests(
        one,
        texts,
        requests,
        warmup=LATENCY_WARMUP_REQUESTS,
        budget_seconds=LATENCY_BUDGET_SECONDS,
        min_requests=LATENCY_MIN_REQUESTS,
    )


def evaluate_text(
    predictor: TextPredictor,
    task: Task,
    test: Sequence[TaskExample],
    *,
    batch_size: int = 16,
    latency_requests: int = 20,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> tuple[Mapping[str, Any], list[OutputPrediction]]:
    """The method's results row and its predictions.jsonl lines."""
    texts = [ex.text for ex in test]
    run = partial(predictor.generate, texts, batch_size, progress)
    generations, seconds = predictor.backend.pass_seconds(run)
    output_tokens = [g.output_tokens for g in generations]
    measured: MethodRow = {
        "demo_selection": predictor.demo_selection,
        "demo_seed": predictor.demo_seed,
        "calibrated": False,
        "constrained": predictor.constraint is not None,
        "stopped_rate": float(np.mean([g.stopped for g in generations])),
        "latency_ms": _latency(predictor, texts, latency_requests),
        "prompt_tokens_mean": float(np.mean([g.prompt_tokens for g in generations])),
        "prompt_tokens_max": int(max(g.prompt_tokens for g in generations)),
        "output_tokens_mean": float(np.mean(output_tokens)),
        "output_tokens_per_second": sum(output_tokens) / seconds if seconds else None,
        "throughput_rows_per_second": len(texts) / seconds if seconds else None,
        "scoring_seconds": seconds,
        "max_new_tokens": predictor.max_new_tokens,
        **training_fields(predictor.fitted),
        "demos": [{"text": d.text, "output": d.label} for d in predictor.demos],
    }
    identity = Identity(
        method=predictor.method,
        name=predictor.name,
        shots=predictor.shots,
        train_examples=predictor.train_examples,
    )
    return score_outputs(task, test, [g.text for g in generations], identity, measured, seed, generations)


def score_outputs(
    task: Task,
    test: Sequence[TaskExample],
    outputs: Sequence[str],
    identity: Identity,
    measured: Mapping[str, Any],
    seed: int,
    generations: Sequence[Generation] | None = None,
) -> tuple[Mapping[str, Any], list[OutputPrediction]]:
    """A method's results row and predictions from its output texts: parsed, scored per row, aggregated
    with intervals; ``measured`` holds what the method measured itself (latency, tokens, training).

    The row is a :class:`~fewtune.results.record.MethodRow` plus the fields the task adds (its
    ``row_details``; a reference's own description), so it is typed as the mapping it is."""
    parsed = [task.parse(text) for text in outputs]
    scores = task.score_rows(test, parsed, outputs)
    stats = task.primary_stats(scores)
    primary = task.primary
    head = {k: measured.get(k) for k in HEAD_FIELDS}
    rest = {k: v for k, v in measured.items() if k not in HEAD_FIELDS}
    row: dict[str, Any] = {
        **identity,
        **head,
        "primary": {
            "name": primary.name,
            "label": primary.label,
            "value": primary.value(stats),
            "ci95": list(bootstrap_ci(stats, primary.aggregate, seed)),
        },
        "metrics": {name: metric.to_dict() for name, metric in task.aggregate(scores, seed).items()},
        **rest,
        **task.row_details(test, parsed, scores),
        **degenerate_fields(task.degenerate(test, parsed)),
    }
    stopped = [g.stopped for g in generations] if generations is not None else [True] * len(outputs)
    predictions: list[OutputPrediction] = [
        {
            **identity,
            "row": i,
            "text": ex.text,
            "gold": ex.label,
            "references": list(ex.references) if len(ex.references) > 1 else None,
            "output": out,
            "parsed": p.value if p.ok else None,
            "stopped": stop,
            "scores": score,
            "primary_stats": stats[i].tolist(),
        }
        for i, (ex, out, p, stop, score) in enumerate(
            zip(test, outputs, parsed, stopped, scores, strict=True)
        )
    ]
    return row, predictions


def evaluate_reference_outputs(
    model: Any,
    embedding_model: str,
    task: Task,
    test: Sequence[TaskExample],
    train_examples: int,
    *,
    latency_requests: int,
    seed: int,
) -> tuple[Mapping[str, Any], list[OutputPrediction]]:
    """A no-LLM reference's row (``model.predict(texts)`` gives output texts), shaped like a method's: its
    own description (``model.describe()``) and the ``embedding_model`` it was fitted over in place of the
    training fields."""
    texts = [ex.text for ex in test]
    began = time.perf_counter()
    outputs = model.predict(texts)
    seconds = time.perf_counter() - began
    latency = time_requests(
        lambda text: wall_seconds(lambda: model.predict([text])),
        texts,
        latency_requests,
        warmup=LATENCY_WARMUP_REQUESTS,
    )
    identity = Identity(
        method=Method.REFERENCE.value,
        name=f"{Method.REFERENCE} n={train_examples}",
        shots=0,
        train_examples=train_examples,
    )
    measured: dict[str, Any] = {
        "demo_selection": None,
        "demo_seed": None,
        "calibrated": False,
        "constrained": False,
        "latency_ms": latency,
        "prompt_tokens_mean": None,
        "output_tokens_mean": None,
        "throughput_rows_per_second": len(texts) / seconds if seconds else None,
        "scoring_seconds": seconds,
        **model.describe(),
        "embedding_model": embedding_model,
        "demos": [],
    }
    return score_outputs(task, test, outputs, identity, measured, seed)
