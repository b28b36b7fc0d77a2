"""Classification: one label per row from a closed label set, scored by the labels' log-likelihoods (or,
where the prompt model gives no log-probabilities, or with ``--label-scoring generate``, by generating an
answer and parsing it), with optional calibration; its rows are :class:`fewtune.run.label_rows.LabelRows`.
Its primary metric (accuracy, or macro-F1 on imbalanced test rows) is chosen by the report from the test
rows' label shares (:func:`fewtune.decide.metric.choose_metric`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.decide.metric import METRIC_CHOICES, PrimaryMetric, choose_metric, label_stats
from fewtune.tasks.base import CLASSIFICATION, ClassHits, TaskType, add_hit

if TYPE_CHECKING:
    from fewtune.config import RunConfig


class ClassificationTask(TaskType):
    name = CLASSIFICATION
    has_reference = True  # sentence embeddings + logistic regression
    metric_choices = METRIC_CHOICES
    labels_from_gold = True

    def __init__(self, label_scoring: str = "loglik") -> None:
        self.label_scoring = label_scoring

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ClassificationTask:
        return cls(cfg.eval.label_scoring)

    @classmethod
    def from_record(cls, block: Mapping[str, Any]) -> ClassificationTask:
        return cls(block.get("label_scoring") or "loglik")

    def describe(self) -> dict[str, Any]:
        return {"name": CLASSIFICATION, "label_scoring": self.label_scoring}

    @classmethod
    def failed(cls, lines: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
        """The answer is none of the labels (unparsed, or a label the run does not have)."""
        known = set(labels)
        return np.array([float(str(p["predicted"]) not in known) for p in lines])

    @classmethod
    def class_hits(cls, lines: Sequence[Mapping[str, Any]]) -> ClassHits:
        """Per gold label: its rows, and whether each was answered with it."""
        groups: ClassHits = {}
        for i, p in enumerate(lines):
            add_hit(groups, len(lines), str(p["gold"]), i, float(p["predicted"] == p["gold"]), 1.0)
        return groups

    @classmethod
    def row_stats(cls, lines: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
        gold = [str(p["gold"]) for p in lines]
        return label_stats(gold, [str(p["predicted"]) for p in lines], list(labels))

    def release_metric(self, lines: Sequence[Mapping[str, Any]], override: str | None) -> PrimaryMetric:
        """Accuracy, or macro-F1 on imbalanced gold labels, unless ``override`` names one."""
        counts = Counter(str(p["gold"]) for p in lines)
        return choose_metric(dict(counts), override).metric
