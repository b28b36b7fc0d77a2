"""The strategy contract: ``Strategy.fit(train) -> Predictor``; fitting never mutates its inputs."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from fewtune.backends.base import Backend, ProgressFn
from fewtune.data.load import Example
from fewtune.methods import row_name
from fewtune.prompts.template import QUERY_LEAD, PromptTemplate
from fewtune.results.sections import Fitted

PLAIN_ADAPTER = "plain-adapter"
"""The name's mark of a lora+few-shot row whose adapter was trained without demos (the lora row's)."""


class PerRowDemos(Protocol):
    """Demos chosen for each input (nearest neighbours) instead of one demo set for all."""

    @property
    def shots(self) -> int: ...

    def for_texts(self, texts: Sequence[str]) -> list[tuple[Example, ...]]: ...


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of label log-likelihoods: log-probabilities over the label set."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class Predictor:
    """Scores every label for each input with one backend, one template and its demos.

    ``method`` is a :class:`~fewtune.methods.Method`'s value; ``fitted`` is what fitting measured (a trained
    adapter's seconds, size, ...; None for a prompt). Demos are either one fixed set (``demos``) or chosen per
    input (``per_row_demos``). With ``label_bias`` (contextual calibration) the scores are the label
    log-probabilities minus that bias.
    """

    method: str
    backend: Backend
    template: PromptTemplate
    demos: tuple[Example, ...] = ()
    train_examples: int = 0
    demo_selection: str | None = None
    fitted: Fitted | None = None
    per_row_demos: PerRowDemos | None = None
    """Per-input demos; ``demos`` is then empty."""
    label_bias: tuple[float, ...] | None = None
    """log p(label | content-free input), subtracted from each row's label log-probabilities."""
    demo_seed: int | None = None
    """Seed that drew the fixed demo set (random and balanced selections)."""
    recipe: str | None = None
    """How a prompted adapter was trained when it is not the usual way, named in the row (e.g.
    "plain-adapter": the lora row's adapter, trained without demos, prompted with them)."""

    @property
    def shots(self) -> int:
        return self.per_row_demos.shots if self.per_row_demos else len(self.demos)

    @property
    def calibrated(self) -> bool:
        return self.label_bias is not None

    @property
    def name(self) -> str:
        """Unique per method row, e.g. "few-shot k=8 balanced calibrated" or "lora n=200"."""
        calibrated = "calibrated" if self.calibrated else ""
        return row_name(
            self.method, self.train_examples, self.shots, self.demo_selection, calibrated, self.recipe or ""
        )

    def demos_for(self, texts: Sequence[str]) -> list[tuple[Example, ...]]:
        if self.per_row_demos is not None:
            return self.per_row_demos.for_texts(texts)
        return [self.demos] * len(texts)

    def prompts(self, texts: Sequence[str]) -> list[str]:
        return [self.template.render(t, d) for t, d in zip(texts, self.demos_for(texts), strict=True)]

    def prompt(self, text: str) -> str:
        return self.prompts([text])[0]

    def shared_prefix(self) -> str:
        """Text every prompt starts with: the demo block and the query's ``Input:``, or only the header when
        demos differ per row."""
        if self.per_row_demos is not None:
            return self.template.header()
        return self.template.prefix(self.demos) + QUERY_LEAD

    def choices(self) -> list[str]:
        return [self.template.continuation(label) for label in self.template.labels]

    def raw_scores(
        self, texts: Sequence[str], batch_size: int = 16, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Label log-likelihoods from the backend, ``[len(texts), len(labels)]`` (no calibration)."""
        return self.backend.score_choices(
            self.prompts(texts),
            self.choices(),
            batch_size=batch_size,
            progress=progress,
            prefix=self.shared_prefix(),
        )

    def adjust(self, raw: np.ndarray) -> np.ndarray:
        """Apply the calibration (if any) to raw label log-likelihoods."""
        if self.label_bias is None:
            return raw
        return log_softmax(raw) - np.asarray(self.label_bias)

    def score(
        self, texts: Sequence[str], batch_size: int = 16, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Label scores, ``[len(texts), len(labels)]``; the highest is the prediction."""
        return self.adjust(self.raw_scores(texts, batch_size, progress))

    def predict(self, texts: Sequence[str], batch_size: int = 16) -> list[str]:
        best = self.score(texts, batch_size).argmax(axis=1)
        return [self.template.labels[i] for i in best]

    def with_demos(
        self,
        demos: Sequence[Example],
        method: str,
        demo_selection: str | None,
        per_row_demos: PerRowDemos | None = None,
        demo_seed: int | None = None,
        recipe: str | None = None,
    ) -> Predictor:
        """The same model with other demos (e.g. a LoRA adapter prompted with k shots)."""
        return replace(
            self,
            demos=tuple(demos),
            method=method,
            demo_selection=demo_selection,
            per_row_demos=per_row_demos,
            demo_seed=demo_seed,
            label_bias=None,
            recipe=recipe,
        )


class Strategy(abc.ABC):
    """Turns training examples into a :class:`Predictor`."""

    @abc.abstractmethod
    def fit(self, train: Sequence[Example]) -> Predictor:
        """Return a new predictor; ``train`` is not modified."""
