"""The ``fewtune`` command line: one typed function per command (after litgpt's ``__main__``).

Heavy libraries (torch, transformers) load only inside the commands, so ``fewtune --help`` is instant.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fewtune.errors import ConfigError, FewtuneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    help="Measure few-shot prompting against LoRA fine-tuning on your labelled examples.",
)
console = Console()
err_console = Console(stderr=True)


def _ints(value: str | None, option: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{option} takes comma-separated whole numbers, e.g. 0,4,8; got {value!r}"
        ) from None


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _label_names(value: str | None) -> dict[str, str] | str | None:
    """``"DESC=description,NUM=number"`` -> ``{"DESC": "description", "NUM": "number"}``; ``auto`` as is."""
    if value is None or value.strip() == "auto":
        return None if value is None else "auto"
    names = {}
    for pair in (p for p in value.split(",") if p.strip()):
        code, sep, name = pair.partition("=")
        if not sep or not code.strip() or not name.strip():
            raise ConfigError(
                f"--label-names takes CODE=name pairs, e.g. DESC=description,NUM=number (or auto); "
                f"got {pair.strip()!r}"
            )
        names[code.strip()] = name.strip()
    return names


# Cost and recommendation options, shared by `run` and `report`.
VolumeOption = Annotated[
    int | None,
    typer.Option(help="Expected requests per day, for costs and the recommendation. [default: 10000]"),
]
HorizonOption = Annotated[int | None, typer.Option(help="Days to total costs over. [default: 365]")]
CostsOption = Annotated[
    str | None,
    typer.Option(help="Price table: auto, self-hosted-cpu, self-hosted-gpu, hosted-api, or a YAML file."),
]
GapOption = Annotated[
    str | None, typer.Option(help="What the model lacks, if known: knowledge (-> retrieval) or behaviour.")
]
MetricOption = Annotated[
    str | None,
    typer.Option(help="Metric the verdict is decided on: accuracy or macro-f1. [default: by label balance]"),
]
ValueOption = Annotated[
    float | None,
    typer.Option(help="Dollars one more correct answer is worth (decides the 5-15 point band)."),
]


def _decision(
    volume_per_day: int | None,
    horizon_days: int | None,
    costs: str | None,
    gap: str | None,
    metric: str | None,
    value_per_correct: float | None,
) -> dict[str, Any]:
    """The ``cost`` section's flags (shared by `run` and `report`); None = not given."""
    return {
        "volume_per_day": volume_per_day,
        "horizon_days": horizon_days,
        "costs": costs,
        "gap": gap,
        "metric": metric,
        "value_per_correct": value_per_correct,
    }


@app.command()
def run(
    data: Annotated[
        Path | None,
        typer.Option(help="Pool of labelled examples (JSONL, chat JSONL or CSV). Default: built-in."),
    ] = None,
    test: Annotated[
        Path | None, typer.Option(help="Held-out test file. Default: a stratified split of --data.")
    ] = None,
    input_field: Annotated[str | None, typer.Option(help="Input field/column name. [default: text]")] = None,
    label_field: Annotated[str | None, typer.Option(help="Label field/column name. [default: label]")] = None,
    max_test: Annotated[
        int | None, typer.Option(help="Score a seeded stratified sample of N test rows.")
    ] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="Held-out share without --test. [default: 0.2]")
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(help="Comma list of zero-shot,few-shot,lora,lora+few-shot,reference. [default: all]"),
    ] = None,
    shots: Annotated[
        str | None, typer.Option(help="Demos per prompt, comma list, e.g. 0,1,2,4,8,16. [default: 0,5]")
    ] = None,
    demo_selection: Annotated[
        str | None,
        typer.Option(help="Comma list of balanced, random, nearest (by embedding). [default: balanced]"),
    ] = None,
    demo_seeds: Annotated[
        int | None,
        typer.Option(help="Demo sets drawn for random/balanced (seeds seed..seed+N-1). [default: 1]"),
    ] = None,
    label_names: Annotated[
        str | None,
        typer.Option(help="Readable label names for prompts, CODE=name,... or auto (underscores to spaces)."),
    ] = None,
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Add contextually calibrated rows (Zhao et al. 2021) for fixed demo sets. [default: off]",
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="classification, extraction or generation. [default: inferred from the target field]"
        ),
    ] = None,
    instruction: Annotated[
        str | None, typer.Option(help="Instruction line that opens every prompt. [default: the task's]")
    ] = None,
    target_field: Annotated[
        str | None, typer.Option(help="Target field (same as --label-field). [default: label]")
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option(help="Extraction: JSON Schema of the output. [default: inferred from the pool]"),
    ] = None,
    constrained: Annotated[
        bool | None,
        typer.Option(
            "--constrained/--no-constrained",
            help="Extraction: add schema-constrained decoding rows (xgrammar). [default: off]",
        ),
    ] = None,
    train_sizes: Annotated[
        str | None,
        typer.Option(help="Training examples per LoRA adapter (and reference), comma list. [default: 200]"),
    ] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank. [default: 8]")] = None,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha. [default: 16]")] = None,
    lora_dropout: Annotated[float | None, typer.Option(help="LoRA dropout. [default: 0.05]")] = None,
    epochs: Annotated[int | None, typer.Option(help="LoRA epochs. [default: 2]")] = None,
    lr: Annotated[float | None, typer.Option(help="LoRA peak learning rate. [default: 5e-4]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="LoRA training batch size. [default: 8]")] = None,
    class_balance: Annotated[
        str | None,
        typer.Option(
            help="LoRA on imbalanced labels: none, loss (inverse-frequency weights) or sampling "
            "(class-balanced batches). [default: none]"
        ),
    ] = None,
    eval_batch_size: Annotated[
        int | None, typer.Option(help="Test rows per scoring pass. [default: 16]")
    ] = None,
    latency_requests: Annotated[
        int | None, typer.Option(help="Single requests timed for p50/p95. [default: 20]")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="gemma-3-270m (built in), a local HF model folder, or a .gguf file.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder. [default: runs/<timestamp>]")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for splits, demos, training. [default: 0]")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML settings (a run's config.yaml works); flags override it.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace the run already in --out (without it, an earlier run is never replaced)."),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Finish the interrupted run in --out (same settings and data; finished methods kept)."
        ),
    ] = False,
    volume_per_day: VolumeOption = None,
    horizon_days: HorizonOption = None,
    costs: CostsOption = None,
    gap: GapOption = None,
    metric: MetricOption = None,
    value_per_correct: ValueOption = None,
) -> None:
    """Run zero-shot, k-shot, LoRA, LoRA+k-shot and the embedding reference on the same test rows."""
    from fewtune.config import build_config, load_config_file
    from fewtune.runner import run as run_all

    if target_field and label_field and target_field != label_field:
        raise ConfigError("--target-field and --label-field name the same thing; give one")

    overrides: dict[str, dict[str, Any]] = {
        "run": {"model": model, "out": str(out) if out else None, "seed": seed},
        "data": {
            "data": str(data) if data else None,
            "test": str(test) if test else None,
            "input_field": input_field,
            "label_field": target_field or label_field,
            "max_test": max_test,
            "test_fraction": test_fraction,
            "task": task,
            "schema": str(schema) if schema else None,
        },
        "prompt": {
            "shots": _ints(shots, "--shots"),
            "demo_selection": _names(demo_selection),
            "demo_seeds": demo_seeds,
            "label_names": _label_names(label_names),
            "calibrate": calibrate,
            "instruction": instruction,
        },
        "lora": {
            "train_sizes": _ints(train_sizes, "--train-sizes"),
            "r": lora_r,
            "alpha": lora_alpha,
            "dropout": lora_dropout,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "class_balance": class_balance,
        },
        "eval": {
            "methods": _names(methods),
            "batch_size": eval_batch_size,
            "latency_requests": latency_requests,
            "constrained": constrained,
        },
        "cost": _decision(volume_per_day, horizon_days, costs, gap, metric, value_per_correct),
    }
    cfg = build_config(load_config_file(config) if config else None, overrides)
    run_all(cfg, console, overwrite=overwrite, resume=resume)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `fewtune run`.")],
    volume_per_day: VolumeOption = None,
    horizon_days: HorizonOption = None,
    costs: CostsOption = None,
    gap: GapOption = None,
    metric: MetricOption = None,
    value_per_correct: ValueOption = None,
) -> None:
    """Write report.md and report.html (costs, break-even, recommendation) for a run folder.

    Settings not given here come from the run's config.yaml, then the defaults.
    """
    from fewtune.report.build import print_summary, write_reports
    from fewtune.report.run_folder import cost_args_for

    args = cost_args_for(
        run_dir, _decision(volume_per_day, horizon_days, costs, gap, metric, value_per_correct)
    )
    with console.status("Writing the report..."):
        built, _ = write_reports(run_dir, args)
    print_summary(console, built)


@app.command()
def prepare_model(
    model: Annotated[
        str, typer.Argument(help="gemma-3-270m, a model folder or a .gguf file.")
    ] = "gemma-3-270m",
) -> None:
    """Convert and cache a model ahead of time (the first `fewtune run` does this too)."""
    from fewtune.backends.models import resolve_model

    with console.status(f"Preparing {model}..."):
        folder = resolve_model(model)
    console.print(f"{model}: ready at {folder}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """Treat SIGTERM (``kill``, a scheduler's time limit) like Ctrl-C: the run records ``interrupted`` and
    keeps its finished methods."""
    signal.signal(signal.SIGTERM, _interrupt)


def main() -> None:
    stop_on_sigterm()
    try:
        app()
    except FewtuneError as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted:[/] finished methods are saved in the run folder")
        sys.exit(130)


if __name__ == "__main__":
    main()
