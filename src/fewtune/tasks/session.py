"""The run of an extraction or generation task, from its data to its report (the classification run is
:func:`fewtune.runner.run`; both share the run folder's rules: refuse, overwrite, resume)."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from fewtune import __version__
from fewtune.config import RunConfig
from fewtune.plan import data_files
from fewtune.progress import (
    answerers,
    count_requests,
    describe_backend,
    describe_prompt_model,
    load_backends,
    train_progress,
    with_progress,
)
from fewtune.record import Answerers
from fewtune.resume import fingerprint, resume_results
from fewtune.store import RunStore, clear_run, default_run_dir
from fewtune.tasks.base import EXTRACTION, GENERATION, SCHEMA_VERSION, Task
from fewtune.tasks.extraction import ExtractionTask, load_schema
from fewtune.tasks.generation import GenerationTask


def make_task(cfg: RunConfig) -> Task:
    if cfg.data.task == EXTRACTION:
        return ExtractionTask(load_schema(cfg.data.schema) if cfg.data.schema else None)
    if cfg.data.task == GENERATION:
        metric = cfg.cost.metric if cfg.cost.metric in GenerationTask.metric_choices else None
        return GenerationTask(metric)
    raise ValueError(f"not an open-output task: {cfg.data.task}")


class TextRecorder:
    """Appends finished rows to results.json and their predictions to predictions.jsonl."""

    def __init__(self, store: RunStore, results: dict[str, Any], console: Console, models: Answerers) -> None:
        self.store, self.results, self.console = store, results, console
        self.answerers = models

    @property
    def done(self) -> set[str]:
        return {row["name"] for row in self.results["methods"]}

    def __call__(self, row: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
        self.answerers.tag(row)
        self.results["methods"].append(row)
        self.store.append_predictions(predictions)
        self.store.write_results(self.results)

    def describe(self, row: dict[str, Any]) -> None:
        from fewtune.report.outputs_render import metric_name

        primary = row["primary"]
        low, high = primary["ci95"]
        others = ", ".join(
            f"{metric_name(name)} {m['value']:.3f}"
            for name, m in row["metrics"].items()
            if name.replace("_", "-") != primary["name"]
        )
        self.console.print(
            f"  {row['name']}: {primary['label']} {primary['value']:.3f} [{low:.3f}, {high:.3f}]; {others}",
            highlight=False,
        )


def _embedder(cfg: RunConfig, console: Console, factory: Callable[[RunConfig, Console], Any]) -> Any:
    """The sentence embedder, when something uses it: nearest demos (required) or generation's semantic
    similarity (left out, with a warning, when the embedder cannot load)."""
    from fewtune.errors import ModelError
    from fewtune.prompts.demos import NEAREST

    nearest = NEAREST in cfg.prompt.demo_selection
    if not nearest and cfg.data.task != GENERATION:
        return None
    try:
        return factory(cfg, console)
    except ModelError as err:
        if nearest or cfg.cost.metric == "semantic":
            raise
        console.print(f"[yellow]warning:[/] semantic similarity left out: {err}", highlight=False)
        return None


def run_task(
    cfg: RunConfig,
    console: Console,
    backend_factory: Callable[[RunConfig, Console], Any],
    embedder_factory: Callable[[RunConfig, Console], Any],
    overwrite: bool,
    resume: bool,
) -> Path:
    from fewtune.prompts.demos import NEAREST, DemoIndex
    from fewtune.tasks.data import prepare_task_data
    from fewtune.tasks.run import check_text_plan, run_text_methods

    task = make_task(cfg)
    check_text_plan(cfg, task)  # before anything loads
    embedder = _embedder(cfg, console, embedder_factory)
    if embedder is not None and isinstance(task, GenerationTask):
        task.embed = embedder.embed
    data_path, test_path = data_files(cfg)
    data = prepare_task_data(
        task,
        data_path,
        test_path,
        input_field=cfg.data.input_field,
        target_field=cfg.data.label_field,
        max_test=cfg.data.max_test,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.seed,
    )
    from fewtune.plan import check_shots_and_sizes

    check_shots_and_sizes(cfg, len(data.pool))
    store = RunStore(cfg.out or default_run_dir())
    if overwrite:
        clear_run(store.folder)
    cfg.out = str(store.folder)
    files = fingerprint(data_path, test_path)
    earlier = resume_results(store, cfg.to_dict(), files) if resume and store.results_path.is_file() else None
    if earlier is None:
        cfg.save(store.folder / "config.yaml")
        store.predictions_path.unlink(missing_ok=True)
    console.print(
        f"[bold]fewtune[/] {task.name}: {len(data.pool)} pool rows, {len(data.test)} test rows; removed "
        f"{data.report['duplicates_removed']} duplicates and {data.report['leaks_removed']} test leaks "
        f"from the pool. Run folder: {store.folder}",
        highlight=False,
    )
    results: dict[str, Any] = earlier or {
        "schema_version": SCHEMA_VERSION,
        "fewtune_version": __version__,
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": cfg.model,
        "seed": cfg.seed,
        "task": task.describe(),
        "dataset": {**data.report, **files},
        "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "methods": [],
    }
    results["status"] = "running"
    store.write_results(results)
    try:
        backend, prompt_backend = load_backends(cfg, console, backend_factory)
        results["hardware"].update(describe_backend(backend))
        describe_prompt_model(results, cfg, backend, prompt_backend)
        record = TextRecorder(store, results, console, answerers(cfg, prompt_backend))
        index = None
        if embedder is not None and NEAREST in cfg.prompt.demo_selection:
            index = with_progress(
                console,
                f"Embedding the {len(data.pool)} pool examples",
                len(data.pool),
                lambda progress: DemoIndex.build(data.pool, embedder, progress),
            )
        run_text_methods(
            cfg,
            task,
            data,
            (backend, prompt_backend),
            store,
            record,
            lambda title, work: with_progress(console, title, len(data.test), work),
            lambda title: train_progress(console, title),
            index,
        )
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
    console.print(f"Results: {store.results_path}")
    from fewtune.report.build import print_summary, write_reports

    with console.status("Writing the report..."):
        built, _ = write_reports(store.folder, cfg.cost)
    print_summary(console, built)
    return store.folder
