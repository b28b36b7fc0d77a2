"""Score one predictor on the test rows: accuracy and friends, latency, tokens, throughput."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NotRequired

import numpy as np
from typing_extensions import TypedDict

from fewtune.backends.base import ProgressFn
from fewtune.backends.generated import unanswered
from fewtune.data.load import Example
from fewtune.decide.curves import accuracy_of
from fewtune.methods import Method
from fewtune.metrics import classification_metrics
from fewtune.results.builders import training_fields
from fewtune.results.record import Latency, MethodRow
from fewtune.results.rows import Row
from fewtune.run.latency import time_requests, wall_seconds
from fewtune.strategies.base import Predictor, log_softmax

if TYPE_CHECKING:
    from fewtune.strategies.reference import ReferenceModel

# Requests run and discarded before timing, so one-off costs (allocations, kernel selection) don't count.
LATENCY_WARMUP_REQUESTS = 2
# What predictions.jsonl records for a generated answer that names no label (it counts as wrong).
NO_ANSWER = "(no answer)"


class Identity(TypedDict):
    """Which row a predictions.jsonl line belongs to (the first fields of every line)."""

    method: str
    name: str
    shots: int
    train_examples: int


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


def measure_latency(predictor: Predictor, texts: Sequence[str], requests: int) -> Latency:
    """Milliseconds per request, one request at a time, as a deployment serving single calls sees them."""
    return time_requests(
        lambda text: predictor.backend.timed(partial(predictor.score, [text], batch_size=1)),
        texts,
        requests,
        warmup=LATENCY_WARMUP_REQUESTS,
    )


def _latencies(predictor: Predictor, texts: Sequence[str], requests: int) -> MethodRow:
    """``latency_ms`` as served with prefix caching (vLLM and SGLang do it by default) and, where the backend
    can switch it off, ``latency_ms_no_prefix_cache`` for a server that recomputes the demos every time."""
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


def latency_fields(row: MethodRow) -> MethodRow:
    """``row``'s latency fields, for a row timed the same way (a calibrated twin, another demo draw)."""
    fields: MethodRow = {}
    if "latency_ms" in row:
        fields["latency_ms"] = row["latency_ms"]
    if "latency_ms_no_prefix_cache" in row:
        fields["latency_ms_no_prefix_cache"] = row["latency_ms_no_prefix_cache"]
    return fields


def score_test(
    predictor: Predictor, texts: Sequence[str], batch_size: int = 8, progress: ProgressFn | None = None
) -> tuple[np.ndarray, float | None]:
    """Raw label log-likelihoods for ``texts`` (before any calibration) and the seconds they took (None: not
    measured, see :meth:`~fewtune.backends.base.Backend.pass_seconds`)."""
    return predictor.backend.pass_seconds(
        partial(predictor.raw_scores, texts, batch_size=batch_size, progress=progress)
    )


def evaluate(
    predictor: Predictor,
    test: Sequence[Example],
    *,
    batch_size: int = 8,
    latency_requests: int = 20,
    seed: int = 0,
    progress: ProgressFn | None = None,
    scored: tuple[np.ndarray, float | None] | None = None,
    latency: MethodRow | None = None,
) -> tuple[MethodRow, list[LabelPrediction]]:
    """Return the method's results row and its per-test-row predictions.

    ``scored`` reuses raw scores from :func:`score_test` (a calibrated row shares its uncalibrated twin's);
    ``latency`` reuses another row's latency fields instead of timing requests again.
    """
    texts = [ex.text for ex in test]
    labels = list(predictor.template.labels)
    raw, scoring_seconds = scored or score_test(predictor, texts, batch_size, progress)
    scores = predictor.adjust(raw)
    generated = not predictor.backend.capabilities.loglikelihood  # labels generated and parsed
    missing = unanswered(raw) if generated else np.zeros(len(texts), dtype=bool)
    predicted = [NO_ANSWER if missing[r] else labels[i] for r, i in enumerate(scores.argmax(axis=1))]
    gold = [ex.label for ex in test]
    backend = predictor.backend
    prompt_tokens = backend.count_tokens_batch(predictor.prompts(texts))
    label_tokens = {
        label: backend.count_tokens(predictor.template.continuation(label)) - 1 for label in labels
    }
    longest = max(label_tokens.values())
    if latency is None:
        latency = _latencies(predictor, texts, latency_requests)
    row: MethodRow = {
        "method": predictor.method,
        "name": predictor.name,
        "shots": predictor.shots,
        "train_examples": predictor.train_examples,
        "demo_selection": predictor.demo_selection,
        "calibrated": predictor.calibrated,
        "demo_seed": predictor.demo_seed,
        **label_metrics(gold, predicted, labels, seed),
        **latency,
        "prompt_tokens_mean": float(np.mean(prompt_tokens)),
        "prompt_tokens_max": int(max(prompt_tokens)),
        # An answer that named no label ran to the generation cap (about the longest label).
        "output_tokens_mean": float(np.mean([label_tokens.get(p, longest) for p in predicted])),
        "throughput_rows_per_second": len(texts) / scoring_seconds if scoring_seconds else None,
        "scoring_seconds": scoring_seconds,
        **training_fields(predictor.fitted),
        "demos": [{"text": d.text, "label": d.label} for d in predictor.demos],
        "label_scoring": "generate" if generated else "loglik",
    }
    if generated:  # answers that named no label: the method's error rate
        row["unparsed_rate"] = float(missing.mean())
    if predictor.label_bias is not None:
        row["label_bias"] = dict(zip(labels, predictor.label_bias, strict=True))
    if predictor.template.names:
        row["label_names"] = dict(predictor.template.names)
    identity = Identity(
        method=predictor.method,
        name=predictor.name,
        shots=predictor.shots,
        train_examples=predictor.train_examples,
    )
    return row, prediction_rows(identity, test, predicted, scores, labels)


def prediction_rows(
    identity: Identity,
    test: Sequence[Example],
    predicted: Sequence[str],
    scores: np.ndarray,
    labels: Sequence[str],
) -> list[LabelPrediction]:
    """predictions.jsonl lines: ``identity`` (method, name, shots, train_examples) plus each row's outcome.

    ``scores`` are reported as log-probabilities among the labels (each row's log-softmax).
    """
    scores = log_softmax(scores)
    return [
        {
            **identity,
            "row": i,
            "text": ex.text,
            "gold": ex.label,
            "predicted": pred,
            "correct": pred == ex.label,
            "score": float(scores[i].max()),
            "scores": {label: float(s) for label, s in zip(labels, scores[i], strict=True)},
        }
        for i, (ex, pred) in enumerate(zip(test, predicted, strict=True))
    ]


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


def _reference_latency(model: ReferenceModel, texts: Sequence[str], requests: int) -> Latency:
    return time_requests(
        lambda text: wall_seconds(lambda: model.score([text])),
        texts,
        requests,
        warmup=LATENCY_WARMUP_REQUESTS,
    )


def evaluate_reference(
    model: ReferenceModel, test: Sequence[Example], *, latency_requests: int = 20, seed: int = 0
) -> tuple[MethodRow, list[LabelPrediction]]:
    """The reference's results row and per-test-row predictions, shaped like ``evaluate``'s."""
    texts = [ex.text for ex in test]
    labels = list(model.labels)
    start = time.perf_counter()
    scores = model.score(texts)
    scoring_seconds = time.perf_counter() - start
    predicted = [labels[i] for i in scores.argmax(axis=1)]
    gold = [ex.label for ex in test]
    row: MethodRow = {
        "method": Method.REFERENCE.value,
        "name": model.name,
        "shots": 0,
        "train_examples": model.train_examples,
        "demo_selection": None,
        "calibrated": False,
        "demo_seed": None,
        **label_metrics(gold, predicted, labels, seed),
        "latency_ms": _reference_latency(model, texts, latency_requests),
        "prompt_tokens_mean": None,
        "output_tokens_mean": None,
        "throughput_rows_per_second": len(texts) / scoring_seconds if scoring_seconds else None,
        "scoring_seconds": scoring_seconds,
        **training_fields(model.fitted),
        "demos": [],
    }
    identity = Identity(
        method=Method.REFERENCE.value, name=model.name, shots=0, train_examples=model.train_examples
    )
    return row, prediction_rows(identity, test, predicted, scores, labels)
