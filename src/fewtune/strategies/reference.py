"""The no-LLM reference: sentence embeddings + logistic regression on the LoRA training examples.

A team whose labels a 22M-parameter sentence encoder and a linear classifier already separate may not need an
LLM at all, so this row sits next to the prompting and fine-tuning rows, on the same test rows and the same
training examples. It has no prompt and no demos, so it is not a :class:`Predictor`;
:func:`fewtune.run.evaluate.evaluate` scores it (as :class:`fewtune.run.label_answers.ReferenceLabels`) into a
results row with the same fields (``method`` is "reference"; the LLM-only fields are None, and
:class:`~fewtune.results.sections.ReferenceFit` says how it was fitted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fewtune.data.checks import REFERENCE_C, REFERENCE_MAX_ITER
from fewtune.data.load import Example
from fewtune.embeddings import Embedder
from fewtune.methods import Method
from fewtune.results.sections import ReferenceFit

# Log-probability given to labels absent from the training sample (the classifier cannot predict them).
UNSEEN_LABEL_LOG_PROB = float(np.log(1e-12))


@dataclass
class ReferenceModel:
    """A fitted classifier over sentence embeddings; ``labels`` is the run's full label set."""

    embedder: Embedder
    classifier: Any
    labels: tuple[str, ...]
    train_examples: int
    fitted: ReferenceFit

    @property
    def name(self) -> str:
        return f"{Method.REFERENCE.value} n={self.train_examples}"

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Log-probability of every label, ``[len(texts), len(labels)]``."""
        probs = self.classifier.predict_proba(self.embedder.embed(texts))
        out = np.full((len(texts), len(self.labels)), UNSEEN_LABEL_LOG_PROB)
        column = {label: j for j, label in enumerate(self.labels)}
        for i, label in enumerate(self.classifier.classes_):
            out[:, column[str(label)]] = np.log(np.clip(probs[:, i], 1e-12, 1.0))
        return out


@dataclass
class EmbeddingReference:
    """Embeds the training texts and fits a multinomial logistic regression (seeded, deterministic)."""

    embedder: Embedder
    labels: tuple[str, ...]
    seed: int = 0

    def fit(self, train: Sequence[Example]) -> ReferenceModel:
        from sklearn.linear_model import LogisticRegression

        if len({ex.label for ex in train}) < 2:
            raise ValueError("the reference needs training examples of at least two labels")
        start = time.perf_counter()
        vectors = self.embedder.embed([ex.text for ex in train])
        classifier = LogisticRegression(C=REFERENCE_C, max_iter=REFERENCE_MAX_ITER, random_state=self.seed)
        classifier.fit(vectors, [ex.label for ex in train])
        fitted = ReferenceFit(
            train_seconds=time.perf_counter() - start,
            embedding_model=self.embedder.name,
            classifier=f"LogisticRegression(C={REFERENCE_C:g})",
        )
        return ReferenceModel(self.embedder, classifier, self.labels, len(train), fitted)
