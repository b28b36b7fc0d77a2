"""Classification's rows: every method scores a closed label set on the same test rows.

Rows: zero-shot and k-shot prompts (each demo selection, several demo draws, a calibrated twin with
``--calibrate``), the no-LLM reference per training size, a fine-tuning API's job (:mod:`.hosted_rows`),
then the trained rows (:func:`fewtune.run.training_rows.train_rows`), alone and with the first selection's
k-shot demos. How a row is scored is chosen here, once: by the labels' log-likelihoods, or by generating an
answer and parsing it where ``--label-scoring generate`` asks for it or the prompt model gives no prompt
log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from typing import Any

from fewtune.backends.base import Backend, ProgressFn
from fewtune.backends.generated import GenerateAndParse
from fewtune.data.split import PreparedData, stratified_sample
from fewtune.decide.cost import load_price_table
from fewtune.decide.curves import build_curves
from fewtune.embeddings import Embedder
from fewtune.errors import ModelError
from fewtune.methods import Method
from fewtune.prompts.demos import NEAREST, DemoIndex, training_draw
from fewtune.prompts.template import DEFAULT_TASK, PromptTemplate, resolve_label_names
from fewtune.results.record import MethodRow, RunResults, method_rows
from fewtune.results.resume import fingerprint
from fewtune.results.sections import LocalTraining
from fewtune.run.evaluate import evaluate
from fewtune.run.events import RunEvents
from fewtune.run.label_answers import LabelPrediction, PromptedLabels, ReferenceLabels
from fewtune.run.plan import RunPlan, check_plan, load_data
from fewtune.run.rows import TaskRows
from fewtune.run.session import RunSession
from fewtune.run.sweep import check_context, few_shot_draws, prompt_sets, run_prompt_set
from fewtune.run.training_rows import PLAIN, Tuning, prompted_training
from fewtune.strategies.base import PLAIN_ADAPTER, Predictor
from fewtune.tasks.base import CLASSIFICATION


def generates_labels(label_scoring: str, prompt_backend: Backend) -> bool:
    """Whether rows are scored by generate-and-parse rather than label log-likelihood: asked for, or the
    prompt model (an endpoint whose probe found no prompt log-probabilities) cannot score labels."""
    return label_scoring == "generate" or not prompt_backend.capabilities.loglikelihood


class LabelRows(TaskRows):
    def __init__(
        self, plan: RunPlan, events: RunEvents, embedder_factory: Callable[[Any, RunEvents], Embedder]
    ) -> None:
        self.plan, self.cfg, self.events = plan, plan.cfg, events
        self.embedder_factory = embedder_factory
        self.data: PreparedData | None = None
        self.embedder: Embedder | None = None
        self.generate = False

    def prepare(self) -> RunResults:
        cfg = self.cfg
        data = self.data = load_data(cfg)
        check_plan(cfg, data)
        resolve_label_names(data.labels, cfg.prompt.label_names)  # a bad --label-names fails before any work
        load_price_table(cfg.cost.costs)  # a bad --costs file fails now, not after training
        report = data.report
        self.events.info(
            f"fewtune {report.pool_size} pool rows, {report.test_size} test rows, "
            f"{len(data.labels)} labels; removed {report.duplicates_removed} duplicates and "
            f"{report.leaks_removed} test leaks from the pool. Run folder: {self.plan.out}"
        )
        for warning in report.warnings:
            self.events.warn(warning)
        return {
            "task": {"name": CLASSIFICATION, "label_scoring": cfg.eval.label_scoring},
            "dataset": {**asdict(report), **fingerprint(self.plan.data, self.plan.test)},
            "labels": data.labels,
        }

    def start(self, session: RunSession) -> DemoIndex | None:
        session.derive = lambda rows: {"curves": build_curves(method_rows({"methods": rows}))}
        self.embedder, index = self._check_data(session)
        return index

    def _needs_index(self) -> bool:
        """Nearest-neighbour demos are asked for and some method shows demos."""
        cfg = self.cfg
        prompted = any(Method(m).uses_demos for m in cfg.eval.methods) and any(
            k > 0 for k in cfg.prompt.shots
        )
        return prompted and NEAREST in cfg.prompt.demo_selection

    def _check_data(self, session: RunSession) -> tuple[Embedder | None, DemoIndex | None]:
        """Load the sentence embedder (and the nearest-demo index), then run the data checks once.

        Writes ``dataset.checks`` and ``label_issues.jsonl`` and shows the checks' warnings. Without the
        embedder package the checks are skipped with a warning, unless a method needs the embedder.
        """
        from fewtune.data.checks import check_steps, run_data_checks, write_label_issues

        cfg, data, events = self.cfg, self.data, self.events
        assert data is not None
        try:
            embedder = self.embedder_factory(cfg, events)
        except ModelError as err:
            if self._needs_index() or Method.REFERENCE in cfg.eval.methods:
                raise
            session.warn_data(f"data checks skipped: {err}")
            return None, None
        index = None
        if self._needs_index():
            index = events.progress(
                f"Embedding the {len(data.pool)} pool examples",
                len(data.pool),
                lambda progress: DemoIndex.build(data.pool, embedder, progress),
            )
        checks = events.progress(
            "Checking the data (label issues, near duplicates)",
            check_steps(len(data.pool), len(data.test), pool_embedded=index is not None),
            lambda progress: run_data_checks(
                data.pool,
                data.test,
                data.labels,
                embedder,
                cfg.seed,
                progress,
                pool_vectors=None if index is None else index.vectors,
            ),
        )
        session.results["dataset"]["checks"] = checks.to_dict()
        session.store.written(session.store.label_issues_path.name)
        write_label_issues(session.store.label_issues_path, checks)
        for warning in checks.warnings:
            session.warn_data(warning)
        session.write()
        return embedder, index

    def _with_progress(self, title: str, work: Callable[[ProgressFn | None], Any]) -> Any:
        assert self.data is not None
        return self.events.progress(title, len(self.data.test), work)

    def prompt_rows(self, session: RunSession, backends: tuple[Any, Any], index: DemoIndex | None) -> None:
        cfg, data, events = self.cfg, self.data, self.events
        assert data is not None
        names = resolve_label_names(data.labels, cfg.prompt.label_names)
        template = self.template = PromptTemplate(
            tuple(data.labels), cfg.prompt.instruction or DEFAULT_TASK, names
        )
        if names:
            session.results["label_names"] = names
        shots = [k for k in cfg.prompt.shots if k > 0]
        texts = [ex.text for ex in data.test]
        prompt_backend = backends[1]
        self.generate = generate = generates_labels(cfg.eval.label_scoring, prompt_backend)
        scorer = GenerateAndParse(prompt_backend) if generate else prompt_backend
        if generate != (cfg.eval.label_scoring == "generate"):
            session.warn(
                f"{prompt_backend.name} gives no prompt log-probabilities: labels are generated and parsed"
            )
        sets = prompt_sets(cfg, data.pool, scorer, template, index)
        # lora+few-shot prompts with the first selection's first demo draw.
        first_selection = cfg.prompt.demo_selection[0]
        self.lead = lead = {
            k: few_shot_draws(scorer, template, data.pool, k, first_selection, cfg.seed, 1, index)[0]
            for k in (shots if Method.LORA_FEW_SHOT in cfg.eval.methods else [])
        }
        checked = [p for s in sets for p in s.draws] + list(lead.values())
        if not prompt_backend.capabilities.remote:  # an endpoint would be sent a request per prompt
            with events.status("Checking prompt lengths against the model's context..."):
                warnings = check_context(checked, texts, prompt_backend)
            for warning in warnings:
                session.warn(warning)
        for pset in sets:
            twin = cfg.prompt.calibrate and pset.first.per_row_demos is None
            if {pset.first.name, *([f"{pset.first.name} calibrated"] if twin else [])} <= session.done:
                continue  # finished before --resume
            run_prompt_set(pset, data.test, cfg, session.record, self._with_progress)

    def reference_rows(self, session: RunSession) -> None:
        """Embeddings + logistic regression on the same training examples as each LoRA adapter."""
        from fewtune.strategies.reference import EmbeddingReference

        cfg, data, embedder = self.cfg, self.data, self.embedder
        assert data is not None
        if Method.REFERENCE not in cfg.eval.methods or embedder is None:
            return
        for n in cfg.lora.train_sizes:
            if f"{Method.REFERENCE} n={n}" in session.done:
                continue
            train, _ = stratified_sample(data.pool, n, cfg.seed)
            if len({ex.label for ex in train}) < 2:
                session.warn(f"reference n={n} skipped: its {n} training examples have only one label")
                continue
            with self.events.status(
                f"Fitting reference n={n} (sentence embeddings + logistic regression)..."
            ):
                model = EmbeddingReference(embedder, tuple(data.labels), cfg.seed).fit(train)
                row, predictions = evaluate(
                    ReferenceLabels(model),
                    data.test,
                    latency_requests=cfg.eval.latency_requests,
                    seed=cfg.seed,
                )
            session.record(row, predictions)

    def hosted_rows(self, session: RunSession) -> None:
        """A fine-tuning API's job per training size, scored there (:mod:`fewtune.run.hosted_rows`)."""
        from fewtune.run.hosted_rows import hosted_rows

        assert self.data is not None
        hosted_rows(session, self.cfg, self.data, self.template, self.events)

    def tuning(self, session: RunSession, backends: tuple[Any, Any], index: DemoIndex | None) -> Tuning:
        return LabelTuning(self, index)


class LabelTuning(Tuning):
    """Classification's side of the training loop: adapters that score the labels (or generate one, as the
    prompting rows do), prompted with the first selection's first demo draw."""

    def __init__(self, rows: LabelRows, index: DemoIndex | None) -> None:
        assert rows.data is not None
        self.rows, self.cfg, self.data, self.index = rows, rows.cfg, rows.data, index
        self.template = rows.template
        self.shots = list(rows.lead)

    def sample(self, n: int) -> list[Any]:
        return stratified_sample(self.data.pool, n, self.cfg.seed)[0]

    def selection(self, k: int) -> str:
        return str(self.rows.lead[k].demo_selection)

    def training_demos(self, train: list[Any], k: int) -> Any:
        selection, draw = self.cfg.prompt.demo_selection[0], self.cfg.lora.demo_draw
        return training_draw(train, self.data.pool, k, selection, self.cfg.seed, draw, self.index)

    def trained(self, strategy: Any, train: list[Any], title: str, demos: Any = None) -> Predictor:
        events = self.rows.events
        predictor: Predictor = events.training(title, partial(_fit, strategy, train, demos))
        if self.rows.generate:
            predictor = replace(predictor, backend=GenerateAndParse(predictor.backend))
        training = predictor.fitted
        assert isinstance(training, LocalTraining), "a local strategy measures its training"
        events.info(
            f"  {title.removeprefix('Training ')}: {training.train_seconds:.0f} s "
            f"({training.train_tokens_per_second:.0f} tokens/s); saved {training.adapter_path}"
        )
        return predictor

    def prompted(self, tuned: Predictor, k: int, kshot_training: str) -> Predictor:
        demos = self.rows.lead[k]
        return replace(
            tuned.with_demos(
                demos.demos,
                Method.LORA_FEW_SHOT.value,
                demos.demo_selection,
                per_row_demos=demos.per_row_demos,
                demo_seed=demos.demo_seed,
                recipe=PLAIN_ADAPTER if kshot_training == PLAIN else None,
            ),
            fitted=prompted_training(tuned.fitted, kshot_training),
        )

    def evaluate(self, predictor: Predictor) -> tuple[MethodRow, list[LabelPrediction]]:
        cfg = self.cfg
        result: tuple[MethodRow, list[LabelPrediction]] = self.rows._with_progress(
            f"Scoring {predictor.name}",
            lambda progress: evaluate(
                PromptedLabels(predictor),
                self.data.test,
                batch_size=cfg.eval.batch_size,
                latency_requests=cfg.eval.latency_requests,
                seed=cfg.seed,
                progress=progress,
            ),
        )
        return result


def _fit(strategy: Any, train: Any, demos: Any, on_step: Any) -> Predictor:
    """Train ``strategy`` on ``train`` (with ``demos`` in its prompts when given), reporting each step to
    ``on_step``."""
    return replace(strategy, progress=on_step).fit(train, demos)
