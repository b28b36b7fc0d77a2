"""The multi-label task's no-LLM reference: one logistic regression per label over sentence embeddings
(one-vs-rest), on the same training examples as each LoRA adapter, with the classification reference's
settings (:mod:`fewtune.strategies.reference`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fewtune.tasks.base import TaskExample
from fewtune.tasks.multilabel_text import Embed, render

# The reference's per-label decision threshold on the predicted probability.
REFERENCE_THRESHOLD = 0.5


@dataclass
class FittedMultiLabelReference:
    """One binary classifier per label (or a constant where the training rows never or always hold it)."""

    embed: Embed
    labels: tuple[str, ...]
    classifiers: list[Any]
    """Per label: a fitted LogisticRegression, or the constant probability 0.0 / 1.0."""
    info: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), len(labels)]`` probability that each label applies."""
        vectors = self.embed(texts)
        columns = [
            np.full(len(texts), c) if isinstance(c, float) else c.predict_proba(vectors)[:, 1]
            for c in self.classifiers
        ]
        return np.stack(columns, axis=1).reshape(len(texts), len(self.labels))

    def predict(self, texts: Sequence[str]) -> list[str]:
        """Rendered outputs: every label at or above the threshold, else the single most probable one."""
        if not texts:
            return []
        probs = self.probabilities(texts)
        chosen = probs >= REFERENCE_THRESHOLD
        chosen[np.arange(len(texts)), probs.argmax(axis=1)] |= ~chosen.any(axis=1)
        return [render([self.labels[j] for j in np.flatnonzero(row)]) for row in chosen]

    def describe(self) -> dict[str, Any]:
        return dict(self.info)


@dataclass
class MultiLabelReference:
    """Fits :class:`FittedMultiLabelReference` on training examples (seeded, deterministic); the labels are
    the task's (labels the training rows lack are never predicted), or the training rows' when empty."""

    embed: Embed
    labels: tuple[str, ...] = ()
    seed: int = 0

    def fit(self, train: Sequence[TaskExample]) -> FittedMultiLabelReference:
        from sklearn.linear_model import LogisticRegression

        from fewtune.data.checks import REFERENCE_C, REFERENCE_MAX_ITER

        if not train:
            raise ValueError("the reference needs at least one training example")
        start = time.perf_counter()
        labels = self.labels or tuple(sorted({label for ex in train for label in ex.target}))
        vectors = self.embed([ex.text for ex in train])
        classifiers: list[Any] = []
        for label in labels:
            present = np.array([label in ex.target for ex in train], dtype=int)
            if present.min() == present.max():  # one class in train: always absent (or always present)
                classifiers.append(float(present[0]))
                continue
            model = LogisticRegression(C=REFERENCE_C, max_iter=REFERENCE_MAX_ITER, random_state=self.seed)
            classifiers.append(model.fit(vectors, present))
        info = {
            "classifier": "one-vs-rest logistic regression",
            "C": REFERENCE_C,
            "threshold": REFERENCE_THRESHOLD,
            "constant_labels": [
                label for label, c in zip(labels, classifiers, strict=True) if isinstance(c, float)
            ],
            "train_examples": len(train),
            "train_seconds": time.perf_counter() - start,
        }
        return FittedMultiLabelReference(self.embed, labels, classifiers, info)
