"""The prompting rows of a run: zero-shot, then every shot count x demo selection, each over its demo draws,
with a contextually calibrated twin when asked; every prompt is checked against the model's context first.

One results row per (shots, selection[, calibrated]). With ``--demo-seeds N`` the random and balanced rows
draw N demo sets (seeds seed..seed+N-1): the row's metrics are the first draw's (the set drawn with
``--seed``, the one a team would ship), and ``accuracy_mean`` / ``accuracy_std`` / ``accuracy_draws`` are
over all draws. predictions.jsonl keeps every draw: the first under the row's name, the others under
"<name> seed=<seed>", so each name has one prediction per test row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from fewtune.backends.base import Backend, ProgressFn
from fewtune.config import RunConfig
from fewtune.data.load import Example
from fewtune.errors import ConfigError
from fewtune.methods import Method
from fewtune.prompts.demos import FIXED_SELECTIONS, DemoIndex
from fewtune.prompts.template import PromptTemplate
from fewtune.results.record import MethodRow
from fewtune.run.evaluate import combine_draws, evaluate, latency_fields
from fewtune.run.label_answers import LabelPrediction, PromptedLabels
from fewtune.strategies.base import Predictor
from fewtune.strategies.fewshot import FewShot
from fewtune.tasks.calibration import calibrated

# fewtune's threshold for "slow on CPU": a 270M model scores a 2,048-token prompt in several seconds on two
# cores, and attention cost grows with the square of the length.
CPU_LONG_PROMPT_TOKENS = 2048

Record = Callable[[MethodRow, list[LabelPrediction]], None]
"""Stores one finished results row and its predictions (all draws)."""


@dataclass
class PromptSet:
    """One prompting results row: its predictor for each demo draw (the first is the row's own)."""

    draws: list[Predictor]

    @property
    def first(self) -> Predictor:
        return self.draws[0]


def few_shot_draws(
    backend: Backend,
    template: PromptTemplate,
    pool: Sequence[Example],
    shots: int,
    selection: str,
    seed: int,
    draws: int = 1,
    index: DemoIndex | None = None,
) -> list[Predictor]:
    """The predictor of each demo draw; nearest (deterministic) and zero-shot have one."""
    if selection not in FIXED_SELECTIONS or shots == 0:
        draws = 1
    return [
        FewShot(backend, template, shots, selection, seed + i, index=index).fit(pool) for i in range(draws)
    ]


def prompt_sets(
    cfg: RunConfig,
    pool: Sequence[Example],
    backend: Backend,
    template: PromptTemplate,
    index: DemoIndex | None,
) -> list[PromptSet]:
    """Every prompting row the run asked for, in report order (zero-shot, then by shots, then selection)."""
    sets = []
    if Method.ZERO_SHOT in cfg.eval.methods:
        sets.append(PromptSet(few_shot_draws(backend, template, pool, 0, "balanced", cfg.seed)))
    if Method.FEW_SHOT in cfg.eval.methods:
        for k in (k for k in cfg.prompt.shots if k > 0):
            for selection in cfg.prompt.demo_selection:
                draws = few_shot_draws(
                    backend, template, pool, k, selection, cfg.seed, cfg.prompt.demo_seeds, index
                )
                sets.append(PromptSet(draws))
    return sets


def check_context(predictors: Sequence[Predictor], texts: Sequence[str], backend: Backend) -> list[str]:
    """Refuse (ConfigError) any shot count whose longest prompt would not fit the model's context; return
    warnings for prompts long enough to be slow on CPU."""
    limit = backend.context_length
    on_cpu = backend.on_cpu
    warnings: list[str] = []
    zero_tokens: int | None = None
    for predictor in predictors:
        if not predictor.shots and predictor.per_row_demos is None:
            continue
        if zero_tokens is None:
            zero = replace(predictor, demos=(), per_row_demos=None)
            zero_tokens = max(backend.count_tokens_batch(zero.prompts(texts)))
        label_tokens = max(backend.count_tokens(c) for c in predictor.choices())
        longest = max(backend.count_tokens_batch(predictor.prompts(texts))) + label_tokens
        if limit and longest > limit:
            per_demo = max((longest - zero_tokens) / predictor.shots, 1.0)
            fits = int((limit - zero_tokens - label_tokens) // per_demo)
            raise ConfigError(
                f"--shots {predictor.shots} does not fit the model's context: {predictor.name}'s longest "
                f"prompt is {longest:,} tokens with its label, over the model's {limit:,}; use --shots "
                f"{max(fits, 0)} or fewer"
            )
        if on_cpu and longest > CPU_LONG_PROMPT_TOKENS:
            warnings.append(
                f"{predictor.name}: prompts up to {longest:,} tokens; on CPU prompts over "
                f"{CPU_LONG_PROMPT_TOKENS:,} tokens are slow to score (fewer shots are faster)"
            )
    return list(dict.fromkeys(warnings))


def run_prompt_set(
    pset: PromptSet,
    test: Sequence[Example],
    cfg: RunConfig,
    record: Record,
    scorer: Callable[[str, Callable[[ProgressFn | None], Any]], Any],
) -> None:
    """Score every draw of one prompting row (and its calibrated twin), then record the combined rows.

    ``scorer(title, work)`` runs ``work(progress)`` under a progress bar titled ``title`` and returns its
    result.
    """
    texts = [ex.text for ex in test]
    first = pset.first
    calibrate = cfg.prompt.calibrate and first.per_row_demos is None
    rows: list[MethodRow] = []
    cal_rows: list[MethodRow] = []
    predictions: list[LabelPrediction] = []
    cal_predictions: list[LabelPrediction] = []
    latency: MethodRow | None = None
    for i, predictor in enumerate(pset.draws):
        title = f"Scoring {predictor.name}"
        if len(pset.draws) > 1:
            title += f" (draw {i + 1}/{len(pset.draws)}, seed {predictor.demo_seed})"
        answers = PromptedLabels(predictor)
        raw, seconds = scorer(title, partial(answers.answer, texts, cfg.eval.batch_size))
        row, preds = evaluate(
            answers,
            test,
            latency_requests=cfg.eval.latency_requests,
            seed=cfg.seed,
            answered=(raw, seconds),
            latency=latency,
        )
        latency = latency or latency_fields(row)
        rows.append(row)
        predictions += _tag_draw(preds, predictor, i)
        if calibrate:
            tuned = calibrated(predictor)
            cal_row, cal_preds = evaluate(
                PromptedLabels(tuned), test, seed=cfg.seed, answered=(raw, seconds), latency=latency
            )
            cal_rows.append(cal_row)
            cal_predictions += _tag_draw(cal_preds, tuned, i)
    record(combine_draws(rows), predictions)
    if cal_rows:
        record(combine_draws(cal_rows), cal_predictions)


def _tag_draw(predictions: list[LabelPrediction], predictor: Predictor, draw: int) -> list[LabelPrediction]:
    """Mark each prediction with its demo seed; draws after the first get their own name."""
    name = predictor.name if draw == 0 else f"{predictor.name} seed={predictor.demo_seed}"
    for p in predictions:
        p["name"] = name
        p["demo_seed"] = predictor.demo_seed
        p["draw"] = draw
    return predictions
