"""The strategy contract: ``Strategy.fit(train) -> Predictor``; fitting never mutates its inputs."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fewtune.backends.base import Backend, ProgressFn
from fewtune.data.load import Example
from fewtune.prompts.template import PromptTemplate


@dataclass(frozen=True)
class Predictor:
    """Scores every label for each input with one backend, one template and a fixed set of demos.

    ``method`` is one of "zero-shot", "few-shot", "lora", "lora+few-shot"; ``info`` carries what fitting
    measured (training seconds, adapter size, ...).
    """

    method: str
    backend: Backend
    template: PromptTemplate
    demos: tuple[Example, ...] = ()
    train_examples: int = 0
    demo_selection: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def shots(self) -> int:
        return len(self.demos)

    @property
    def name(self) -> str:
        parts = [self.method]
        if self.train_examples:
            parts.append(f"n={self.train_examples}")
        if self.demos:
            parts.append(f"k={self.shots}")
        return " ".join(parts)

    def prompt(self, text: str) -> str:
        return self.template.render(text, self.demos)

    def choices(self) -> list[str]:
        return [self.template.continuation(label) for label in self.template.labels]

    def score(
        self, texts: Sequence[str], batch_size: int = 8, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Label log-likelihoods, ``[len(texts), len(labels)]``."""
        return self.backend.score_choices(
            [self.prompt(t) for t in texts],
            self.choices(),
            batch_size=batch_size,
            progress=progress,
            prefix=self.template.prefix(self.demos),
        )

    def predict(self, texts: Sequence[str], batch_size: int = 8) -> list[str]:
        best = self.score(texts, batch_size).argmax(axis=1)
        return [self.template.labels[i] for i in best]

    def with_demos(self, demos: Sequence[Example], method: str, demo_selection: str | None) -> Predictor:
        """The same model with other demos (e.g. a LoRA adapter prompted with k shots)."""
        return replace(self, demos=tuple(demos), method=method, demo_selection=demo_selection)


class Strategy(abc.ABC):
    """Turns training examples into a :class:`Predictor`."""

    @abc.abstractmethod
    def fit(self, train: Sequence[Example]) -> Predictor:
        """Return a new predictor; ``train`` is not modified."""
