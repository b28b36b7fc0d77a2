"""``fewtune run`` in the terminal: the library's run (:func:`fewtune.api.run_and_report`: the pipeline, then
the report of its run folder) with rich progress, then the summary and the run registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from fewtune.api import run_and_report
from fewtune.backends.base import Backend
from fewtune.cli.console import plain_console
from fewtune.cli.ui import RichEvents, print_summary, register_run
from fewtune.config import RunConfig
from fewtune.embeddings import Embedder
from fewtune.run.events import RunEvents
from fewtune.run.loaders import load_backend, load_embedder


def run(
    cfg: RunConfig,
    console: Console | None = None,
    backend_factory: Callable[[RunConfig, RunEvents], Backend] = load_backend,
    embedder_factory: Callable[[RunConfig, RunEvents], Embedder] | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Run every requested method on the same test rows, write the report; return the run folder.

    A folder that already holds a run is refused unless ``overwrite`` (then its run files are replaced, once
    the data and settings have been checked) or ``resume`` (then its finished methods are kept and skipped;
    see :mod:`fewtune.results.resume`).

    ``embedder_factory`` loads the sentence embedder (data checks, nearest-neighbour demos, the reference);
    default all-MiniLM-L6-v2 from its PyPI package.
    """
    from fewtune.training.distributed import launched_processes

    if launched_processes() > 1:  # under accelerate launch: every process but the main one only trains
        from fewtune.training.distributed import Distributed

        dist = Distributed.current()
        if not dist.main:
            from fewtune.run.events import QuietEvents
            from fewtune.training.lora import follow_orders

            follow_orders(backend_factory(cfg, QuietEvents()))
            return Path(cfg.out or ".")
    console = console or plain_console()
    try:
        folder, built = run_and_report(
            cfg,
            RichEvents(console),
            backend_factory,
            embedder_factory or load_embedder,
            overwrite=overwrite,
            resume=resume,
        )
    finally:
        # The other processes stop waiting for orders, when they are waiting (in step): after a failure
        # in the middle of training they are in a collective no order matches, and this process ends
        # instead, so that the launcher stops them.
        if launched_processes() > 1 and dist.in_step:
            dist.order(None)
    print_summary(console, built)
    register_run(console, folder, cfg.mlflow)
    return folder
