"""``fewtune report RUN_DIR``: costs, break-even and a recommendation from a run folder, written as
report.md and a self-contained report.html, and recorded in analysis.json beside results.json (which the
report never changes).

Works on any run folder with a results.json, including ones written before costs existed: every cost is
recomputed from the measured fields (tokens, throughput, train seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewtune.config import CostArgs
from fewtune.decide.curves import has_shot_curve, has_train_curve
from fewtune.report.analysis import Report, analyse
from fewtune.report.html import render_html
from fewtune.report.markdown import render_markdown
from fewtune.report.outputs import OutputsReport, analyse_outputs
from fewtune.results.rows import Row
from fewtune.results.run_folder import ANALYSIS_FILE, analysis_of
from fewtune.results.store import owned, record_written, write_json_atomic, write_text_atomic
from fewtune.results.views import Curves
from fewtune.tasks.base import TaskType

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOT_FILES = {
    "accuracy": "report-accuracy.png",
    "cost": "report-cost.png",
    "latency": "report-latency.png",
    "confusion": "report-confusion.png",
    "shots": "report-shots.png",
    "train": "report-train.png",
}
# Drawn only when the run has a curve to show: shots needs two shot counts, train two training sizes.
CURVE_PLOTS = ("shots", "train")
# The cost plot keeps one line per method up to this many; beyond it only the compared and chosen ones.
COST_PLOT_MAX_LINES = 6


def draw_plots(report: Report) -> dict[str, bytes]:
    """PNG bytes of every figure, keyed like PLOT_FILES."""
    from fewtune.report import plots

    chosen = report.recommendation.shipped
    images = {
        "accuracy": plots.accuracy_plot(report.methods, report.chance, report.floor, chosen),
        "cost": plots.cost_plot(
            _cost_plot_methods(report),
            report.costs,
            report.horizon_requests,
            report.horizon_label,
            report.break_even_pair,
            report.break_even,
        ),
        "latency": plots.latency_plot(report.methods),
        "confusion": plots.confusion_plot(
            report.labels, report.confusion, f"{report.focus.name}: gold vs predicted"
        ),
    }
    curves = Curves(report.curves)
    if has_shot_curve(report.curves):
        images["shots"] = plots.shots_plot(curves.shots, report.chance)
    if has_train_curve(report.curves):
        images["train"] = plots.train_plot(
            curves.train_examples, curves.reference, report.best_prompt, curves.crossover, report.chance
        )
    return images


def _cost_plot_methods(report: Report) -> list[Row]:
    """Every method when few; otherwise the break-even pair and the recommended method."""
    if len(report.methods) <= COST_PLOT_MAX_LINES:
        return report.methods
    keep = set(report.break_even_pair or ()) | {report.recommendation.method, report.focus.name}
    return [row for row in report.methods if row.name in keep]


def write_reports(folder: str | Path, args: CostArgs) -> tuple[Report | OutputsReport, list[Path]]:
    """Compute, write analysis.json, report.md (+ PNGs next to it) and report.html; results.json is left as
    the run wrote it. ``args.metric`` must be one of the run's task's metrics."""
    from fewtune.tasks.registry import check_metric

    kind = task_of_run(folder)
    if kind is not None:
        check_metric(kind, args.metric)
    if kind is not None and kind.open_output:
        return write_outputs_reports(folder, args)
    report = analyse(folder, args)
    folder = report.folder
    _write_analysis(folder, report.results)
    images = draw_plots(report)
    written = []
    record_written(folder, *(PLOT_FILES[key] for key in images))
    for key, data in images.items():
        path = folder / PLOT_FILES[key]
        path.write_bytes(data)
        written.append(path)
    mine = owned(folder)
    for key in CURVE_PLOTS:
        if key not in images and PLOT_FILES[key] in mine:  # an earlier report's curve, no data for it now
            (folder / PLOT_FILES[key]).unlink(missing_ok=True)
    record_written(folder, REPORT_MD, REPORT_HTML)
    write_text_atomic(folder / REPORT_MD, render_markdown(report, PLOT_FILES))
    write_text_atomic(folder / REPORT_HTML, render_html(report, images))
    return report, [folder / REPORT_MD, folder / REPORT_HTML, *written]


def task_of_run(folder: str | Path) -> type[TaskType] | None:
    """The task type the run's results name (classification for results without one); None when there is
    no readable results.json (``analyse`` says why)."""
    from fewtune.results.store import read_results
    from fewtune.tasks.registry import task_type

    try:
        task = (read_results(folder).get("task") or {}).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return task_type(task)


def write_outputs_reports(folder: str | Path, args: CostArgs) -> tuple[OutputsReport, list[Path]]:
    from fewtune.report.outputs_render import render_outputs_html, render_outputs_markdown

    report = analyse_outputs(folder, args)
    folder = report.folder
    _write_analysis(folder, report.results)
    record_written(folder, REPORT_MD, REPORT_HTML)
    write_text_atomic(folder / REPORT_MD, render_outputs_markdown(report))
    write_text_atomic(folder / REPORT_HTML, render_outputs_html(report))
    return report, [folder / REPORT_MD, folder / REPORT_HTML]


def _write_analysis(folder: Path, analysed: Mapping[str, Any]) -> None:
    """analysis.json: what the report added to the run's results (see :func:`analysis_of`)."""
    from fewtune.results.store import read_results

    record_written(folder, ANALYSIS_FILE)
    write_json_atomic(folder / ANALYSIS_FILE, analysis_of(read_results(folder), dict(analysed)))
