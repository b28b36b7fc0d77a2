"""``fewtune run``: every method on the same held-out rows, results written as each one finishes."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fewtune import __version__
from fewtune.backends.base import Backend
from fewtune.config import RunConfig
from fewtune.cost import load_price_table
from fewtune.data.split import PreparedData, prepare_data, stratified_sample
from fewtune.errors import ConfigError
from fewtune.evaluate import evaluate
from fewtune.prompts.template import PromptTemplate
from fewtune.report.terminal import method_table
from fewtune.store import RunStore, default_run_dir
from fewtune.strategies.base import Predictor
from fewtune.strategies.fewshot import FewShot

BUILTIN_DATASET = "support"


def builtin_dataset_files(name: str = BUILTIN_DATASET) -> tuple[str, str]:
    folder = files("fewtune").joinpath("datasets", name)
    return str(folder.joinpath("train.jsonl")), str(folder.joinpath("test.jsonl"))


def load_data(cfg: RunConfig) -> PreparedData:
    data, test = cfg.data.data, cfg.data.test
    if data is None:
        data, builtin_test = builtin_dataset_files()
        test = test or builtin_test
    return prepare_data(
        data,
        test,
        input_field=cfg.data.input_field,
        label_field=cfg.data.label_field,
        max_test=cfg.data.max_test,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.seed,
    )


def _check_plan(cfg: RunConfig, data: PreparedData) -> None:
    methods, shots = cfg.eval.methods, [k for k in cfg.prompt.shots if k > 0]
    for method in ("few-shot", "lora+few-shot"):
        if method in methods and not shots:
            raise ConfigError(f"{method} needs a shot count above 0 in --shots (got {cfg.prompt.shots})")
    pool = data.report.pool_size
    if shots and max(shots) > pool:
        raise ConfigError(f"--shots {max(shots)} is more than the {pool} examples in the pool")
    if {"lora", "lora+few-shot"} & set(methods):
        too_big = [n for n in cfg.lora.train_sizes if n > pool]
        if too_big:
            raise ConfigError(
                f"--train-sizes {too_big[0]} is more than the {pool} examples left in the pool "
                "after removing duplicates and test leaks"
            )


def _load_backend(cfg: RunConfig, console: Console) -> Backend:
    from fewtune.backends.hf import HFBackend
    from fewtune.backends.models import load_model, resolve_model

    with console.status(f"Preparing model {cfg.model} (the first run converts it, about a minute)..."):
        folder = resolve_model(cfg.model)
    with console.status(f"Loading {folder}..."):
        model, tokenizer = load_model(folder)
    return HFBackend(model, tokenizer, name=cfg.model, source=str(folder))


def _describe_backend(backend: Backend) -> dict[str, Any]:
    info: dict[str, Any] = {"backend": backend.name}
    model = getattr(backend, "model", None)
    if model is not None:
        info["model_parameters"] = sum(p.numel() for p in model.parameters())
        info["device"] = str(getattr(backend, "device", "cpu"))
        info["model_path"] = getattr(backend, "source", "")
    return info


def run(
    cfg: RunConfig,
    console: Console | None = None,
    backend_factory: Callable[[RunConfig, Console], Backend] = _load_backend,
) -> Path:
    """Run every requested method on the same test rows; return the run folder."""
    console = console or Console()
    data = load_data(cfg)
    _check_plan(cfg, data)
    load_price_table(cfg.cost.costs)  # a bad --costs file fails now, not after training
    store = RunStore(cfg.out or default_run_dir())
    cfg.out = str(store.folder)
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
        "fewtune_version": __version__,
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": cfg.model,
        "seed": cfg.seed,
        "dataset": asdict(report),
        "labels": data.labels,
        "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "methods": [],
    }
    store.write_results(results)
    try:
        backend = backend_factory(cfg, console)
        results["hardware"].update(_describe_backend(backend))
        _run_methods(cfg, data, backend, store, results, console)
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


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[extra]}"),
        console=console,
    )


def _run_methods(
    cfg: RunConfig,
    data: PreparedData,
    backend: Backend,
    store: RunStore,
    results: dict[str, Any],
    console: Console,
) -> None:
    template = PromptTemplate(tuple(data.labels), cfg.prompt.task)
    methods = cfg.eval.methods
    shots = [k for k in cfg.prompt.shots if k > 0]
    demos_for = {
        k: FewShot(backend, template, k, cfg.prompt.demo_selection, cfg.seed).fit(data.pool).demos
        for k in shots
    }

    def score(predictor: Predictor) -> None:
        with _progress(console) as progress:
            task = progress.add_task(f"Scoring {predictor.name}", total=len(data.test), extra="")
            row, predictions = evaluate(
                predictor,
                data.test,
                batch_size=cfg.eval.batch_size,
                latency_requests=cfg.eval.latency_requests,
                seed=cfg.seed,
                progress=lambda n: progress.advance(task, n),
            )
        results["methods"].append(row)
        store.append_predictions(predictions)
        store.write_results(results)
        console.print(
            f"  {predictor.name}: accuracy {row['accuracy']:.3f} "
            f"[{row['accuracy_ci95'][0]:.3f}, {row['accuracy_ci95'][1]:.3f}], macro-F1 {row['macro_f1']:.3f}"
        )

    if "zero-shot" in methods:
        score(FewShot(backend, template, 0).fit(data.pool))
    if "few-shot" in methods:
        for k in shots:
            score(
                Predictor(
                    "few-shot", backend, template, demos_for[k], demo_selection=cfg.prompt.demo_selection
                )
            )
    if not {"lora", "lora+few-shot"} & set(methods):
        return
    from fewtune.backends.hf import HFBackend
    from fewtune.strategies.lora import Lora

    if not isinstance(backend, HFBackend):
        raise ConfigError(
            f"LoRA needs a local Hugging Face model; backend '{backend.name}' cannot be trained"
        )
    for n in cfg.lora.train_sizes:
        train, _ = stratified_sample(data.pool, n, cfg.seed)
        with _progress(console) as progress:
            task = progress.add_task(f"Training lora n={n}", total=None, extra="")

            def on_step(
                step: int, total: int, loss: float, task: Any = task, progress: Any = progress
            ) -> None:
                progress.update(task, completed=step, total=total, extra=f"loss {loss:.3f}")

            adapter = Lora(
                backend, template, cfg.lora, store.adapter_dir(f"lora-n{n}"), seed=cfg.seed, progress=on_step
            ).fit(train)
        console.print(
            f"  trained lora n={n} in {adapter.info['train_seconds']:.0f} s "
            f"({adapter.info['train_tokens_per_second']:.0f} tokens/s); "
            f"adapter {adapter.info['adapter_path']}"
        )
        if "lora" in methods:
            score(adapter)
        if "lora+few-shot" in methods:
            for k in shots:
                score(adapter.with_demos(demos_for[k], "lora+few-shot", cfg.prompt.demo_selection))
