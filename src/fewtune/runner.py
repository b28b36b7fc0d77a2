"""``fewtune run``: every method on the same held-out rows, results written as each one finishes."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from fewtune import __version__
from fewtune import progress as bars
from fewtune.backends.base import Backend, ProgressFn
from fewtune.backends.generated import GenerateAndParse
from fewtune.config import RunConfig, default_target_modules
from fewtune.cost import load_price_table
from fewtune.curves import build_curves
from fewtune.data.split import PreparedData, stratified_sample
from fewtune.embeddings import Embedder
from fewtune.errors import ConfigError, ModelError
from fewtune.evaluate import evaluate
from fewtune.methods import Method, any_fine_tuned
from fewtune.plan import check_plan, data_files, load_data, resolve_task
from fewtune.progress import (
    answerers,
    count_requests,
    describe_backend,
    describe_prompt_model,
    load_backend,
    load_backends,
    load_embedder,
)
from fewtune.prompts.demos import NEAREST, DemoIndex
from fewtune.prompts.template import DEFAULT_TASK, PromptTemplate, resolve_label_names
from fewtune.record import Answerers
from fewtune.report.terminal import method_table
from fewtune.resume import fingerprint, resume_results
from fewtune.store import RunStore, check_run_folder, clear_run, default_run_dir, refuse_existing_run
from fewtune.strategies.base import Predictor
from fewtune.sweep import check_context, few_shot_draws, prompt_sets, run_prompt_set
from fewtune.tasks.base import CLASSIFICATION, SCHEMA_VERSION


def run(
    cfg: RunConfig,
    console: Console | None = None,
    backend_factory: Callable[[RunConfig, Console], Backend] = load_backend,
    embedder_factory: Callable[[RunConfig, Console], Embedder] | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Run every requested method on the same test rows; return the run folder.

    A folder that already holds a run is refused unless ``overwrite`` (then its run files are replaced, once
    the data and settings have been checked) or ``resume`` (then its finished methods are kept and skipped;
    see :mod:`fewtune.resume`).

    ``embedder_factory`` loads the sentence embedder (data checks, nearest-neighbour demos, the reference);
    default all-MiniLM-L6-v2 from its PyPI package.
    """
    console = console or Console()
    if cfg.out:
        check_run_folder(cfg.out)  # an --out that is a file fails before the data is read
        if overwrite and resume:
            raise ConfigError("--resume and --overwrite exclude each other: keep the run or replace it")
        refuse_existing_run(cfg.out, overwrite or resume)
    why = resolve_task(cfg)
    cfg.lora.target_modules = cfg.lora.target_modules or default_target_modules(cfg.data.task)
    console.print(f"Task: {cfg.data.task}" + (f" ({why})" if why else ""), highlight=False)
    if cfg.data.task != CLASSIFICATION:
        from fewtune.tasks.session import run_task

        return run_task(
            cfg,
            console,
            backend_factory,
            embedder_factory or load_embedder,
            overwrite,
            resume,
        )
    data = load_data(cfg)
    check_plan(cfg, data)
    resolve_label_names(data.labels, cfg.prompt.label_names)  # a bad --label-names fails before any work
    load_price_table(cfg.cost.costs)  # a bad --costs file fails now, not after training
    store = RunStore(cfg.out or default_run_dir())
    if overwrite:
        clear_run(store.folder)
    cfg.out = str(store.folder)
    files = fingerprint(*data_files(cfg))
    earlier = resume_results(store, cfg.to_dict(), files) if resume and store.results_path.is_file() else None
    if earlier is None:
        cfg.save(store.folder / "config.yaml")
        store.predictions_path.unlink(missing_ok=True)
    report = data.report
    console.print(
        f"[bold]fewtune[/] {report.pool_size} pool rows, {report.test_size} test rows, "
        f"{len(data.labels)} labels; removed {report.duplicates_removed} duplicates and "
        f"{report.leaks_removed} test leaks from the pool. Run folder: {store.folder}"
    )
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "fewtune_version": __version__,
        "task": {"name": CLASSIFICATION, "label_scoring": cfg.eval.label_scoring},
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": cfg.model,
        "seed": cfg.seed,
        "dataset": {**asdict(report), **files},
        "labels": data.labels,
        "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "methods": [],
    }
    if earlier is not None:  # keep what the earlier run finished; the data checks run again
        results = {**earlier, "dataset": results["dataset"], "hardware": results["hardware"]}
        for stale in ("warnings", "error", "finished_at"):  # said again, or no longer true
            results.pop(stale, None)
        console.print(f"Resuming: {len(results['methods'])} finished methods are kept and skipped")
    store.write_results(results)
    try:
        # Models first, so that a bad --model fails before the checks' work.
        backend, prompt_backend = load_backends(cfg, console, backend_factory)
        results["hardware"].update(describe_backend(backend))
        describe_prompt_model(results, cfg, backend, prompt_backend)
        embedder, index = _check_data(cfg, data, store, results, console, embedder_factory or load_embedder)
        _run_methods(cfg, data, (backend, prompt_backend), store, results, console, embedder, index)
        count_requests(results, prompt_backend)
        results["status"] = "complete"
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        raise
    except BaseException as err:
        results["status"] = "failed"
        results["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        store.write_results(results)
    console.print(method_table(results["methods"]))
    console.print(f"Results: {store.results_path}")
    from fewtune.report.build import print_summary, write_reports

    with console.status("Writing the report..."):
        built, _ = write_reports(store.folder, cfg.cost)
    print_summary(console, built)
    return store.folder


def _check_data(
    cfg: RunConfig,
    data: PreparedData,
    store: RunStore,
    results: dict[str, Any],
    console: Console,
    embedder_factory: Callable[[RunConfig, Console], Embedder],
) -> tuple[Embedder | None, DemoIndex | None]:
    """Load the sentence embedder (and the nearest-demo index), then run the data checks once.

    Writes ``dataset.checks`` and ``label_issues.jsonl`` and shows the checks' warnings. Without the
    embedder package the checks are skipped with a warning, unless a method needs the embedder.
    """
    from fewtune.data.checks import check_steps, run_data_checks, write_label_issues

    dataset = results["dataset"]
    try:
        embedder = embedder_factory(cfg, console)
    except ModelError as err:
        if _needs_index(cfg) or Method.REFERENCE in cfg.eval.methods:
            raise
        dataset["warnings"].append(f"data checks skipped: {err}")
        console.print(f"[yellow]warning:[/] data checks skipped: {err}", highlight=False)
        return None, None
    index = None
    if _needs_index(cfg):
        index = bars.with_progress(
            console,
            f"Embedding the {len(data.pool)} pool examples",
            len(data.pool),
            lambda progress: DemoIndex.build(data.pool, embedder, progress),
        )
    checks = bars.with_progress(
        console,
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
    dataset["checks"] = checks.to_dict()
    write_label_issues(store.label_issues_path, checks)
    for warning in checks.warnings:
        dataset["warnings"].append(warning)
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    store.write_results(results)
    return embedder, index


def _needs_index(cfg: RunConfig) -> bool:
    """Nearest-neighbour demos are asked for and some method shows demos."""
    prompted = any(Method(m).uses_demos for m in cfg.eval.methods) and any(k > 0 for k in cfg.prompt.shots)
    return prompted and NEAREST in cfg.prompt.demo_selection


class _Recorder:
    """Appends finished rows to results.json (with the curves recomputed) and their predictions."""

    def __init__(self, store: RunStore, results: dict[str, Any], console: Console, models: Answerers) -> None:
        self.store, self.results, self.console = store, results, console
        self.answerers = models

    @property
    def done(self) -> set[str]:
        """Names of the finished rows (a resumed run starts with the earlier run's)."""
        return {row["name"] for row in self.results["methods"]}

    def __call__(self, row: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
        self.answerers.tag(row)
        self.results["methods"].append(row)
        self.results["curves"] = build_curves(self.results["methods"])
        self.store.append_predictions(predictions)
        self.store.write_results(self.results)

    def describe(self, row: dict[str, Any]) -> None:
        low, high = row["accuracy_ci95"]
        spread = ""
        if row.get("accuracy_std") is not None:
            draws = len(row.get("accuracy_draws") or [])
            spread = f"; over {draws} demo draws {row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f}"
        self.console.print(
            f"  {row['name']}: accuracy {row['accuracy']:.3f} [{low:.3f}, {high:.3f}], "
            f"macro-F1 {row['macro_f1']:.3f}{spread}"
        )

    def warn(self, message: str) -> None:
        self.results.setdefault("warnings", []).append(message)
        self.console.print(f"[yellow]warning:[/] {message}", highlight=False)


def _run_methods(
    cfg: RunConfig,
    data: PreparedData,
    backends: tuple[Backend, Backend],
    store: RunStore,
    results: dict[str, Any],
    console: Console,
    embedder: Embedder | None,
    index: DemoIndex | None,
) -> None:
    names = resolve_label_names(data.labels, cfg.prompt.label_names)
    template = PromptTemplate(tuple(data.labels), cfg.prompt.instruction or DEFAULT_TASK, names)
    if names:
        results["label_names"] = names
    methods = cfg.eval.methods
    shots = [k for k in cfg.prompt.shots if k > 0]
    texts = [ex.text for ex in data.test]
    backend, prompt_backend = backends
    record = _Recorder(store, results, console, answerers(cfg, prompt_backend))

    def with_progress(title: str, work: Callable[[ProgressFn | None], Any], total: int | None = None) -> Any:
        return bars.with_progress(console, title, len(texts) if total is None else total, work)

    # An endpoint without prompt log-probabilities can only be asked to answer (its probe said so).
    generate = cfg.eval.label_scoring == "generate" or not prompt_backend.capabilities.loglikelihood
    scorer = GenerateAndParse(prompt_backend) if generate else prompt_backend
    if generate != (cfg.eval.label_scoring == "generate"):
        record.warn(
            f"{prompt_backend.name} gives no prompt log-probabilities: labels are generated and parsed"
        )
    sets = prompt_sets(cfg, data.pool, scorer, template, index)
    # lora+few-shot prompts with the first selection's first demo draw.
    first_selection = cfg.prompt.demo_selection[0]
    lead = {
        k: few_shot_draws(scorer, template, data.pool, k, first_selection, cfg.seed, 1, index)[0]
        for k in (shots if "lora+few-shot" in methods else [])
    }
    checked = [p for s in sets for p in s.draws] + list(lead.values())
    if not prompt_backend.capabilities.remote:  # an endpoint would be sent a request per prompt
        with console.status("Checking prompt lengths against the model's context..."):
            warnings = check_context(checked, texts, prompt_backend)
        for warning in warnings:
            record.warn(warning)
    for pset in sets:
        twin = cfg.prompt.calibrate and pset.first.per_row_demos is None
        if {pset.first.name, *([f"{pset.first.name} calibrated"] if twin else [])} <= record.done:
            continue  # finished before --resume
        run_prompt_set(pset, data.test, cfg, record, with_progress, record.describe)
    if Method.REFERENCE in methods and embedder is not None:
        _run_reference(cfg, data, embedder, record, console)
    if not any_fine_tuned(methods):
        return
    from fewtune.strategies.lora import Lora

    if not backend.capabilities.trainable:
        raise ConfigError(
            f"LoRA needs a local Hugging Face model; backend '{backend.name}' cannot be trained"
        )

    def score(predictor: Predictor) -> None:
        if predictor.name in record.done:
            return
        row, predictions = with_progress(
            f"Scoring {predictor.name}",
            lambda progress: evaluate(
                predictor,
                data.test,
                batch_size=cfg.eval.batch_size,
                latency_requests=cfg.eval.latency_requests,
                seed=cfg.seed,
                progress=progress,
            ),
        )
        record(row, predictions)
        record.describe(row)

    for n in cfg.lora.train_sizes:
        rows = [f"lora n={n}"] if "lora" in methods else []
        rows += [f"lora+few-shot n={n} k={k} {lead[k].demo_selection}" for k in lead]
        if set(rows) <= record.done:
            continue  # every row of this adapter finished before --resume
        train, _ = stratified_sample(data.pool, n, cfg.seed)
        adapter = bars.train_progress(console, f"Training lora n={n}")(
            lambda on_step, train=train, n=n: Lora(
                backend, template, cfg.lora, store.adapter_dir(f"lora-n{n}"), seed=cfg.seed, progress=on_step
            ).fit(train)
        )
        if cfg.eval.label_scoring == "generate":
            adapter = replace(adapter, backend=GenerateAndParse(adapter.backend))
        console.print(
            f"  trained lora n={n} in {adapter.info['train_seconds']:.0f} s "
            f"({adapter.info['train_tokens_per_second']:.0f} tokens/s); "
            f"adapter {adapter.info['adapter_path']}"
        )
        if "lora" in methods:
            score(adapter)
        if "lora+few-shot" in methods:
            for k in shots:
                demos = lead[k]
                score(
                    adapter.with_demos(
                        demos.demos,
                        "lora+few-shot",
                        demos.demo_selection,
                        per_row_demos=demos.per_row_demos,
                        demo_seed=demos.demo_seed,
                    )
                )


def _run_reference(
    cfg: RunConfig, data: PreparedData, embedder: Embedder, record: _Recorder, console: Console
) -> None:
    """Embeddings + logistic regression on the same training examples as each LoRA adapter."""
    from fewtune.strategies.reference import EmbeddingReference, evaluate_reference

    for n in cfg.lora.train_sizes:
        if f"{Method.REFERENCE} n={n}" in record.done:
            continue
        train, _ = stratified_sample(data.pool, n, cfg.seed)
        if len({ex.label for ex in train}) < 2:
            record.warn(f"reference n={n} skipped: its {n} training examples have only one label")
            continue
        with console.status(f"Fitting reference n={n} (sentence embeddings + logistic regression)..."):
            model = EmbeddingReference(embedder, tuple(data.labels), cfg.seed).fit(train)
            row, predictions = evaluate_reference(
                model, data.test, latency_requests=cfg.eval.latency_requests, seed=cfg.seed
            )
        record(row, predictions)
        record.describe(row)
