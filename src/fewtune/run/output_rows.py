"""The rows of every open-output task (extraction, generation, multi-label): every method generates on the
same test rows, and each output is parsed and scored by the task.

Rows: the task's floor (no model), zero-shot and k-shot prompts (demo selections random or nearest;
``balanced`` has no labels to balance here and draws at random), each also schema-constrained with
``--constrained`` (extraction), the task's no-LLM reference per training size where it has one
(multi-label), then the trained rows (:func:`fewtune.run.training_rows.train_rows`), alone and with the
first k-shot prompt. Results are recorded as each row finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any, cast

from fewtune.config import RunConfig
from fewtune.errors import ConfigError, ModelError
from fewtune.methods import Method
from fewtune.prompts.demos import NEAREST, DemoIndex, NearestDemos, select_demos, training_draw
from fewtune.prompts.template import OutputTemplate
from fewtune.results.record import RunResults
from fewtune.results.resume import fingerprint
from fewtune.results.rows import Row
from fewtune.results.sections import LocalTraining
from fewtune.run.evaluate import Identity, evaluate, prediction_lines
from fewtune.run.events import RunEvents
from fewtune.run.output_answers import (
    GeneratedOutputs,
    OutputPrediction,
    ReferenceOutputs,
    TextPredictor,
    max_new_tokens,
    score_outputs,
)
from fewtune.run.plan import RunPlan, check_shots_and_sizes
from fewtune.run.rows import TaskRows
from fewtune.run.session import RunSession
from fewtune.run.training_rows import PLAIN, Tuning, prompted_training
from fewtune.strategies.base import PLAIN_ADAPTER
from fewtune.tasks.base import Task
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


class OutputRows(TaskRows):
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

    def prepare(self) -> RunResults:
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

    def start(self, session: RunSession) -> DemoIndex | None:
        data = self.data
        assert data is not None, "prepare() first"
        index = None
        if self.embedder is not None and NEAREST in self.cfg.prompt.demo_selection:
            index = self.events.progress(
                f"Embedding the {len(data.pool)} pool examples",
                len(data.pool),
                lambda progress: DemoIndex.build(data.pool, self.embedder, progress),
            )
        self._record_floor(session)
        return index

    def _record_floor(self, session: RunSession) -> None:
        """The task's floor, which the verdict holds the shipped method against: the better of two outputs
        that need no model, the pool's most common output for every row and the input copied. Its
        per-row statistics go to predictions.jsonl under the name ``floor``; ``results["floor"]`` says
        which it is and how it scores."""
        from collections import Counter

        data = self.data
        assert data is not None
        common = min(Counter(ex.label for ex in data.pool).items(), key=lambda kv: (-kv[1], kv[0]))[0]
        best: tuple[float, str, Mapping[str, Any], list[OutputPrediction]] | None = None
        for what, outputs in (
            (f"the pool's most common output for every row ({common[:80]!r})", [common] * len(data.test)),
            ("the input copied", [ex.text for ex in data.test]),
        ):
            identity = Identity(method=FLOOR, name=FLOOR, shots=0, train_examples=0)
            scored = score_outputs(self.task, data.test, outputs, self.cfg.seed)
            row: Mapping[str, Any] = {**identity, **scored.quality}
            predictions = cast(list[OutputPrediction], prediction_lines(identity, data.test, scored))
            value = Row(row).primary_value
            assert value is not None, "a scored row has a primary value"
            if best is None or value > best[0]:
                best = (value, what, row, predictions)
        assert best is not None
        _, what, row, predictions = best
        session.results["floor"] = {"output": what, "primary": Row(row).primary}
        session.store.append_predictions(dict(line) for line in predictions)
        session.write()

    def reference_rows(self, session: RunSession) -> None:
        """The task's no-LLM reference on the same training examples as each LoRA adapter."""
        cfg, task, data = self.cfg, self.task, self.data
        assert data is not None
        if not self._needs_reference():
            return
        for n in cfg.lora.train_sizes:
            if f"{Method.REFERENCE} n={n}" in session.done:
                continue
            train = [data.pool[i] for i in stratified(data.pool, n, task, cfg.seed)]
            with self.events.status(
                f"Fitting reference n={n} (sentence embeddings + logistic regression)..."
            ):
                model = task.reference(self.embedder.embed, cfg.seed).fit(train)
                row, predictions = evaluate(
                    ReferenceOutputs(model, self.embedder.name, task, n),
                    data.test,
                    latency_requests=cfg.eval.latency_requests,
                    seed=cfg.seed,
                )
            session.record(row, predictions)

    def prompt_rows(self, session: RunSession, backends: tuple[Any, Any], index: DemoIndex | None) -> None:
        cfg, task, data = self.cfg, self.task, self.data
        assert data is not None
        instruction = cfg.prompt.instruction or task.default_instruction
        self.template = template = OutputTemplate(instruction, task.output_format())
        # backend: --model, which LoRA trains on; prompt_backend: the model the prompting rows ask.
        prompt_backend = backends[1]
        self.cap = max_new_tokens(prompt_backend, template, data.pool, cfg.seed)
        methods = cfg.eval.methods
        base = TextPredictor(
            Method.ZERO_SHOT.value,
            prompt_backend,
            template,
            self.cap,
            stop=task.stop,
            output_end=task.output_end,
        )
        schema = getattr(task, "schema", None)
        constraint = prompt_backend.schema_constraint(schema) if cfg.eval.constrained and schema else None
        prompts: list[TextPredictor] = []
        if Method.ZERO_SHOT in methods and 0 in cfg.prompt.shots:
            prompts.append(base)
        if Method.FEW_SHOT in methods:
            selections = list(
                dict.fromkeys("random" if s == "balanced" else s for s in cfg.prompt.demo_selection)
            )
            few_shot = Method.FEW_SHOT.value
            prompts += [self.demos_for(base, k, s, few_shot, index) for k in self.shots for s in selections]
        for predictor in prompts:
            self.score(session, predictor)
            if constraint is not None:
                self.score(session, replace(predictor, constraint=constraint))

    @property
    def shots(self) -> list[int]:
        return [k for k in self.cfg.prompt.shots if k > 0]

    def demos_for(
        self, predictor: TextPredictor, k: int, selection: str, method: str, index: DemoIndex | None
    ) -> TextPredictor:
        assert self.data is not None
        if selection == NEAREST:
            assert index is not None
            return predictor.with_demos((), method, NEAREST, per_row_demos=NearestDemos(index, k))
        picked = select_demos(self.data.pool, k, "random", self.cfg.seed)
        return predictor.with_demos(picked, method, "random", demo_seed=self.cfg.seed)

    def evaluate(self, predictor: TextPredictor) -> tuple[Mapping[str, Any], list[OutputPrediction]]:
        cfg, data = self.cfg, self.data
        assert data is not None
        result: tuple[Mapping[str, Any], list[OutputPrediction]] = self.events.progress(
            f"Generating {predictor.name}",
            len(data.test),
            lambda progress: evaluate(
                GeneratedOutputs(predictor, self.task),
                data.test,
                batch_size=cfg.eval.batch_size,
                latency_requests=cfg.eval.latency_requests,
                seed=cfg.seed,
                progress=progress,
            ),
        )
        return result

    def score(self, session: RunSession, predictor: TextPredictor) -> None:
        if predictor.name not in session.done:
            session.record(*self.evaluate(predictor))

    def tuning(self, session: RunSession, backends: tuple[Any, Any], index: DemoIndex | None) -> Tuning:
        return OutputTuning(self, backends, index)


class OutputTuning(Tuning):
    """An open-output task's side of the training loop. An adapter learns the output format from its
    training targets, so its prompts carry the instruction line only: the shorter requests that fine-tuning
    buys (the guides' cost argument), and a training run that does not spend most of its tokens on a format
    block."""

    def __init__(self, rows: OutputRows, backends: tuple[Any, Any], index: DemoIndex | None) -> None:
        assert rows.data is not None
        self.rows, self.cfg, self.task, self.data, self.index = rows, rows.cfg, rows.task, rows.data, index
        self.backend, self.prompt_backend = backends
        self.template = OutputTemplate(self.cfg.prompt.instruction or self.task.default_instruction, "")
        self.shots = rows.shots
        lead = self.cfg.prompt.demo_selection[0]
        self.lead = lead if lead == NEAREST else "random"

    def sample(self, n: int) -> list[Any]:
        return [self.data.pool[i] for i in stratified(self.data.pool, n, self.task, self.cfg.seed)]

    def selection(self, k: int) -> str:
        return self.lead

    def training_demos(self, train: list[Any], k: int) -> Any:
        cfg = self.cfg
        return training_draw(train, self.data.pool, k, self.lead, cfg.seed, cfg.lora.demo_draw, self.index)

    def trained(self, strategy: Any, train: list[Any], title: str, demos: Any = None) -> TextPredictor:
        rows = self.rows
        model, fitted = rows.events.training(title, partial(_train, strategy, train, demos))
        if self.backend is not self.prompt_backend:  # the cap counts the trained model's tokens
            rows.cap = max_new_tokens(self.backend, rows.template, self.data.pool, self.cfg.seed)
        return TextPredictor(
            strategy.method,
            model,
            self.template,
            rows.cap,
            stop=self.task.stop,
            output_end=self.task.output_end,
            train_examples=len(train),
            fitted=fitted,
        )

    def prompted(self, tuned: TextPredictor, k: int, kshot_training: str) -> TextPredictor:
        shown = self.rows.demos_for(tuned, k, self.lead, Method.LORA_FEW_SHOT.value, self.index)
        return replace(
            shown,
            recipe=PLAIN_ADAPTER if kshot_training == PLAIN else None,
            fitted=prompted_training(tuned.fitted, kshot_training),
        )

    def evaluate(self, predictor: TextPredictor) -> tuple[Mapping[str, Any], list[OutputPrediction]]:
        return self.rows.evaluate(predictor)


def _train(strategy: Any, train: Any, demos: Any, on_step: Any) -> tuple[Any, LocalTraining]:
    """Train ``strategy`` on ``train`` (``demos`` in its prompts when given), reporting each step to
    ``on_step``."""
    return replace(strategy, progress=on_step).train(train, demos)
