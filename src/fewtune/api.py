"""fewtune as a library: :func:`run` a comparison on your data and get its typed record back;
:func:`open_run` an earlier run's folder. Nothing here prints; ``fewtune run`` in the terminal is the same
code path (:func:`run_and_report`) with rich progress, a summary and the run registry on top
(:mod:`fewtune.cli.runner`). Both are exported from the package: ``fewtune.run(settings)``,
``fewtune.open_run(folder)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewtune.config import RunConfig, build_config
from fewtune.results.run_folder import RunFolder, settings_from_file
from fewtune.results.run_record import RunRecord

if TYPE_CHECKING:
    from fewtune.report.analysis import Report
    from fewtune.report.outputs import OutputsReport
    from fewtune.run.events import RunEvents
    from fewtune.run.pipeline import BackendFactory, EmbedderFactory

Settings = RunConfig | Mapping[str, Any] | str | Path
"""A :class:`~fewtune.config.RunConfig`; a mapping shaped like a config file (``{"model": ..., "data":
{...}, "eval": {...}}``); or the path of a YAML config file (a run's config.yaml works)."""


def settings_of(settings: Settings) -> RunConfig:
    """``settings`` as a :class:`~fewtune.config.RunConfig`, validated (a one-line error when not)."""
    if isinstance(settings, RunConfig):
        return settings
    if isinstance(settings, Mapping):
        return build_config(dict(settings), {})
    return settings_from_file(settings)


def run(
    settings: Settings,
    *,
    backend_factory: BackendFactory | None = None,
    embedder_factory: EmbedderFactory | None = None,
    events: RunEvents | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> RunRecord:
    """Run every method of ``settings`` on the same test rows, write the report beside the results, and
    return the run's record (its folder is ``record.folder``; :func:`open_run` reads the report's verdict).

    Prints nothing unless ``events`` (a :class:`~fewtune.run.events.RunEvents`) shows something; the run's
    warnings are also kept in results.json. A folder that already holds a run is refused unless
    ``overwrite`` (its run files are replaced) or ``resume`` (its finished methods are kept and skipped).
    ``backend_factory(cfg, events)`` and ``embedder_factory(cfg, events)`` load the model and the sentence
    embedder; by default the model ``settings`` names and all-MiniLM-L6-v2. Unlike ``fewtune run``, the
    run is not recorded in the run registry (``fewtune runs``) or MLflow.
    """
    from fewtune.run.events import QuietEvents
    from fewtune.run.loaders import load_backend, load_embedder

    folder, _ = run_and_report(
        settings_of(settings),
        events or QuietEvents(),
        backend_factory or load_backend,
        embedder_factory or load_embedder,
        overwrite=overwrite,
        resume=resume,
    )
    return RunFolder(folder).record


def open_run(folder: str | Path) -> RunFolder:
    """An earlier run's folder: ``.record`` (typed results), ``.predictions``, ``.settings`` and the report's
    ``.analysis`` / ``.recommendation``. A folder without a readable results.json is a one-line
    :class:`~fewtune.errors.FewtuneError` naming it."""
    return RunFolder(folder)


def run_and_report(
    cfg: RunConfig,
    events: RunEvents,
    backend_factory: BackendFactory,
    embedder_factory: EmbedderFactory,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> tuple[Path, Report | OutputsReport]:
    """The pipeline (:func:`~fewtune.run.pipeline.run_pipeline`), then the report of its run folder
    (analysis.json, report.md, report.html); the folder and the report."""
    from fewtune.report.build import write_reports
    from fewtune.run.pipeline import run_pipeline

    folder = run_pipeline(cfg, events, backend_factory, embedder_factory, overwrite=overwrite, resume=resume)
    with events.status("Writing the report..."):
        report, _ = write_reports(folder, cfg.cost)
    return folder, report
