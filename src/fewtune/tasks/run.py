"""``fewtune run`` for extraction and generation: every method generates on the same test rows.

Rows: zero-shot and k-shot prompts (demo selections random or nearest; ``balanced`` has no labels to
balance here and draws at random), each also schema-constrained with ``--constrained`` (extraction), then a
LoRA adapter per training size, alone and with the first k-shot prompt. Results are written as each row
finishes, as for classification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fewtune.config import RunConfig
from fewtune.errors import ConfigError
from fewtune.methods import Method, any_fine_tuned
from fewtune.prompts.demos import NEAREST, DemoIndex, NearestDemos, select_demos
from fewtune.store import RunStore
from fewtune.tasks.base import EXTRACTION, Task, TaskExample
from fewtune.tasks.data import TaskData, stratified
from fewtune.tasks.evaluate import TextPredictor, evaluate_text, max_new_tokens
from fewtune.tasks.template import OutputTemplate

TEXT_METHODS = tuple(m.value for m in Method if m.uses_llm)


def check_text_plan(cfg: RunConfig, task: Task) -> None:
    """Settings that make no sense for an open-output task fail before any work."""
    methods = [m for m in cfg.eval.methods if m in TEXT_METHODS]
    if not methods:
        raise ConfigError(f"--methods for {task.name} takes {', '.join(TEXT_METHODS)}")
    cfg.eval.methods = methods  # the reference classifies labels: it has no open-output form
    if cfg.cost.metric is not None and cfg.cost.metric not in task.metric_choices:
        raise ConfigError(f"--metric for {task.name} takes {', '.join(task.metric_choices)}")
    if cfg.lora.class_balance != "none":
        raise ConfigError(f"--class-balance needs labels; {task.name} has none")
    if cfg.eval.constrained and task.name != EXTRACTION:
        raise ConfigError("--constrained needs an output schema: it applies to --task extraction")
    if cfg.prompt.calibrate or cfg.prompt.label_names:
        raise ConfigError(f"--calibrate and --label-names apply to classification, not {task.name}")


def run_text_methods(
    cfg: RunConfig,
    task: Task,
    data: TaskData,
    backends: tuple[Any, Any],
    store: RunStore,
    record: Any,
    with_progress: Callable[..., Any],
    train_progress: Callable[[str], Any],
    index: DemoIndex | None,
) -> None:
    instruction = cfg.prompt.instruction or task.default_instruction
    template = OutputTemplate(instruction, task.output_format())
    # An adapter learns the output format from its training targets, so its prompts carry the instruction
    # line only: the shorter requests that fine-tuning buys (the guides' cost argument), and a training
    # run that does not spend most of its tokens on a format block.
    tuned_template = OutputTemplate(instruction, "")
    # backend: --model, which LoRA trains on; prompt_backend: the model the prompting rows ask.
    backend, prompt_backend = backends
    cap = max_new_tokens(prompt_backend, template, data.pool, cfg.seed)
    methods = cfg.eval.methods
    shots = [k for k in cfg.prompt.shots if k > 0]
    base = TextPredictor("zero-shot", prompt_backend, template, cap, stop=task.stop)
    schema = getattr(task, "schema", None)
    constraint = prompt_backend.schema_constraint(schema) if cfg.eval.constrained and schema else None

    def demos_for(predictor: TextPredictor, k: int, selection: str, method: str) -> TextPredictor:
        if selection == NEAREST:
            assert index is not None
            return predictor.with_demos((), method, NEAREST, per_row_demos=NearestDemos(index, k))
        picked = select_demos(data.pool, k, "random", cfg.seed)
        return predictor.with_demos(picked, method, "random", demo_seed=cfg.seed)

    def score(predictor: TextPredictor) -> None:
        if predictor.name in record.done:
            return
        row, predictions = with_progress(
            f"Generating {predictor.name}",
            lambda progress: evaluate_text(
                predictor,
                task,
                data.test,
                batch_size=cfg.eval.batch_size,
                latency_requests=cfg.eval.latency_requests,
                seed=cfg.seed,
                progress=progress,
            ),
        )
        record(row, predictions)
        record.describe(row)

    prompts: list[TextPredictor] = []
    if "zero-shot" in methods and 0 in cfg.prompt.shots:
        prompts.append(base)
    if "few-shot" in methods:
        selections = list(
            dict.fromkeys("random" if s == "balanced" else s for s in cfg.prompt.demo_selection)
        )
        prompts += [demos_for(base, k, s, "few-shot") for k in shots for s in selections]
    for predictor in prompts:
        score(predictor)
        if constraint is not None:
            score(replace(predictor, constraint=constraint))
    if not any_fine_tuned(methods):
        return
    from fewtune.strategies.lora import Lora

    if not backend.capabilities.trainable:
        raise ConfigError(
            f"LoRA needs a local Hugging Face model; backend '{backend.name}' cannot be trained"
        )

    lead = cfg.prompt.demo_selection[0]
    for n in cfg.lora.train_sizes:
        names = [f"lora n={n}"] if "lora" in methods else []
        adapter_rows = names + [f"lora+few-shot n={n} k={k}" for k in shots if "lora+few-shot" in methods]
        if all(any(done.startswith(name) for done in record.done) for name in adapter_rows):
            continue
        train: list[TaskExample] = [data.pool[i] for i in stratified(data.pool, n, task, cfg.seed)]
        adapter = train_progress(f"Training lora n={n}")(
            lambda on_step, train=train, n=n: Lora(
                backend,
                tuned_template,
                cfg.lora,
                store.adapter_dir(f"lora-n{n}"),
                seed=cfg.seed,
                progress=on_step,
            ).train(train)
        )
        if backend is not prompt_backend:  # the cap counts the trained model's tokens
            cap = max_new_tokens(backend, template, data.pool, cfg.seed)
        tuned = TextPredictor(
            "lora", adapter[0], tuned_template, cap, stop=task.stop, train_examples=n, info=adapter[1]
        )
        if "lora" in methods:
            score(tuned)
        if "lora+few-shot" in methods:
            for k in shots:
                score(demos_for(tuned, k, lead if lead == NEAREST else "random", "lora+few-shot"))
