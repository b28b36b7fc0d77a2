"""Zero-shot and k-shot prompting: fitting is choosing the demos."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fewtune.backends.base import Backend
from fewtune.data.load import Example
from fewtune.embeddings import Embedder
from fewtune.methods import Method
from fewtune.prompts.demos import NEAREST, DemoIndex, NearestDemos, select_demos
from fewtune.prompts.template import PromptTemplate
from fewtune.strategies.base import Predictor, Strategy


@dataclass
class FewShot(Strategy):
    """``shots`` demos from the training examples: one seeded set (balanced, random) or, for ``nearest``,
    the most similar examples to each input (needs ``index``, built over the same examples, or
    ``embedder`` to build one)."""

    backend: Backend
    template: PromptTemplate
    shots: int
    selection: str = "balanced"
    seed: int = 0
    embedder: Embedder | None = None
    index: DemoIndex | None = None

    def _index(self, train: Sequence[Example]) -> DemoIndex:
        if self.index is not None and list(self.index.pool) == list(train):
            return self.index
        if self.embedder is None:
            raise ValueError("nearest-neighbour demos need an embedder or an index over the examples")
        return DemoIndex.build(train, self.embedder)

    def fit(self, train: Sequence[Example]) -> Predictor:
        method = (Method.FEW_SHOT if self.shots else Method.ZERO_SHOT).value
        if not self.shots:
            return Predictor(method, self.backend, self.template)
        if self.selection == NEAREST:
            return Predictor(
                method,
                self.backend,
                self.template,
                demo_selection=NEAREST,
                per_row_demos=NearestDemos(self._index(train), self.shots),
            )
        return Predictor(
            method=method,
            backend=self.backend,
            template=self.template,
            demos=tuple(select_demos(train, self.shots, self.selection, self.seed)),
            demo_selection=self.selection,
            demo_seed=self.seed,
        )
