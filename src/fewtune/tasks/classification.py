"""Classification: one label per row from a closed label set, scored by the labels' log-likelihoods (or,
where the prompt model gives no log-probabilities, or with ``--label-scoring generate``, by generating an
answer and parsing it), with optional calibration; its job is :class:`fewtune.run.classify.ClassificationJob`.
Its primary metric (accuracy, or macro-F1 on imbalanced test rows) is chosen by the report from the test
rows' label shares (:func:`fewtune.decide.metric.choose_metric`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fewtune.tasks.base import CLASSIFICATION, TaskType

if TYPE_CHECKING:
    from fewtune.config import RunConfig


class ClassificationTask(TaskType):
    name = CLASSIFICATION
    has_reference = True  # sentence embeddings + logistic regression

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
