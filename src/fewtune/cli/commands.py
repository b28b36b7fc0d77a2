"""The ``fewtune`` command line: one typed function per command (after litgpt's ``__main__``).

Heavy libraries (torch, transformers) load only inside the commands, so ``fewtune --help`` is instant.
"""

from __future__ import annotations

import inspect
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from fewtune.cli.console import plain_console, styled
from fewtune.cli.options import overrides, setting_options, typed_options
from fewtune.errors import FewtuneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    help="Measure few-shot prompting against LoRA fine-tuning on your labelled examples.",
)
console = plain_console()
err_console = plain_console(stderr=True)


def _build_run() -> Callable[..., None]:
    """``fewtune run``: its setting flags come from the config dataclasses (:mod:`fewtune.cli.options`)."""
    settings = setting_options()

    def run(**values: Any) -> None:
        """Run zero-shot, k-shot, LoRA, LoRA+k-shot (and, for classification, the embedding reference) on
        the same test rows."""
        from fewtune.cli.runner import run as run_all
        from fewtune.config import build_config, load_config_file

        given = values.pop("config")
        overwrite, resume = values.pop("overwrite"), values.pop("resume")
        cfg = build_config(load_config_file(given) if given else None, overrides(values))
        run_all(cfg, console, overwrite=overwrite, resume=resume)

    extra = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option(help="YAML settings (a run's config.yaml works); flags override it."),
            ],
        ),
        inspect.Parameter(
            "overwrite",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool, typer.Option(help="Replace the run already in --out (otherwise it is never replaced).")
            ],
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool,
                typer.Option(help="Finish the interrupted run in --out (same settings and data)."),
            ],
        ),
    ]
    parameters = [option[3] for option in settings] + extra
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


app.command(name="run")(_build_run())


def _build_report() -> Callable[..., None]:
    cost = [option for option in setting_options() if option[0] == "cost"]

    def report(run_dir: Path, mlflow: str | None = None, **values: Any) -> None:
        """Write report.md and report.html (costs, break-even, recommendation) for a run folder.

        Settings not given here come from the run's config.yaml, then the defaults.
        """
        from fewtune.cli.ui import print_summary, register_run
        from fewtune.report.build import write_reports
        from fewtune.results.run_folder import cost_args_for, saved_setting_top

        args = cost_args_for(run_dir, overrides(values)["cost"])
        with console.status("Writing the report..."):
            built, _ = write_reports(run_dir, args)
        print_summary(console, built)
        register_run(console, run_dir, mlflow or saved_setting_top(run_dir, "mlflow"))

    folder = inspect.Parameter(
        "run_dir",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[Path, typer.Argument(help="A run folder written by `fewtune run`.")],
    )
    tracking = inspect.Parameter(
        "mlflow",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(help="MLflow tracking URI to log the run to (default: the run's --mlflow, if any)."),
        ],
    )
    parameters = [folder, tracking] + [option[3] for option in cost]
    report.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    report.__annotations__ = {p.name: p.annotation for p in parameters}
    return report


app.command(name="report")(_build_report())


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


def _build_serve() -> Callable[..., None]:
    from fewtune.serve.launch import ServeArgs

    def serve(run_dir: Path | None = None, **values: Any) -> None:
        """Serve the model and its LoRA adapters with an OpenAI-compatible API; a request's `model` picks
        one."""
        from fewtune.serve.launch import serve as run_server
        from fewtune.serve.launch import settings_from_cli

        args = ServeArgs(**values)
        settings = settings_from_cli(run_dir, **{**asdict(args), "adapter": args.adapter or []})
        if settings.engine == "vllm":
            from fewtune.serve.vllm import exec_vllm

            exec_vllm(settings)  # plain print: the command line stays one copyable line
            return
        console.print(f"Loading {settings.model} and {len(settings.adapters)} adapter(s)...")
        run_server(settings, say=console.print)

    folder = inspect.Parameter(
        "run_dir",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=None,
        annotation=Annotated[
            Path | None,
            typer.Argument(help="A run folder: serves its model and every adapter under adapters/."),
        ],
    )
    parameters = [folder, *typed_options(ServeArgs)]
    serve.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    serve.__annotations__ = {p.name: p.annotation for p in parameters}
    return serve


app.command(name="serve")(_build_serve())


from fewtune.cli import canary as cli_canary  # noqa: E402  (the release commands register below)
from fewtune.cli import release as cli_release  # noqa: E402

app.command(name="gate")(cli_release.gate)
app.command(name="runbook")(cli_release.runbook_list)
app.add_typer(cli_release.runs_app, name="runs")
app.command(name="monitor")(cli_canary.monitor)
app.command(name="rollback")(cli_canary.rollback)


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
        err_console.print(styled("error:", "red", f" {err}"), highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print(styled("interrupted:", "yellow", " finished methods are saved in the run folder"))
        sys.exit(130)


if __name__ == "__main__":
    main()
