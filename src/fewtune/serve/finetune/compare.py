"""What no provider reports: was fine-tuning needed? The fine-tuned model against few-shot prompting of its
base model, on the same validation rows the job held back, with fewtune's paired test and its cost model.

- The answers form a closed set (a label set: at most :data:`MAX_LABELS` distinct answers, and fewer than
  half the training rows): each validation row is scored by the log-likelihood of every answer after its
  prompt, as ``fewtune run`` scores labels; the metric is accuracy.
- Otherwise the answers are open: each model writes its answer (greedy) and the metric is exact match (the
  answer's text with surrounding whitespace removed).

The few-shot prompt shows :data:`SHOTS` demos from the job's training rows (never a validation row),
balanced over the answers for a closed set, seeded with the job's seed. Both scores are per row 0/1, so the
comparison is the exact McNemar test with a paired bootstrap interval of the lead
(:func:`fewtune.decide.evidence.compare`), and the verdict turns on the guides' 5-point margin
(:data:`fewtune.decide.thresholds.MARGIN_POINTS`). Costs come from :mod:`~fewtune.decide.cost` with the
server's price table: the measured scoring throughput of each, the training time and tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import numpy as np

from fewtune.backends.base import Backend
from fewtune.data.load import Example
from fewtune.decide.cost import PriceTable, break_even, method_cost
from fewtune.decide.evidence import FINE_TUNED, PROMPT, Comparison, MethodEvidence, compare, versus
from fewtune.decide.metric import ACCURACY_METRIC, label_stats
from fewtune.decide.thresholds import MARGIN_POINTS
from fewtune.methods import Method
from fewtune.metrics import bootstrap_ci
from fewtune.prompts.demos import select_demos
from fewtune.results.record import MethodRow
from fewtune.results.rows import Row
from fewtune.serve.finetune.chat_rows import ChatRow, Render, few_shot_prompt
from fewtune.serve.finetune.state import HyperparameterValues
from fewtune.serve.tokens import shared_prefix

SHOTS = 5
"""Demos in the few-shot prompt: the guides' "try at least 5 examples before fine-tuning"."""
MAX_LABELS = 50
"""Most distinct answers scored as a closed label set."""
MAX_NEW_TOKENS = 256
"""Cap on an open answer's generated tokens (1.25 x the longest training answer, at most this)."""
BATCH = 8
PART = 4 * BATCH
"""Rows scored between two checks for a cancel (each part computes the shared prefix once)."""
Check = Callable[[], None]


@dataclass(frozen=True)
class Training:
    """What the job's training measured, for the cost."""

    examples: int
    seconds: float
    tokens_per_second: float


@dataclass(frozen=True)
class Scored:
    predicted: list[str]
    correct: list[bool]
    seconds: float
    prompt_tokens_mean: float
    output_tokens_mean: float
    scores: list[float] | None = None
    """Closed sets: each row's log-likelihood of the answer it gave."""


class MethodSummary(TypedDict):
    """One side of the comparison: its score on the validation rows and what scoring them took."""

    name: str
    score: float
    ci95: list[float]
    correct: int
    scoring_seconds: float
    prompt_tokens_mean: float
    output_tokens_mean: float


class FewShotSummary(MethodSummary):
    shots: int
    demo_lines: list[int]
    """The training file's lines shown as demos."""


class FewShotCost(TypedDict):
    setup: float
    per_request: float
    basis: str


class FineTunedCost(FewShotCost):
    setup_breakdown: dict[str, float]


class CostSummary(TypedDict):
    price_table: str
    pricing: str
    few_shot: FewShotCost
    fine_tuned: FineTunedCost
    break_even_requests: float | None
    break_even: str


class ValidationRow(TypedDict):
    """A validation row's answers (and, for a closed set, each answer's log-likelihood)."""

    line: int
    answer: str
    few_shot: str
    fine_tuned: str
    few_shot_logprob: NotRequired[float]
    fine_tuned_logprob: NotRequired[float]


class ComparisonResult(TypedDict):
    """The comparison, as the job's result file holds it (:func:`compare_on_validation`)."""

    object: str
    verdict: str
    metric: str
    answers: str
    labels: list[str] | None
    few_shot: FewShotSummary
    fine_tuned: MethodSummary
    comparison: Mapping[str, Any]
    """:meth:`fewtune.decide.evidence.Comparison.to_dict` and the metric's name."""
    cost: CostSummary
    rows: list[ValidationRow]


class LoraShape(TypedDict):
    r: int
    alpha: int
    dropout: float


class TrainingSummary(TypedDict):
    """What the job trained, in the result file."""

    examples: int
    trained_tokens: int
    train_seconds: float
    steps: int
    hyperparameters: HyperparameterValues
    learning_rate: float
    lora: LoraShape


class ValidationSource(TypedDict):
    rows: int
    source: str
    file: str | None


class LossStep(TypedDict):
    step: int
    train_loss: float


class ResultFile(ComparisonResult):
    """The job's result file (``fine-tune-results``): the comparison, with the job's training and where
    its validation rows came from."""

    job: str
    fine_tuned_model: str
    base_model: str
    training: TrainingSummary
    validation: ValidationSource
    steps: list[LossStep]
    """Each optimizer step's training loss."""


def _closed(train: Sequence[ChatRow], validation: Sequence[ChatRow]) -> list[str] | None:
    answers = sorted({r.answer for r in [*train, *validation]})
    if len(answers) <= MAX_LABELS and len(answers) <= max(2, len(train) // 2):
        return answers
    return None


def _parts(prompts: list[str], check: Check) -> Iterator[list[str]]:
    """``prompts`` :data:`PART` at a time, ``check`` called before each (it raises to stop the comparison)."""
    for start in range(0, len(prompts), PART):
        check()
        yield prompts[start : start + PART]


def _score_labels(
    backend: Backend, prompts: list[str], gold: list[str], labels: list[str], check: Check
) -> Scored:
    start = time.perf_counter()
    prefix = shared_prefix(prompts)
    parts = [
        backend.score_choices(part, labels, batch_size=BATCH, prefix=prefix)
        for part in _parts(prompts, check)
    ]
    seconds = time.perf_counter() - start
    scores = np.concatenate([np.asarray(p) for p in parts])
    predicted = [labels[i] for i in scores.argmax(axis=1)]
    label_tokens = {label: backend.count_tokens(label) - 1 for label in labels}
    return Scored(
        predicted,
        [p == g for p, g in zip(predicted, gold, strict=True)],
        seconds,
        float(np.mean([backend.count_tokens(p) for p in prompts])),
        float(np.mean([label_tokens[p] for p in predicted])),
        [float(v) for v in scores.max(axis=1)],
    )


def _generate(
    backend: Backend, prompts: list[str], gold: list[str], max_new: int, stop: str | None, check: Check
) -> Scored:
    start = time.perf_counter()
    prefix = shared_prefix(prompts)
    outputs = [
        output
        for part in _parts(prompts, check)
        for output in backend.generate_batch(
            part, prefix=prefix, max_new_tokens=max_new, stop=stop, batch_size=BATCH
        )
    ]
    seconds = time.perf_counter() - start
    predicted = [o.text.strip() for o in outputs]
    return Scored(
        predicted,
        [p == g.strip() for p, g in zip(predicted, gold, strict=True)],
        seconds,
        float(np.mean([o.prompt_tokens for o in outputs])),
        float(np.mean([o.output_tokens for o in outputs])),
    )


def _demos(train: Sequence[ChatRow], closed: bool, seed: int) -> list[ChatRow]:
    """:func:`fewtune.prompts.demos.select_demos` over the training rows (an example per row, its answer
    as the label)."""
    examples = [Example(str(i), row.answer) for i, row in enumerate(train)]
    chosen = select_demos(examples, min(SHOTS, len(train)), "balanced" if closed else "random", seed)
    return [train[int(ex.text)] for ex in chosen]


def verdict(c: Comparison, shots: int, metric: str) -> str:
    """One line: did fine-tuning pay, was it not needed, or is it not settled on these rows?"""
    line = versus(c, metric)
    margin = f"{MARGIN_POINTS:.0f} points"
    if c.significant and c.ahead_by_more_than(MARGIN_POINTS):
        return f"fine-tuning pays: the fine-tuned model is shown more than {margin} ahead ({line})"
    if c.significant and c.lead_points < 0:
        better = f"{shots}-shot prompting of the base model is significantly better"
        return f"fine-tuning was not needed: {better} ({line})"
    # Within the margin is only shown by enough rows: a few rows without a disagreement give a zero-width
    # bootstrap interval, which shows nothing.
    if c.within(MARGIN_POINTS) and c.rows is not None and c.rows >= (c.rows_needed or 0):
        return (
            f"fine-tuning was not needed: {shots}-shot prompting of the base model is shown within {margin} "
            f"of the fine-tuned model ({line})"
        )
    if c.significantly_ahead:
        return f"fine-tuning helps, but is not shown more than {margin} ahead ({line})"
    more = ""
    if c.rows_needed and c.rows_needed_points is not None:
        more = f"; about {c.rows_needed} validation rows would settle a {c.rows_needed_points:.0f}-point gap"
    return f"not settled on {c.rows} validation rows ({line}){more}"


def _summary(name: str, scored: Scored) -> MethodSummary:
    return {
        "name": name,
        "score": float(np.mean(scored.correct)),
        "ci95": bootstrap_ci(scored.correct),
        "correct": int(sum(scored.correct)),
        "scoring_seconds": scored.seconds,
        "prompt_tokens_mean": scored.prompt_tokens_mean,
        "output_tokens_mean": scored.output_tokens_mean,
    }


def _row(i: int, row: ChatRow, prompting: Scored, tuned: Scored) -> ValidationRow:
    out: ValidationRow = {
        "line": row.line,
        "answer": row.answer,
        "few_shot": prompting.predicted[i],
        "fine_tuned": tuned.predicted[i],
    }
    if prompting.scores is not None and tuned.scores is not None:
        out["few_shot_logprob"], out["fine_tuned_logprob"] = prompting.scores[i], tuned.scores[i]
    return out


def compare_on_validation(
    *,
    base: Backend,
    tuned: Backend,
    train: Sequence[ChatRow],
    validation: Sequence[ChatRow],
    render: Render,
    chat_template: bool,
    seed: int,
    training: Training,
    prices: PriceTable,
    tuned_name: str,
    say: Callable[[str], None] = lambda message: None,
    check: Check = lambda: None,
) -> ComparisonResult:
    """The comparison (module docstring) as the result file's JSON, with its verdict line; ``check`` is
    called before each batch (it raises to stop: a cancelled job)."""
    labels = _closed(train, validation)
    demos = _demos(train, labels is not None, seed)
    gold = [row.answer for row in validation]
    plain = [render(row.messages) for row in validation]
    shown = [few_shot_prompt(demos, row, render, chat_template) for row in validation]
    k = len(demos)
    say(f"Scoring {len(validation)} validation rows: {k}-shot prompting of the base model, then {tuned_name}")
    if labels is not None:
        prompting = _score_labels(base, shown, gold, labels, check)
        tuned_scores = _score_labels(tuned, plain, gold, labels, check)
        metric = "accuracy"
    else:
        longest = max(base.count_tokens(row.answer) for row in train)
        max_new = min(MAX_NEW_TOKENS, math.ceil(1.25 * longest) + 1)
        stop = None if any("\n" in row.answer for row in train) else "\n"
        prompting = _generate(base, shown, gold, max_new, stop, check)
        tuned_scores = _generate(tuned, plain, gold, max_new, stop, check)
        metric = "exact match"
    rows = len(validation)
    fs_row: MethodRow = {
        "method": Method.FEW_SHOT.value,
        "name": f"few-shot k={k}",
        "shots": k,
        "train_examples": 0,
        "throughput_rows_per_second": rows / max(prompting.seconds, 1e-9),
        "prompt_tokens_mean": prompting.prompt_tokens_mean,
        "output_tokens_mean": prompting.output_tokens_mean,
    }
    ft_row: MethodRow = {
        "method": Method.LORA.value,
        "name": tuned_name,
        "shots": 0,
        "train_examples": training.examples,
        "train_seconds": training.seconds,
        "train_tokens_per_second": training.tokens_per_second,
        "throughput_rows_per_second": rows / max(tuned_scores.seconds, 1e-9),
        "prompt_tokens_mean": tuned_scores.prompt_tokens_mean,
        "output_tokens_mean": tuned_scores.output_tokens_mean,
    }
    fs_cost, ft_cost = method_cost(fs_row, prices), method_cost(ft_row, prices)
    index = labels if labels is not None else ["right", "wrong"]

    def evidence(row: Row, scored: Scored, kind: str, cost: Any) -> MethodEvidence:
        if labels is not None:
            stats = label_stats(gold, scored.predicted, index)
        else:  # right or wrong per row: (0, 0) or (0, 1)
            stats = np.array([[0, 0 if ok else 1] for ok in scored.correct], dtype=int)
        score = float(np.mean(scored.correct))
        return MethodEvidence(row.name, kind, score, cost, shots=row.shots, stats=stats, accuracy=score)

    comparison = compare(
        evidence(Row(fs_row), prompting, PROMPT, fs_cost),
        evidence(Row(ft_row), tuned_scores, FINE_TUNED, ft_cost),
        ACCURACY_METRIC,
        seed,
    )
    even = break_even(fs_cost, ft_cost)
    line = verdict(comparison, k, metric)
    say(f"Held-out comparison: {line}")
    return {
        "object": "fewtune.fine_tuning.comparison",
        "verdict": line,
        "metric": metric,
        "answers": "closed label set" if labels is not None else "open",
        "labels": labels,
        "few_shot": {
            **_summary(fs_row["name"], prompting),
            "shots": k,
            "demo_lines": [d.line for d in demos],
        },
        "fine_tuned": _summary(tuned_name, tuned_scores),
        "comparison": {**comparison.to_dict(), "metric": metric},
        "cost": {
            "price_table": prices.preset if prices.file is None else prices.file,
            "pricing": prices.pricing,
            "few_shot": {"setup": fs_cost.setup, "per_request": fs_cost.per_request, "basis": fs_cost.basis},
            "fine_tuned": {
                "setup": ft_cost.setup,
                "setup_breakdown": ft_cost.setup_breakdown,
                "per_request": ft_cost.per_request,
                "basis": ft_cost.basis,
            },
            "break_even_requests": even.requests,
            "break_even": even.reason,
        },
        "rows": [_row(i, row, prompting, tuned_scores) for i, row in enumerate(validation)],
    }
