"""The analysis behind an extraction or generation report: costs, evidence from each row's per-row primary
statistics, the verdict (the same rules as classification, on the task's primary metric), rollout, and the
seeded rows shown side by side."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.config import CostArgs
from fewtune.decide.cost import (
    DEFAULT_VOLUME_PER_DAY,
    BreakEven,
    MethodCost,
    PriceTable,
    load_price_table,
    method_cost,
)
from fewtune.decide.evidence import MethodEvidence
from fewtune.decide.from_run import kind_of
from fewtune.decide.metric import PrimaryMetric
from fewtune.decide.recommend import Recommendation, Situation, recommend
from fewtune.methods import Method
from fewtune.report.rollout import Rollout, rollout_plan
from fewtune.results.builders import BreakEvenRecord, RowAnalysis, RunAnalysis, analysed, analysed_run
from fewtune.results.rows import Row, rows
from fewtune.results.run_folder import read_run
from fewtune.tasks.base import Task

Predictions = Mapping[str, Sequence[Mapping[str, Any]]]
"""predictions.jsonl's rows by method name (:func:`fewtune.results.run_folder.read_predictions`)."""
SIDE_BY_SIDE_ROWS = 6
# Degenerate open outputs: one output on at least this share of the rows (from this many rows on), while the
# test rows' own most common output holds less: a constant answer with a few strays, not only an exact one.
SAME_OUTPUT_SHARE = 0.95
SAME_OUTPUT_MIN_ROWS = 20


@dataclass(frozen=True)
class ShownRow:
    """One test row shown side by side: its input, the reference and what each method wrote (by name)."""

    row: int
    input: str
    reference: str
    outputs: dict[str, str]


@dataclass(frozen=True)
class OutputsReport:
    folder: Path
    results: Mapping[str, Any]
    """The analysed record: results.json with the costs, break-even and recommendation (a new record)."""
    methods: list[Row]
    """results.json method rows with the report's fields (degenerate, costs), in run order."""
    prices: PriceTable
    costs: dict[str, MethodCost]
    volume_per_day: float
    volume_given: bool
    horizon_days: int
    metric: PrimaryMetric
    recommendation: Recommendation
    focus: Row
    rollout: Rollout
    break_even_pair: tuple[str, str] | None
    break_even: BreakEven | None
    side_by_side: list[ShownRow]
    """Seeded test rows: input, reference and each method's output."""

    @property
    def task(self) -> Mapping[str, Any]:
        return self.results.get("task") or {}

    @property
    def horizon_requests(self) -> float:
        return self.volume_per_day * self.horizon_days

    @property
    def horizon_label(self) -> str:
        return f"{self.horizon_days:,} days at {self.volume_per_day:,.0f}/day"


def output_task(block: Mapping[str, Any]) -> Task:
    """The open-output task a run's ``task`` block names, from the registry."""
    from fewtune.tasks.registry import task_of_record

    task = task_of_record(block)
    assert isinstance(task, Task), f"{task.name} is not an open-output task"
    return task


def primary_metric(block: Mapping[str, Any]) -> PrimaryMetric:
    return output_task(block).primary


def degenerate_output(task: str, row: Row, lines: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """Why a method produces nothing usable and what to try, or None."""
    metrics = row.metrics
    tuned = bool(row.train_examples)
    more = "more training examples or --epochs" if tuned else "more shots, nearest demos, or fine-tuning"
    if row.degenerate_reason:  # the task's own check, made when the row was scored
        return (
            row.degenerate_reason,
            f"Likely cause: the outputs do not depend on the input; try {more}",
        )
    from fewtune.tasks.registry import task_type

    flagged = task_type(task).degenerate_metrics(metrics, more)
    if flagged is not None:  # the task's own reading of its metrics (extraction: nothing parses)
        return flagged
    outputs = Counter(str(p.get("output", "")).strip() for p in lines)
    golds = Counter(str(p.get("gold", "")).strip() for p in lines)
    if len(lines) > 1 and len(outputs) == 1:
        return (
            "gives the same output for every test row",
            f"Likely cause: the output does not depend on the input; try {more}",
        )
    # Nearly every row the same (a stray different output must not hide it), while the gold varies more.
    top, count = outputs.most_common(1)[0] if outputs else ("", 0)
    gold_share = max(golds.values()) / len(lines) if golds else 1.0
    if len(lines) >= SAME_OUTPUT_MIN_ROWS and count / len(lines) >= SAME_OUTPUT_SHARE > gold_share:
        return (
            f"gives the same output for {count / len(lines):.0%} of the test rows ({top[:60]!r})",
            f"Likely cause: the output does not depend on the input; try {more}",
        )
    return None


def _side_by_side(methods: Sequence[Row], predictions: Predictions, seed: int) -> list[ShownRow]:
    first = predictions.get(methods[0].name, []) if methods else []
    if not first:
        return []
    picked = sorted(random.Random(seed).sample(range(len(first)), min(SIDE_BY_SIDE_ROWS, len(first))))
    rows = []
    for i in picked:
        outputs = {}
        for row in methods:
            lines = predictions.get(row.name) or []
            if i < len(lines):
                outputs[row.name] = lines[i].get("output", "")
        rows.append(ShownRow(row=i, input=first[i]["text"], reference=first[i]["gold"], outputs=outputs))
    return rows


def analyse_outputs(folder: str | Path, args: CostArgs) -> OutputsReport:
    folder = Path(folder)
    results, predictions = read_run(folder)
    task = results.get("task") or {}
    metric = primary_metric(task)
    prices = load_price_table(args.costs, (results.get("hardware") or {}).get("device"))
    volume = float(args.volume_per_day or DEFAULT_VOLUME_PER_DAY)
    read_rows = rows(results)
    costs = {row.name: method_cost(row.record, prices) for row in read_rows}
    evidence = [
        _evidence(row, predictions, metric, costs[row.name], task.get("name", "")) for row in read_rows
    ]
    floor = _floor(results, predictions, metric)
    caveats = (
        [f"{metric.label} is a proxy for quality: read the outputs side by side before shipping"]
        if task.get("metrics_are_proxies")
        else []
    )
    if results.get("status") != "complete":
        caveats.append(f"the run's status is {results.get('status')}: only its finished methods are compared")
    rec = recommend(
        Situation(
            methods=tuple(evidence),
            volume_per_day=volume,
            horizon_days=args.horizon_days,
            metric=metric,
            metric_reason=f"{metric.label} is the {task.get('name', 'task')} task's primary metric",
            volume_given=args.volume_per_day is not None,
            gap=args.gap,
            value_per_correct=args.value_per_correct,
            extra_caveats=tuple(caveats),
            seed=int(results.get("seed") or 0),
            floor=floor,
        )
    )
    horizon_requests = volume * args.horizon_days
    methods = [
        analysed(row, RowAnalysis(degenerate=m.degenerate, costs=costs[m.name].to_row(horizon_requests)))
        for row, m in zip(read_rows, evidence, strict=True)
    ]
    by_name = {row.name: row for row in methods}
    focus = by_name[rec.method] if rec.method else by_name[max(evidence, key=lambda m: m.score).name]
    test_rows = int((results.get("dataset") or {}).get("test_size") or 0)
    pair = (rec.comparison.baseline, rec.comparison.candidate) if rec.comparison else None
    be = rec.break_even
    analysis = RunAnalysis(
        break_even=BreakEvenRecord(
            prompting=pair[0] if pair else None,
            fine_tuned=pair[1] if pair else None,
            requests=be.requests if be else None,
            reason=be.reason if be else "needs one prompting and one fine-tuned method",
        ),
        recommendation=rec.to_dict(),
    )
    return OutputsReport(
        folder=folder,
        results=analysed_run(results, methods, analysis).data,
        methods=methods,
        prices=prices,
        costs=costs,
        volume_per_day=volume,
        volume_given=args.volume_per_day is not None,
        horizon_days=args.horizon_days,
        metric=metric,
        recommendation=rec,
        focus=focus,
        rollout=rollout_plan(focus, costs[focus.name], test_rows, chosen=rec.shipped is not None),
        break_even_pair=pair,
        break_even=be,
        side_by_side=_side_by_side(read_rows, predictions, int(results.get("seed") or 0)),
    )


def _evidence(
    row: Row, predictions: Predictions, metric: PrimaryMetric, cost: MethodCost, task: str
) -> MethodEvidence:
    """What the verdict weighs of one row: its primary score (from its per-row statistics when the
    predictions hold them), cost and degeneracy."""
    lines = predictions.get(row.name) or []
    stats = np.array([p["primary_stats"] for p in lines], dtype=float) if lines else None
    score = metric.value(stats) if stats is not None else float(row.primary["value"])
    flag = degenerate_output(task, row, lines)
    return MethodEvidence(
        name=row.name,
        kind=kind_of(row.record),
        score=score,
        cost=cost,
        shots=row.shots,
        train_examples=row.train_examples,
        demo_selection=row.demo_selection,
        calibrated=False,
        stats=stats,
        accuracy=score,
        degenerate=flag[0] if flag else None,
        degenerate_cause=flag[1] if flag else None,
        stored_bytes=row.adapter_bytes,
        whole_model=row.kind is Method.FULL_FT,
    )


def _floor(
    results: Mapping[str, Any], predictions: Predictions, metric: PrimaryMetric
) -> MethodEvidence | None:
    """The better output that needs no model (results.json's ``floor``), as evidence the verdict weighs."""
    floor_lines = predictions.get("floor") or []
    if not results.get("floor") or not floor_lines:
        return None
    floor_stats = np.array([p["primary_stats"] for p in floor_lines], dtype=float)
    return MethodEvidence(
        name=f"the floor ({results['floor']['output']})",
        kind="floor",
        score=metric.value(floor_stats),
        cost=MethodCost(setup=0.0, per_request=0.0),
        stats=floor_stats,
    )
