"""``fewtune report RUN_DIR``: costs, break-even and a recommendation from a run folder, written as
report.md and a self-contained report.html, and added to results.json.

Works on any run folder with a results.json, including ones written before costs existed: every cost is
recomputed from the measured fields (tokens, throughput, train seconds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from fewtune.config import REFERENCE_METHOD, CostArgs
from fewtune.cost import (
    DEFAULT_VOLUME_PER_DAY,
    BreakEven,
    MethodCost,
    PriceTable,
    format_count,
    format_usd,
    load_price_table,
    method_cost,
)
from fewtune.curves import best_prompt, build_curves, has_shot_curve, has_train_curve, mean_accuracy
from fewtune.decide.from_run import accuracy_floor, check_caveats, run_evidence
from fewtune.decide.metric import ACCURACY_METRIC, chance_level, choose_metric
from fewtune.decide.recommend import Recommendation, Situation, recommend
from fewtune.decide.thresholds import GOOD_ENOUGH_KAPPA, MARGIN_POINTS
from fewtune.report.rollout import Rollout, rollout_plan
from fewtune.report.run_folder import read_run, saved_setting
from fewtune.report.tables import confusion_matrix
from fewtune.store import write_json_atomic

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


@dataclass
class Report:
    """Everything the renderers show, computed once from a run folder."""

    folder: Path
    results: dict[str, Any]
    """results.json, with the cost and recommendation fields added."""
    methods: list[dict[str, Any]]
    """results.json method rows, in run order."""
    labels: list[str]
    prices: PriceTable
    costs: dict[str, MethodCost]
    """Cost of each method, by method name."""
    volume_per_day: float
    volume_given: bool
    horizon_days: int
    chance: float
    """Accuracy of the best content-blind guess: max(1/labels, most common test label's share)."""
    floor: float
    """Accuracy at which Cohen's kappa reaches the good-enough bar for predictions with the test shares."""
    recommendation: Recommendation
    focus: dict[str, Any]
    """The recommended method's row, or the most accurate one when none is recommended."""
    confusion: list[list[int]]
    """Confusion matrix of the focus method (gold rows, predicted columns)."""
    rollout: Rollout
    break_even_pair: tuple[str, str] | None
    """(best prompt, best fine-tuned) names that break_even compares."""
    break_even: BreakEven | None
    curves: dict[str, Any]
    """results.json's ``curves``: shots, train_examples, reference, crossover (see fewtune.curves)."""
    best_prompt: dict[str, Any] | None
    """``{name, accuracy, draws}`` of the best prompt (accuracy averaged over its demo draws)."""

    @property
    def horizon_requests(self) -> float:
        return self.volume_per_day * self.horizon_days

    @property
    def horizon_label(self) -> str:
        return f"{self.horizon_days:,} days at {self.volume_per_day:,.0f}/day"


def _cost_caveats(
    results: dict[str, Any], prices: PriceTable, costs: dict[str, MethodCost], volume: float
) -> list[str]:
    hardware = results.get("hardware") or {}
    device = hardware.get("device", "cpu")
    model = results.get("model", "the run's model")
    caveats = []
    if prices.pricing == "self-hosted":
        busiest = max(
            (
                1 / m["throughput_rows_per_second"]
                for m in results["methods"]
                if m.get("throughput_rows_per_second")
            ),
            default=0.0,
        )
        hours = volume * busiest / 3600
        caveats.append(
            f"per-request costs use the batch throughput measured on this run's machine ({device}, "
            f"{hardware.get('cpu_count', '?')} CPUs) priced as {prices.serving_hardware}; serving elsewhere "
            "changes them. They assume you pay only for busy time "
            f"(utilization {prices.serving_utilization:g}): "
            f"at {volume:,.0f} calls/day the slowest method keeps one machine busy {hours:.1f} h/day, and a "
            f"machine kept on around the clock costs {format_usd(prices.serving_dollars_per_hour * 24)}/day "
            "whichever method it serves"
        )
    else:
        caveats.append(
            f"hosted-API costs apply API prices to the token counts of {model}'s tokenizer and assume the "
            f"hosted model is as accurate as {model} was here; measure it on the hosted model before relying "
            "on them"
        )
    if results.get("status") != "complete":
        caveats.append(f"the run's status is {results.get('status')}: only its finished methods are compared")
    return caveats


def analyse(folder: str | Path, args: CostArgs) -> Report:
    """Costs, break-even, recommendation and rollout for a run folder (nothing is written)."""
    folder = Path(folder)
    results, predictions = read_run(folder)
    methods = results["methods"]
    labels = list(results.get("labels") or sorted({p["gold"] for rows in predictions.values() for p in rows}))
    device = (results.get("hardware") or {}).get("device")
    prices = load_price_table(args.costs, device)
    volume = float(args.volume_per_day or DEFAULT_VOLUME_PER_DAY)
    # The reference runs no LLM, so it has no tokens to price on an API: it is priced as self-hosted.
    local_prices = prices if prices.pricing == "self-hosted" else load_price_table(None, device)
    costs = {row["name"]: method_cost(row, local_prices if _is_reference(row) else prices) for row in methods}
    dataset = results.get("dataset") or {}
    test_counts = (dataset.get("label_counts") or {}).get("test") or {}
    choice = choose_metric(test_counts, args.metric)
    found = run_evidence(methods, predictions, labels, choice, costs)
    caveats = _cost_caveats(results, prices, costs, volume) + check_caveats(dataset, MARGIN_POINTS)
    if not predictions:
        caveats.append("predictions.jsonl is missing: no paired test between methods was possible")
    situation = Situation(
        methods=found.methods,
        volume_per_day=volume,
        horizon_days=args.horizon_days,
        metric=choice.metric,
        metric_reason=choice.reason,
        kappa=found.kappa,
        volume_given=args.volume_per_day is not None,
        gap=args.gap,
        value_per_correct=args.value_per_correct,
        class_balance=saved_setting(folder, "lora", "class_balance"),
        extra_caveats=tuple(caveats),
        seed=int(results.get("seed") or 0),
    )
    rec = recommend(situation)
    by_name = {row["name"]: row for row in methods}
    viable = [m for m in found.methods if m.viable] or list(found.methods)
    focus = by_name[rec.method] if rec.method else by_name[max(viable, key=lambda m: m.score).name]
    pair = (rec.comparison.baseline, rec.comparison.candidate) if rec.comparison else None
    be = rec.break_even
    test_rows = int(dataset.get("test_size") or len(predictions.get(focus["name"], [])))
    shown = dict(focus)
    adapter = focus.get("adapter_path")
    if adapter and Path(adapter).is_relative_to(folder.resolve()):
        shown["adapter_path"] = os.path.relpath(adapter, folder.resolve())
    report = Report(
        folder=folder,
        results=results,
        methods=methods,
        labels=labels,
        prices=prices,
        costs=costs,
        volume_per_day=volume,
        volume_given=args.volume_per_day is not None,
        horizon_days=args.horizon_days,
        chance=chance_level(ACCURACY_METRIC, test_counts) if test_counts else 1 / max(len(labels), 1),
        floor=accuracy_floor(test_counts, GOOD_ENOUGH_KAPPA),
        recommendation=rec,
        focus=focus,
        confusion=confusion_matrix(labels, predictions.get(focus["name"], [])),
        rollout=rollout_plan(shown, costs[focus["name"]], test_rows, chosen=rec.method is not None),
        break_even_pair=pair,
        break_even=be,
        curves=build_curves(methods),
        best_prompt=_best_prompt(methods),
    )
    for m in found.methods:
        row = by_name[m.name]
        row["primary"] = {"metric": choice.metric.name, "value": m.score}
        row["degenerate"] = m.degenerate
        row["cohen_kappa"] = found.kappa.get(m.name)
    _add_to_results(report, args)
    return report


def _is_reference(row: dict[str, Any]) -> bool:
    return row.get("method") == REFERENCE_METHOD


def _best_prompt(methods: list[dict[str, Any]]) -> dict[str, Any] | None:
    best = best_prompt(methods)
    if best is None:
        return None
    draws = len(best.get("accuracy_draws") or [best["accuracy"]])
    return {"name": best["name"], "accuracy": mean_accuracy(best), "draws": draws}


def _add_to_results(report: Report, args: CostArgs) -> None:
    """The results.json fields: per-method costs, break-even, the resolved price table, the recommendation."""
    results = report.results
    for row in report.methods:
        cost = report.costs[row["name"]]
        row["costs"] = {
            "setup": cost.setup,
            "per_request": cost.per_request,
            "total_at_horizon": cost.total(report.horizon_requests),
            "setup_breakdown": cost.setup_breakdown,
            "per_request_basis": cost.basis,
        }
    be = report.break_even
    results["break_even_requests"] = be.requests if be else None
    results["break_even"] = {
        "prompting": report.break_even_pair[0] if report.break_even_pair else None,
        "fine_tuned": report.break_even_pair[1] if report.break_even_pair else None,
        "requests": be.requests if be else None,
        "days_at_volume": be.requests / report.volume_per_day if be and be.requests is not None else None,
        "reason": be.reason if be else "needs one prompting and one fine-tuned method",
    }
    results["cost_assumptions"] = {
        "preset": report.prices.preset,
        "file": report.prices.file,
        "volume_per_day": report.volume_per_day,
        "volume_given": report.volume_given,
        "horizon_days": report.horizon_days,
        "requests_at_horizon": report.horizon_requests,
        "gap": args.gap,
        "metric": args.metric,
        "value_per_correct": args.value_per_correct,
        "prices": report.prices.to_dict(),
    }
    results["recommendation"] = report.recommendation.to_dict()
    results["curves"] = report.curves


def draw_plots(report: Report) -> dict[str, bytes]:
    """PNG bytes of every figure, keyed like PLOT_FILES."""
    from fewtune.report import plots

    chosen = report.recommendation.method
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
            report.labels, report.confusion, f"{report.focus['name']}: gold vs predicted"
        ),
    }
    curves = report.curves
    if has_shot_curve(curves):
        images["shots"] = plots.shots_plot(curves["shots"], report.chance)
    if has_train_curve(curves):
        images["train"] = plots.train_plot(
            curves["train_examples"],
            curves["reference"],
            report.best_prompt,
            curves["crossover"],
            report.chance,
        )
    return images


def _cost_plot_methods(report: Report) -> list[dict[str, Any]]:
    """Every method when few; otherwise the break-even pair and the recommended method."""
    if len(report.methods) <= COST_PLOT_MAX_LINES:
        return report.methods
    keep = set(report.break_even_pair or ()) | {report.recommendation.method, report.focus["name"]}
    return [row for row in report.methods if row["name"] in keep]


def write_reports(folder: str | Path, args: CostArgs) -> tuple[Report, list[Path]]:
    """Compute, update results.json, and write report.md (+ PNGs next to it) and report.html."""
    from fewtune.report.html import render_html
    from fewtune.report.markdown import render_markdown

    report = analyse(folder, args)
    folder = report.folder
    write_json_atomic(folder / "results.json", report.results)
    images = draw_plots(report)
    written = []
    for key, data in images.items():
        path = folder / PLOT_FILES[key]
        path.write_bytes(data)
        written.append(path)
    for key in CURVE_PLOTS:
        if key not in images:  # a curve an earlier report drew but this one has no data for
            (folder / PLOT_FILES[key]).unlink(missing_ok=True)
    (folder / REPORT_MD).write_text(render_markdown(report, PLOT_FILES), encoding="utf-8")
    (folder / REPORT_HTML).write_text(render_html(report, images), encoding="utf-8")
    return report, [folder / REPORT_MD, folder / REPORT_HTML, *written]


def print_summary(console: Console, report: Report) -> None:
    """The recommendation and where the reports are, for the terminal."""
    from fewtune.report.markdown import metric_line

    rec = report.recommendation
    console.print(f"[bold]Recommendation:[/] {rec.headline}", highlight=False)
    console.print(f"  {metric_line(report)}", highlight=False)
    for reason in rec.reasons:
        console.print(f"  - {reason}", highlight=False)
    for name, why in rec.degenerate.items():
        console.print(f"[yellow]degenerate:[/] {name} {why}", highlight=False)
    for i, step in enumerate(rec.next_steps, 1):
        console.print(f"  next {i}. {step}", highlight=False)
    be = report.break_even
    if be is not None and report.break_even_pair:
        where = "never" if be.requests is None else f"{format_count(be.requests)} requests"
        console.print(f"Break-even ({' vs '.join(report.break_even_pair)}): {where}", highlight=False)
    console.print(f"Report: {report.folder / REPORT_HTML} and {report.folder / REPORT_MD}")
