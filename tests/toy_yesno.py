"""A toy closed-answer task, written as a user would add one: yes/no questions, scored by accuracy. It is
this one module plus one line in the task registry (``tests/test_toy_task.py`` adds the line)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.decide.metric import PrimaryMetric
from fewtune.errors import DataError
from fewtune.tasks.base import Metric, Parsed, Task, TaskExample, bootstrap_ci

ANSWERS = ("yes", "no")


def _accuracy(stats: np.ndarray) -> float:
    return float(stats[:, 0].mean()) if len(stats) else float("nan")


class YesNoTask(Task):
    name = "yes-no"
    target_field = "answer"
    default_instruction = "Answer the question with yes or no."
    primary = PrimaryMetric("yes-no-accuracy", "accuracy", _accuracy, per_row_correct=True)
    metric_choices = ("yes-no-accuracy",)
    stop = "\n"

    @classmethod
    def claims(cls, values: Sequence[Any], field: str) -> str | None:
        answers = {str(v).strip().lower() for v in values}
        return "every answer is yes or no" if answers and answers <= set(ANSWERS) else None

    def read_target(
        self, value: Any, record: Mapping[str, Any], path: Path, line: int, field: str = "target"
    ) -> TaskExample:
        answer = str(value).strip().lower()
        if answer not in ANSWERS:
            raise DataError(path, line, f"{field} must be yes or no, got {value!r}")
        return TaskExample(text=str(record.get("text", "")), label=answer, target=answer)

    def output_format(self) -> str:
        return "Output: yes or no, in lower case."

    def parse(self, text: str) -> Parsed:
        word = (text.strip().split() or [""])[0].strip(".,!").lower()
        ok = word in ANSWERS
        return Parsed(word if ok else None, ok, ok)

    def score_rows(
        self, examples: Sequence[TaskExample], parsed: Sequence[Parsed], outputs: Sequence[str]
    ) -> list[dict[str, float]]:
        return [
            {"correct": float(p.value == ex.target), "parsed": float(p.ok)}
            for ex, p in zip(examples, parsed, strict=True)
        ]

    def primary_stats(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        return np.array([[row["correct"]] for row in rows], dtype=float).reshape(-1, 1)

    def aggregate(self, rows: Sequence[Mapping[str, float]], seed: int) -> dict[str, Metric]:
        stats = self.primary_stats(rows)
        parsed = np.array([[row["parsed"]] for row in rows], dtype=float).reshape(-1, 1)
        return {
            "yes-no-accuracy": Metric(_accuracy(stats), bootstrap_ci(stats, _accuracy, seed)),
            "parse_rate": Metric(_accuracy(parsed), bootstrap_ci(parsed, _accuracy, seed)),
        }
