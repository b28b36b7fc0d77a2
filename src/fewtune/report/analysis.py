"""The analysis behind a report: costs, the verdict, break-even and rollout for a run folder, as one view
model (:class:`Report`) that the renderers read; it also adds the cost and recommendation fields to the run's
results. Works on run folders written before costs existed: every cost is recomputed from measured fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewtune.config import CostArgs
from fewtune.decide.cost import (
    DEFAULT_VOLUME_PER_DAY,
    BreakEven,
    MethodCost,
    PriceTable,
    format_usd,
    load_price_table,
    method_cost,
)
from fewtune.decide.curves import best_prompt, build_curves, mean_accuracy
from fewtune.decide.from_run import accuracy_floor, check_caveats, run_evidence
from fewtune.decide.metric import ACCURACY_METRIC, chance_level, choose_metric
from fewtune.decide.recommend import Recommendation, Situation, recommend
from fewtune.decide.thresholds import GOOD_ENOUGH_KAPPA, MARGIN_POINTS
from fewtune.methods import Method
from fewtune.report.rollout import Rollout, rollout_plan
from fewtune.report.tables import confusion_matrix
from fewtune.results.record import MethodRow
from fewtune.results.run_folder import read_run, saved_setting
from fewtune.tasks.base import bootstrap_ci


@dataclass
class Report:
    """Everything the renderers show, computed once from a run folder."""

    folder: Path
    results: dict[str, Any]
    """results.json, with the cost and recommendation fields added."""
    methods: list[MethodRow]
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
    focus: MethodRow
    """The recommended method's row, or the most accurate one when none is recommended."""
    confusion: list[list[int]]
    """Confusion matrix of the focus method (gold rows, predicted columns)."""
    rollout: Rollout
    break_even_pair: tuple[str, str] | None
    """(best prompt, best fine-tuned) names that break_even compares."""
    break_even: BreakEven | None
    curves: dict[str, Any]
    """results.json's ``curves``: shots, train_examples, reference, crossover (see fewtune.decide.curves)."""
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


def method_costs(results: dict[str, Any], args: CostArgs) -> tuple[PriceTable, dict[str, MethodCost]]:
    """The price table for a run's hardware and each method's cost, by name. The reference runs no LLM, so
    it has no tokens to price on an API: it is priced as self-hosted."""
    device = (results.get("hardware") or {}).get("device")
    prices = load_price_table(args.costs, device)
    local_prices = prices if prices.pricing == "self-hosted" else load_price_table(None, device)
    rows = results["methods"]
    return prices, {
        row["name"]: method_cost(row, local_prices if _is_reference(row) else prices) for row in rows
    }


def analyse(folder: str | Path, args: CostArgs) -> Report:
    """Costs, break-even, recommendation and rollout for a run folder (nothing is written)."""
    folder = Path(folder)
    results, predictions = read_run(folder)
    methods = results["methods"]
    labels = list(results.get("labels") or sorted({p["gold"] for rows in predictions.values() for p in rows}))
    prices, costs = method_costs(results, args)
    volume = float(args.volume_per_day or DEFAULT_VOLUME_PER_DAY)
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
    for m in found.methods:
        row = by_name[m.name]
        if choice.metric.per_row_correct:  # accuracy: the row's own interval
            low, high = row["accuracy_ci95"]
        elif m.stats is not None:
            low, high = bootstrap_ci(m.stats, choice.metric.aggregate, situation.seed)
        else:  # no predictions to resample
            low, high = None, None
        row["primary"] = {
            "name": choice.metric.name,
            "metric": choice.metric.name,
            "label": choice.metric.label,
            "value": m.score,
            "ci95": [low, high],
        }
        row["degenerate"] = m.degenerate
        row["cohen_kappa"] = found.kappa.get(m.name)
    viable = [m for m in found.methods if m.viable] or list(found.methods)
    focus = by_name[rec.method] if rec.method else by_name[max(viable, key=lambda m: m.score).name]
    pair = (rec.comparison.baseline, rec.comparison.candidate) if rec.comparison else None
    be = rec.break_even
    test_rows = int(dataset.get("test_size") or len(predictions.get(focus["name"], [])))
    shown = focus.copy()
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
        rollout=rollout_plan(shown, costs[focus["name"]], test_rows, chosen=rec.shipped is not None),
        break_even_pair=pair,
        break_even=be,
        curves=build_curves(methods),
        best_prompt=_best_prompt(methods),
    )
    _add_to_results(report, args)
    return report


def _is_reference(row: MethodRow) -> bool:
    return Method.of(row) is Method.REFERENCE


def _best_prompt(methods: list[MethodRow]) -> dict[str, Any] | None:
    best = best_prompt(methods)
    if best is None:
        return None
    draws = len(best.get("accuracy_draws") or [best["accuracy"]])
    return {"name": best["name"], "accuracy": mean_accuracy(best), "draws": draws}


def _add_to_results(report: Report, args: CostArgs) -> None:
    """The results.json fields: per-method costs, break-even, the resolved price table, the recommendation."""
    results = report.results
    for row in report.methods:
        row["costs"] = report.costs[row["name"]].to_row(report.horizon_requests)
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
