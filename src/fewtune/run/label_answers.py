"""Answers over a closed label set (classification): every label scored by log-likelihood, or one generated
and parsed; the highest-scoring label is the answer. Scored into label metrics and label prediction lines
for the one evaluator (:func:`fewtune.run.evaluate.evaluate`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NotRequired

import numpy as np

from fewtune.backends.base import ProgressFn
from fewtune.backends.generated import unanswered
from fewtune.data.load import Example
from fewtune.methods import Method
from fewtune.metrics import classification_metrics
from fewtune.results.builders import training_fields
from fewtune.results.record import Latency, MethodRow
from fewtune.run.evaluate import Identity, Scored, precision_fields
from fewtune.run.latency import time_requests, wall_seconds
from fewtune.strategies.base import Predictor, log_softmax

if TYPE_CHECKING:
    from fewtune.strategies.reference import ReferenceModel

# Requests run and discarded before timing, so one-off costs (allocations, kernel selection) don't count.
LATENCY_WARMUP_REQUESTS = 2
# What predictions.jsonl records for a generated answer that names no label (it counts as wrong).
NO_ANSWER = "(no answer)"


class LabelPrediction(Identity):
    """A label row's predictions.jsonl line: one test row's outcome."""

    row: int
    text: str
    gold: str
    predicted: str
    """The label chosen, or :data:`NO_ANSWER`."""
    correct: bool
    score: float
    """The chosen label's log-probability among the labels."""
    scores: dict[str, float]
    """Every label's log-probability among the labels."""
    demo_seed: NotRequired[int | None]
    """Prompting rows: the seed of the draw the line comes from."""
    draw: NotRequired[int]
    """Prompting rows: the draw's index (0: the row's own demos)."""


def label_metrics(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str], seed: int
) -> MethodRow:
    """A label row's quality fields (accuracy with its interval, macro-F1, per_class), in that order."""
    metrics = classification_metrics(gold, predicted, labels, seed=seed)
    return {
        "accuracy": metrics["accuracy"],
        "accuracy_ci95": metrics["accuracy_ci95"],
        "macro_f1": metrics["macro_f1"],
        "per_class": metrics["per_class"],
    }


def scored_labels(
    test: Sequence[Example],
    predicted: Sequence[str],
    scores: np.ndarray,
    labels: Sequence[str],
    seed: int,
    tail: MethodRow | None = None,
) -> Scored[LabelPrediction]:
    """The label metrics and each row's outcome; ``scores`` are reported as log-probabilities among the
    labels (each row's log-softmax)."""
    quality = label_metrics([ex.label for ex in test], predicted, labels, seed)
    shares = log_softmax(scores)
    lines: list[dict[str, Any]] = [
        {
            "predicted": pred,
            "correct": pred == ex.label,
            "score": float(shares[i].max()),
            "scores": {label: float(s) for label, s in zip(labels, shares[i], strict=True)},
        }
        for i, (ex, pred) in enumerate(zip(test, predicted, strict=True))
    ]
    return Scored(quality, lines, tail or {}, predicted)


def measure_latency(predictor: Predictor, texts: Sequence[str], requests: int) -> Latency:
    """Milliseconds per request, one request at a time, as a deployment serving single calls sees them."""
    return time_requests(
        lambda text: predictor.backend.timed(partial(predictor.score, [text], batch_size=1)),
        texts,
        requests,
        warmup=LATENCY_WARMUP_REQUESTS,
    )


@dataclass(frozen=True)
class PromptedLabels:
    """A language model's label answers: a prompt, a trained adapter, a hosted fine-tuned model."""

    predictor: Predictor

    @property
    def identity(self) -> Identity:
        p = self.predictor
        return Identity(method=p.method, name=p.name, shots=p.shots, train_examples=p.train_examples)

    def head(self) -> MethodRow:
        p = self.predictor
        return {"demo_selection": p.demo_selection, "calibrated": p.calibrated, "demo_seed": p.demo_seed}

    def answer(
        self, texts: Sequence[str], batch_size: int = 8, progress: ProgressFn | None = None
    ) -> tuple[np.ndarray, float | None]:
        """Raw label log-likelihoods for ``texts`` (before any calibration) and the seconds they took (None:
        not measured, see :meth:`~fewtune.backends.base.Backend.pass_seconds`)."""
        p = self.predictor
        return p.backend.pass_seconds(partial(p.raw_scores, texts, batch_size=batch_size, progress=progress))

    def latency(self, texts: Sequence[str], requests: int) -> MethodRow:
        """``latency_ms`` as served with prefix caching (vLLM and SGLang do it by default) and, where the
        backend can switch it off, ``latency_ms_no_prefix_cache`` for a server that recomputes the demos
        every time."""
        predictor = self.predictor
        backend: Any = predictor.backend
        if not backend.capabilities.prefix_cache:
            return {"latency_ms": measure_latency(predictor, texts, requests)}
        original = backend.prefix_caching
        try:
            backend.prefix_caching = False
            uncached = measure_latency(predictor, texts, requests)
            backend.prefix_caching = True
            cached = measure_latency(predictor, texts, requests)
        finally:
            backend.prefix_caching = original
        return {"latency_ms": cached, "latency_ms_no_prefix_cache": uncached}

    @property
    def generated(self) -> bool:
        """Labels generated and parsed (the backend gives no log-likelihoods)."""
        return not self.predictor.backend.capabilities.loglikelihood

    def score(self, test: Sequence[Example], answered: np.ndarray, seed: int) -> Scored[LabelPrediction]:
        p = self.predictor
        labels = list(p.template.labels)
        scores = p.adjust(answered)
        missing = unanswered(answered) if self.generated else np.zeros(len(test), dtype=bool)
        predicted = [NO_ANSWER if missing[r] else labels[i] for r, i in enumerate(scores.argmax(axis=1))]
        tail: MethodRow = {"label_scoring": "generate" if self.generated else "loglik"}
        if self.generated:  # answers that named no label: the method's error rate
            tail["unparsed_rate"] = float(missing.mean())
        if p.label_bias is not None:
            tail["label_bias"] = dict(zip(labels, p.label_bias, strict=True))
        if p.template.names:
            tail["label_names"] = dict(p.template.names)
        return scored_labels(test, predicted, scores, labels, seed, tail)

    def tokens(
        self, texts: Sequence[str], scored: Scored[LabelPrediction], seconds: float | None
    ) -> MethodRow:
        p = self.predictor
        backend = p.backend
        prompt_tokens = backend.count_tokens_batch(p.prompts(texts))
        label_tokens = {
            label: backend.count_tokens(p.template.continuation(label)) - 1 for label in p.template.labels
        }
        longest = max(label_tokens.values())
        return {
            "prompt_tokens_mean": float(np.mean(prompt_tokens)),
            "prompt_tokens_max": int(max(prompt_tokens)),
            # An answer that named no label ran to the generation cap (about the longest label).
            "output_tokens_mean": float(np.mean([label_tokens.get(a, longest) for a in scored.answers])),
        }

    def about(self) -> MethodRow:
        return precision_fields(self.predictor.backend, training_fields(self.predictor.fitted))

    def demos(self) -> list[dict[str, Any]]:
        return [{"text": d.text, "label": d.label} for d in self.predictor.demos]


@dataclass(frozen=True)
class ReferenceLabels:
    """The no-LLM reference's label answers (embeddings + logistic regression), timed on this machine."""

    model: ReferenceModel

    @property
    def identity(self) -> Identity:
        m = self.model
        return Identity(method=Method.REFERENCE.value, name=m.name, shots=0, train_examples=m.train_examples)

    def head(self) -> MethodRow:
        return {"demo_selection": None, "calibrated": False, "demo_seed": None}

    def answer(
        self, texts: Sequence[str], batch_size: int = 8, progress: ProgressFn | None = None
    ) -> tuple[np.ndarray, float | None]:
        start = time.perf_counter()
        scores = self.model.score(texts)
        return scores, time.perf_counter() - start

    def latency(self, texts: Sequence[str], requests: int) -> MethodRow:
        latency = time_requests(
            lambda text: wall_seconds(lambda: self.model.score([text])),
            texts,
            requests,
            warmup=LATENCY_WARMUP_REQUESTS,
        )
        return {"latency_ms": latency}

    def score(self, test: Sequence[Example], answered: np.ndarray, seed: int) -> Scored[LabelPrediction]:
        labels = list(self.model.labels)
        predicted = [labels[i] for i in answered.argmax(axis=1)]
        return scored_labels(test, predicted, answered, labels, seed)

    def tokens(
        self, texts: Sequence[str], scored: Scored[LabelPrediction], seconds: float | None
    ) -> MethodRow:
        return {"prompt_tokens_mean": None, "output_tokens_mean": None}

    def about(self) -> MethodRow:
        return training_fields(self.model.fitted)

    def demos(self) -> list[dict[str, Any]]:
        return []
