"""Zero-shot and k-shot prompting: fitting is choosing the demos."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fewtune.backends.base import Backend
from fewtune.data.load import Example
from fewtune.prompts.demos import select_demos
from fewtune.prompts.template import PromptTemplate
from fewtune.strategies.base import Predictor, Strategy


@dataclass
class FewShot(Strategy):
    backend: Backend
    template: PromptTemplate
    shots: int
    selection: str = "balanced"
    seed: int = 0

    def fit(self, train: Sequence[Example]) -> Predictor:
        demos = select_demos(train, self.shots, self.selection, self.seed)
        return Predictor(
            method="few-shot" if self.shots else "zero-shot",
            backend=self.backend,
            template=self.template,
            demos=tuple(demos),
            demo_selection=self.selection if self.shots else None,
        )
