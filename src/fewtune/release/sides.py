"""One side of a release comparison: ``RUN[:METHOD]`` read into its per-row evidence.

RUN is a run folder (or a run id from the registry); METHOD is a method's name as results.json and the report
show it (``runs/sst2:few-shot k=8 balanced``). Without METHOD the side is the run's recommended method (or
its only method).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.decide.cost import MethodCost
from fewtune.errors import FewtuneError
from fewtune.release.verdict import Verdict
from fewtune.results.rows import Row, Run
from fewtune.results.run_folder import ANALYSIS_FILE, cost_args_for, read_run
from fewtune.tasks.base import CLASSIFICATION, ClassHits, TaskType
from fewtune.tasks.registry import task_type


@dataclass(frozen=True)
class Side:
    """A method of a run, with what the gate compares."""

    spec: str
    """As given, e.g. ``runs/sst2:lora n=200``."""
    folder: Path
    method: str
    task: Mapping[str, Any]
    labels: list[str]
    row: Row
    """The method's results.json row."""
    lines: Sequence[Mapping[str, Any]]
    """Its predictions, in row order."""
    cost: MethodCost
    hardware: Mapping[str, Any]
    verdict: Verdict | None = None
    """The run's verdict when the side is its recommended method, resolved because RUN was given without
    METHOD; None when METHOD was named (or the run recommends nothing)."""

    @property
    def task_name(self) -> str:
        return str(self.task.get("name") or CLASSIFICATION)

    @property
    def rows_hash(self) -> str | None:
        """sha256 of the test rows the method was scored on (row number, input, gold), in order."""
        if not self.lines:
            return None
        rows = [[p["row"], p.get("text"), p.get("gold")] for p in self.lines]
        return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()

    @property
    def p95_ms(self) -> float | None:
        value = self.row.p95
        return float(value) if value else None

    @property
    def kind(self) -> type[TaskType]:
        """The task type the run's record names: what the gate asks of its rows."""
        return task_type(self.task_name)

    def failed(self) -> np.ndarray:
        """Per row, 1 where the method gave no valid answer: not one of the labels, unparsed, or not valid
        for the schema."""
        return self.kind.failed(self.lines, self.labels)

    def class_hits(self) -> ClassHits:
        """Per class (label, field): per-row (hits, chances), whose ratio is the class's recall."""
        return self.kind.class_hits(self.lines)


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``RUN[:METHOD]`` -> (folder, method or None). A folder whose name holds ':' is taken whole."""
    whole = Path(spec)
    if whole.is_dir() or ":" not in spec:
        return whole, None
    folder, _, method = spec.rpartition(":")
    return Path(folder), method.strip() or None


def verdict_of(folder: Path) -> Verdict:
    """The run's verdict: the method its report recommends (if the report was written and recommends one)
    and whether that verdict is settled."""
    path = folder / ANALYSIS_FILE
    if not path.is_file():
        return Verdict(None, None)
    try:
        analysis = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return Verdict(None, None)
    return Verdict.of(Run(analysis).recommendation if isinstance(analysis, dict) else None)


def read_side(spec: str, folder: Path | None = None) -> Side:
    """The side ``spec`` names (``folder`` when the registry already resolved RUN to one)."""
    from fewtune.report.analysis import method_costs

    path, method = split_spec(spec)
    folder = folder or path
    results, predictions = read_run(folder)
    rows = Run(results).rows
    names = [row.name for row in rows]
    verdict = None
    if method is None:
        verdict = verdict_of(folder)
        method = verdict.method or (names[0] if len(names) == 1 else None)
        if method is None:
            raise FewtuneError(
                f"{spec}: the run recommends no method (or has no report yet); name one as "
                f"{folder}:METHOD, one of: {', '.join(names)}"
            )
    if method not in names:
        raise FewtuneError(f"{spec}: no method {method!r} in {folder}; its methods: {', '.join(names)}")
    _, costs = method_costs(results, cost_args_for(folder))
    labels = list(results.get("labels") or [])
    if not labels and task_type((results.get("task") or {}).get("name")).labels_from_gold:
        labels = sorted(Counter(str(p["gold"]) for rows in predictions.values() for p in rows))
    return Side(
        spec=spec,
        folder=folder,
        method=method,
        task=dict(results.get("task") or {"name": CLASSIFICATION}),
        labels=labels,
        row=next(row for row in rows if row.name == method),
        lines=predictions.get(method) or [],
        cost=costs[method],
        hardware=dict(results.get("hardware") or {}),
        verdict=verdict if verdict and verdict.method == method else None,
    )
