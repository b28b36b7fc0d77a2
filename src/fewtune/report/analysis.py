"""The analysis behind a report: costs, the verdict, break-even and rollout for a run folder, as one view
model (:class:`Report`) that the renderers read; it also builds the analysed record (the run's results with
the cost and recommendation fields, a new record: the one read is left as it was). Works on run folders
written before costs existed: every cost is recomputed from measured fields.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fewtune.config import TRAINING_SECTION, CostArgs
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
from fewtune.decide.evidence import MethodEvidence
from fewtune.decide.from_run import RunEvidence, accuracy_floor, check_caveats, run_evidence
from fewtune.decide.metric import ACCURACY_METRIC, MetricChoice, chance_level, choose_metric
from fewtune.decide.recommend import Recommendation, Situation, recommend
from fewtune.decide.thresholds import GOOD_ENOUGH_KAPPA, MARGIN_POINTS
from fewtune.methods import Method
from fewtune.report.rollout import Rollout, rollout_plan
from fewtune.report.tables import confusion_matrix
from fewtune.results.builders import BreakEvenRecord, RowAnalysis, RunAnalysis, analysed, analysed_run
from fewtune.results.record import Costs, MethodRow, Primary, method_rows
from fewtune.results.rows import Row, rows
from fewtune.results.run_folder import read_run, saved_setting
from fewtune.results.views import CurvesRecord
from fewtune.tasks.base import bootstrap_ci


@dataclass(frozen=True)
class BestPrompt:
    """The best prompting row, with its accuracy averaged over its demo draws."""

    name: str
    accuracy: float
    draws: int


@dataclass(frozen=True)
class Report:
    """Everything the renderers show, computed once from a run folder."""

    folder: Path
    results: Mapping[str, Any]
    """The analysed record: results.json with the cost and recommendation fields (a new record)."""
    methods: list[Row]
    """results.json method rows with the report's fields (primary, degenerate, cohen_kappa, costs), in run
    order."""
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
    focus: Row
    """The recommended method's row, or the most accurate one when none is recommended."""
    confusion: list[list[int]]
    """Confusion matrix of the focus method (gold rows, predicted columns)."""
    rollout: Rollout
    break_even_pair: tuple[str, str] | None
    """(best prompt, best fine-tuned) names that break_even compares."""
    break_even: BreakEven | None
    curves: CurvesRecord
    """results.json's ``curves``: shots, train_examples, reference, crossover (see fewtune.decide.curves)."""
    best_prompt: BestPrompt | None

    @property
    def horizon_requests(self) -> float:
        return self.volume_per_day * self.horizon_days

    @property
    def horizon_label(self) -> str:
        return f"{self.horizon_days:,} days at {self.volume_per_day:,.0f}/day"


def _cost_caveats(
    results: Mapping[str, Any], prices: PriceTable, costs: dict[str, MethodCost], volume: float
) -> list[str]:
    hardware = results.get("hardware") or {}
    device = hardware.get("device", "cpu")
    model = results.get("model", "the run's model")
    caveats = []
    if prices.pricing == "self-hosted":
        busiest = max((1 / row.throughput for row in rows(results) if row.throughput), default=0.0)
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


def method_costs(results: Mapping[str, Any], args: CostArgs) -> tuple[PriceTable, dict[str, MethodCost]]:
    """The price table for a run's hardware and each method's cost, by name. The reference runs no LLM, so
    it has no tokens to price on an API: it is priced as self-hosted."""
    device = (results.get("hardware") or {}).get("device")
    prices = load_price_table(args.costs, device)
    local_prices = prices if prices.pricing == "self-hosted" else load_price_table(None, device)
    return prices, {
        row.name: method_cost(row.record, local_prices if row.kind is Method.REFERENCE else prices)
        for row in rows(results)
    }


def analyse(folder: str | Path, args: CostArgs) -> Report:
    """Costs, break-even, recommendation and rollout for a run folder (nothing is written)."""
    folder = Path(folder)
    results, predictions = read_run(folder)
    read_rows = method_rows(results)
    labels = list(
        results.get("labels") or sorted({p["gold"] for lines in predictions.values() for p in lines})
    )
    prices, costs = method_costs(results, args)
    volume = float(args.volume_per_day or DEFAULT_VOLUME_PER_DAY)
    dataset = results.get("dataset") or {}
    test_counts = (dataset.get("label_counts") or {}).get("test") or {}
    choice = choose_metric(test_counts, args.metric)
    found = run_evidence(read_rows, predictions, labels, choice, costs)
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
        class_balance=saved_setting(folder, TRAINING_SECTION, "class_balance"),
        extra_caveats=tuple(caveats),
        seed=int(results.get("seed") or 0),
    )
    rec = recommend(situation)
    at_horizon = {name: cost.to_row(volume * args.horizon_days) for name, cost in costs.items()}
    methods = _analysed_rows(results, found, choice, situation.seed, at_horizon)
    viable = [m for m in found.methods if m.viable] or list(found.methods)
    by_name = {row.name: row for row in methods}
    focus = by_name[rec.method] if rec.method else by_name[max(viable, key=lambda m: m.score).name]
    pair = (rec.comparison.baseline, rec.comparison.candidate) if rec.comparison else None
    be = rec.break_even
    test_rows = int(dataset.get("test_size") or len(predictions.get(focus.name, [])))
    adapter = focus.adapter_path
    if adapter and Path(adapter).is_relative_to(folder.resolve()):
        adapter = os.path.relpath(adapter, folder.resolve())
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
        confusion=confusion_matrix(labels, predictions.get(focus.name, [])),
        rollout=rollout_plan(
            focus, costs[focus.name], test_rows, chosen=rec.shipped is not None, adapter=adapter
        ),
        break_even_pair=pair,
        break_even=be,
        curves=build_curves(read_rows),
        best_prompt=_best_prompt(read_rows),
    )
    return replace(report, results=_analysed_record(report, args))


def _analysed_rows(
    results: Mapping[str, Any],
    found: RunEvidence,
    choice: MetricChoice,
    seed: int,
    costs: Mapping[str, Costs],
) -> list[Row]:
    """Each row with what the report adds to it (new rows: the ones read are left as they were)."""
    evidence = {m.name: m for m in found.methods}
    return [
        analysed(row, _row_analysis(row, evidence.get(row.name), choice, seed, found.kappa, costs[row.name]))
        for row in rows(results)
    ]


def _row_analysis(
    row: Row,
    found: MethodEvidence | None,
    choice: MetricChoice,
    seed: int,
    kappa: Mapping[str, float],
    costs: Costs,
) -> RowAnalysis:
    """The primary score (with its interval), degeneracy and kappa of a row the verdict weighed, then its
    costs."""
    if found is None:
        return RowAnalysis(costs=costs)
    if choice.metric.per_row_correct:  # accuracy: the row's own interval
        low, high = row.accuracy_ci95
    elif found.stats is not None:
        low, high = bootstrap_ci(found.stats, choice.metric.aggregate, seed)
    else:  # no predictions to resample
        low, high = None, None
    primary = Primary(
        name=choice.metric.name,
        metric=choice.metric.name,
        label=choice.metric.label,
        value=found.score,
        ci95=[low, high],
    )
    return RowAnalysis(
        primary=primary, degenerate=found.degenerate, cohen_kappa=kappa.get(found.name), costs=costs
    )


def _best_prompt(methods: list[MethodRow]) -> BestPrompt | None:
    best = best_prompt(methods)
    if best is None:
        return None
    row = Row(best)
    draws = len(row.accuracy_draws or [row.accuracy])
    return BestPrompt(name=row.name, accuracy=mean_accuracy(best), draws=draws)


def _analysed_record(report: Report, args: CostArgs) -> Mapping[str, Any]:
    """The analysed record: the run's results with the analysed rows, break-even, the resolved price table,
    the recommendation and the curves (a new record; ``report.results``, the one read, is left as it was)."""
    be, pair = report.break_even, report.break_even_pair
    analysis = RunAnalysis(
        break_even_requests=be.requests if be else None,
        break_even=BreakEvenRecord(
            prompting=pair[0] if pair else None,
            fine_tuned=pair[1] if pair else None,
            requests=be.requests if be else None,
            days_at_volume=be.requests / report.volume_per_day if be and be.requests is not None else None,
            reason=be.reason if be else "needs one prompting and one fine-tuned method",
        ),
        cost_assumptions={
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
        },
        recommendation=report.recommendation.to_dict(),
        curves=report.curves,
    )
    return analysed_run(report.results, report.methods, analysis).data
