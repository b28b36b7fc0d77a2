"""The job of every open-output task (extraction, generation, multi-label): every method generates on the
same test rows.

Rows: zero-shot and k-shot prompts (demo selections random or nearest; ``balanced`` has no labels to
balance here and draws at random), each also schema-constrained with ``--constrained`` (extraction), the
task's no-LLM reference per training size where it has one (multi-label), then a LoRA adapter per training
size, alone and with the first k-shot prompt. Results are recorded as each row finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from fewtune.config import RunConfig
from fewtune.errors import ConfigError, ModelError
from fewtune.methods import Method, any_fine_tuned
from fewtune.prompts.demos import NEAREST, DemoIndex, NearestDemos, select_demos, training_demos
from fewtune.prompts.template import OutputTemplate
from fewtune.results.resume import fingerprint
from fewtune.run.evaluate_text import (
    TextPredictor,
    evaluate_reference_outputs,
    evaluate_text,
    max_new_tokens,
    score_outputs,
)
from fewtune.run.events import RunEvents
from fewtune.run.job import TaskJob
from fewtune.run.loaders import answerers
from fewtune.run.plan import RunPlan, check_shots_and_sizes
from fewtune.run.session import RunSession
from fewtune.strategies.base import PLAIN_ADAPTER
from fewtune.tasks.base import Task, TaskExample
from fewtune.tasks.data import TaskData, prepare_task_data, stratified

TEXT_METHODS = tuple(m.value for m in Method if m.uses_llm)
# The name of the floor's lines in predictions.jsonl (not a method: nothing ships it).
FLOOR = "floor"


def check_text_plan(cfg: RunConfig, task: Task) -> None:
    """Settings that make no sense for an open-output task fail before any work."""
    if cfg.cost.metric is not None and cfg.cost.metric not in task.metric_choices:
        raise ConfigError(f"--metric for {task.name} takes {', '.join(task.metric_choices)}")
    if cfg.lora.class_balance != "none":
        raise ConfigError(f"--class-balance needs one label per row; {task.name} has none")
    if cfg.eval.constrained and not hasattr(task, "schema"):
        raise ConfigError("--constrained needs an output schema: it applies to --task extraction")
    if cfg.prompt.calibrate or cfg.prompt.label_names:
        raise ConfigError(f"--calibrate and --label-names apply to classification, not {task.name}")
    if Method.HOSTED_FT in cfg.eval.methods:
        raise ConfigError(
            f"--methods hosted-ft is built for classification so far; {task.name} runs cannot use it yet"
        )


class TextJob(TaskJob):
    def __init__(
        self, plan: RunPlan, task: Task, events: RunEvents, embedder_factory: Callable[[Any, RunEvents], Any]
    ) -> None:
        self.plan, self.cfg, self.task, self.events = plan, plan.cfg, task, events
        self.embedder_factory = embedder_factory
        self.embedder: Any = None
        self.data: TaskData | None = None

    def _needs_reference(self) -> bool:
        return self.task.has_reference and Method.REFERENCE in self.cfg.eval.methods

    def _load_embedder(self) -> Any:
        """The sentence embedder, when something uses it: nearest demos or the reference (required), or
        the task's own scoring (generation's semantic similarity: left out, with a warning, when the
        embedder cannot load)."""
        cfg, task = self.cfg, self.task
        needed = NEAREST in cfg.prompt.demo_selection or self._needs_reference()
        if not needed and not task.scores_with_embedder:
            return None
        try:
            return self.embedder_factory(cfg, self.events)
        except ModelError as err:
            if needed or cfg.cost.metric == "semantic":
                raise
            self.events.warn(f"semantic similarity left out: {err}")
            return None

    def prepare(self) -> dict[str, Any]:
        cfg, task, plan = self.cfg, self.task, self.plan
        check_text_plan(cfg, task)  # before anything loads
        self.embedder = self._load_embedder()
        if self.embedder is not None and task.scores_with_embedder:
            task.embed = self.embedder.embed
        data = self.data = prepare_task_data(
            task,
            plan.data,
            plan.test,
            input_field=cfg.data.input_field,
            target_field=cfg.data.label_field,
            max_test=cfg.data.max_test,
            test_fraction=cfg.data.test_fraction,
            seed=cfg.seed,
        )
        check_shots_and_sizes(cfg, len(data.pool))
        self.events.info(
            f"fewtune {task.name}: {len(data.pool)} pool rows, {len(data.test)} test rows; removed "
            f"{data.report['duplicates_removed']} duplicates and {data.report['leaks_removed']} test leaks "
            f"from the pool. Run folder: {plan.out}"
        )
        dataset = {**data.report, **fingerprint(plan.data, plan.test)}
        summary, warnings = task.data_summary(data.pool, data.test)
        if summary:
            dataset["summary"] = summary
        if warnings:
            dataset["warnings"] = [*dataset.get("warnings", []), *warnings]
        for warning in warnings:
            self.events.warn(warning)
        return {"task": task.describe(), "dataset": dataset}

    def execute(self, session: RunSession, backends: tuple[Any, Any]) -> None:
        data = self.data
        assert data is not None, "prepare() first"
        session.answerers = answerers(self.cfg, backends[1])
        index = None
        if self.embedder is not None and NEAREST in self.cfg.prompt.demo_selection:
            index = self.events.progress(
                f"Embedding the {len(data.pool)} pool examples",
                len(data.pool),
                lambda progress: DemoIndex.build(data.pool, self.embedder, progress),
            )
        self._record_floor(session)
        reference = (lambda: self._run_reference(session)) if self._needs_reference() else None
        run_text_methods(self.cfg, self.task, data, backends, session, self.events, index, reference)

    def _record_floor(self, session: RunSession) -> None:
        """The task's floor, which the verdict holds the shipped method against: the better of two outputs
        that need no model, the pool's most common output for every row and the input copied. Its
        per-row statistics go to predictions.jsonl under the name ``floor``; ``results["floor"]`` says
        which it is and how it scores."""
        from collections import Counter

        data = self.data
        assert data is not None
        common = min(Counter(ex.label for ex in data.pool).items(), key=lambda kv: (-kv[1], kv[0]))[0]
        best: tuple[float, str, dict[str, Any], list[dict[str, Any]]] | None = None
        for what, outputs in (
            (f"the pool's most common output for every row ({common[:80]!r})", [common] * len(data.test)),
            ("the input copied", [ex.text for ex in data.test]),
        ):
            identity = {"method": FLOOR, "name": FLOOR, "shots": 0, "train_examples": 0}
            row, predictions = score_outputs(self.task, data.test, outputs, identity, {}, self.cfg.seed)
            value = float(row["primary"]["value"])
            if best is None or value > best[0]:
                best = (value, what, row, predictions)
        assert best is not None
        _, what, row, predictions = best
        session.results["floor"] = {"output": what, "primary": row["primary"]}
        session.store.append_predictions(predictions)
        session.write()

    def _run_reference(self, session: RunSession) -> None:
        """The task's no-LLM reference on the same training examples as each LoRA adapter."""
        cfg, task, data = self.cfg, self.task, self.data
        assert data is not None
        for n in cfg.lora.train_sizes:
            if f"{Method.REFERENCE} n={n}" in session.done:
                continue
            train = [data.pool[i] for i in stratified(data.pool, n, task, cfg.seed)]
            with self.events.status(
                f"Fitting reference n={n} (sentence embeddings + logistic regression)..."
            ):
                model = task.reference(self.embedder.embed, cfg.seed).fit(train)
                model.info["embedding_model"] = self.embedder.name
                row, predictions = evaluate_reference_outputs(
                    model, task, data.test, n, latency_requests=cfg.eval.latency_requests, seed=cfg.seed
                )
            session.record(row, predictions)


def run_text_methods(
    cfg: RunConfig,
    task: Task,
    data: TaskData,
    backends: tuple[Any, Any],
    session: RunSession,
    events: RunEvents,
    index: DemoIndex | None,
    reference: Callable[[], None] | None = None,
) -> None:
    """Every LLM method of the plan, then (between the prompts and LoRA, as for classification) the
    ``reference`` rows when given."""
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
        if predictor.name in session.done:
            return
        row, predictions = events.progress(
            f"Generating {predictor.name}",
            len(data.test),
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
        session.record(row, predictions)

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
    if reference is not None:
        reference()
    if not any_fine_tuned(methods):
        return
    from fewtune.training.lora import FullFineTune, Lora

    if not backend.capabilities.trainable:
        raise ConfigError(
            f"LoRA needs a local Hugging Face model; backend '{backend.name}' cannot be trained"
        )

    lead = cfg.prompt.demo_selection[0]
    selection = lead if lead == NEAREST else "random"
    recipe = cfg.lora.kshot_training
    plain_kshot = "lora+few-shot" in methods and recipe in ("plain", "both")
    demo_kshot = "lora+few-shot" in methods and recipe in ("demos", "both")

    def trained(
        strategy: Any, train: list[TaskExample], n: int, title: str, demos: Any = None
    ) -> TextPredictor:
        nonlocal cap
        model, info = events.training(title, partial(_train, strategy, train, demos))
        if backend is not prompt_backend:  # the cap counts the trained model's tokens
            cap = max_new_tokens(backend, template, data.pool, cfg.seed)
        return TextPredictor(
            strategy.method, model, tuned_template, cap, stop=task.stop, train_examples=n, info=info
        )

    def prompted(tuned: TextPredictor, k: int, kshot_training: str) -> TextPredictor:
        shown = demos_for(tuned, k, selection, "lora+few-shot")
        return replace(
            shown,
            recipe=PLAIN_ADAPTER if kshot_training == "plain" else None,
            info={**tuned.info, "kshot_training": kshot_training},
        )

    def done(name: str) -> bool:
        return any(row.startswith(name) for row in session.done)

    for n in cfg.lora.train_sizes:
        train: list[TaskExample] = [data.pool[i] for i in stratified(data.pool, n, task, cfg.seed)]
        plain_rows = [f"lora n={n}"] if "lora" in methods else []
        plain_rows += [f"lora+few-shot n={n} k={k} {PLAIN_ADAPTER}" for k in shots if plain_kshot]
        if plain_rows and not all(done(name) for name in plain_rows):
            lora = Lora(
                backend, tuned_template, cfg.lora, session.store.adapter_dir(f"lora-n{n}"), seed=cfg.seed
            )
            tuned = trained(lora, train, n, f"Training lora n={n}")
            if "lora" in methods:
                score(tuned)
            for k in shots if plain_kshot else ():
                score(prompted(tuned, k, "plain"))
        for k in shots if demo_kshot else ():
            if any(
                row.startswith(f"lora+few-shot n={n} k={k}") and PLAIN_ADAPTER not in row
                for row in session.done
            ):
                continue
            shown = training_demos(train, data.pool, k, selection, cfg.seed, index)
            folder = session.store.adapter_dir(f"lora-n{n}-k{k}")
            lora = Lora(backend, tuned_template, cfg.lora, folder, seed=cfg.seed)
            tuned = trained(lora, train, n, f"Training lora n={n} with {k} demos per prompt", shown)
            score(prompted(tuned, k, "demos"))
        if Method.FULL_FT in methods and not done(f"full-ft n={n}"):
            full = FullFineTune(
                backend, tuned_template, cfg.lora, session.store.adapter_dir(f"full-n{n}"), seed=cfg.seed
            )
            score(trained(full, train, n, f"Training full-ft n={n}"))


def _train(strategy: Any, train: Any, demos: Any, on_step: Any) -> tuple[Any, dict[str, Any]]:
    """Train ``strategy`` on ``train`` (``demos`` in its prompts when given), reporting each step to
    ``on_step``."""
    return replace(strategy, progress=on_step).train(train, demos)
