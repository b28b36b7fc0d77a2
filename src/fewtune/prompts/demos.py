"""Choosing the k demos shown in a few-shot prompt, from the pool only.

- ``balanced``: labels round-robin, one fixed demo set for every test input;
- ``random``: a plain seeded sample, one fixed demo set for every test input;
- ``nearest``: for each test input, the k pool examples whose sentence embeddings are most similar to it
  (Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?"), the most similar last, next to the
  input. The demos differ per input, so no demo block is shared between rows.

An adapter trained to be prompted with demos is shown them in training too (:func:`training_draw`): with
a fixed selection, the rows of a training batch share one demo block drawn per batch (:class:`BatchDemos`),
as the test rows share one, so training can run the block once per batch; nearest demos, and
``--demo-draw row``, give each training row its own set (:func:`training_demos`).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fewtune.backends.base import ProgressFn
from fewtune.data.load import Example
from fewtune.embeddings import Embedder

DEMO_SELECTIONS = ("balanced", "random", "nearest")
# Selections that draw one demo set for all rows (and so can be redrawn with other seeds).
FIXED_SELECTIONS = ("balanced", "random")
NEAREST = "nearest"
BATCH_DRAW, ROW_DRAW = "batch", "row"
DEMO_DRAWS = (BATCH_DRAW, ROW_DRAW)
"""``--demo-draw``: one demo set per training batch, shared by its rows, or one per training row."""


def select_demos(
    pool: Sequence[Example], shots: int, selection: str = "balanced", seed: int = 0
) -> list[Example]:
    """Pick ``shots`` demos from ``pool``, seeded, for a fixed selection (balanced or random).

    ``balanced`` takes labels round-robin (each label's rows shuffled, labels in a shuffled order), so the
    counts differ by at most one and no label's demos all sit at the end of the prompt, where recency
    bias would favour it. ``random`` is a plain seeded sample.
    """
    if shots <= 0:
        return []
    if selection not in FIXED_SELECTIONS:
        raise ValueError(f"unknown demo selection {selection!r}; choose from {', '.join(FIXED_SELECTIONS)}")
    rng = random.Random(seed)
    if selection == "random":
        return rng.sample(list(pool), min(shots, len(pool)))
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in pool:
        by_label[ex.label].append(ex)
    labels = sorted(by_label)
    rng.shuffle(labels)
    for label in labels:
        rng.shuffle(by_label[label])
    demos: list[Example] = []
    round_ = 0
    while len(demos) < min(shots, len(pool)):
        for label in labels:
            if len(demos) < shots and round_ < len(by_label[label]):
                demos.append(by_label[label][round_])
        round_ += 1
    return demos


@dataclass
class DemoIndex:
    """The pool's sentence embeddings, computed once and shared by every shot count."""

    pool: Sequence[Example]
    embedder: Embedder
    vectors: np.ndarray = field(repr=False)
    """``[len(pool), dim]``, unit length."""

    @classmethod
    def build(
        cls, pool: Sequence[Example], embedder: Embedder, progress: ProgressFn | None = None
    ) -> DemoIndex:
        return cls(list(pool), embedder, embedder.embed([ex.text for ex in pool], progress=progress))

    def nearest(self, texts: Sequence[str], shots: int) -> list[tuple[Example, ...]]:
        """For each text, the ``shots`` most similar pool examples, least similar first (most similar last).

        The query texts are embedded on every call, as a deployment embeds each request.
        """
        if shots <= 0 or not texts:
            return [() for _ in texts]
        shots = min(shots, len(self.pool))
        similarity = self.embedder.embed(texts) @ self.vectors.T
        # Ties break towards the earlier pool row, so the choice is deterministic.
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :shots]
        return [tuple(self.pool[j] for j in row[::-1]) for row in top]


@dataclass(frozen=True)
class NearestDemos:
    """Per-input demos: the ``shots`` nearest pool examples of each input."""

    index: DemoIndex
    shots: int

    def for_texts(self, texts: Sequence[str]) -> list[tuple[Example, ...]]:
        return self.index.nearest(texts, self.shots)


def training_demos(
    train: Sequence[Example],
    pool: Sequence[Example],
    shots: int,
    selection: str,
    seed: int,
    index: DemoIndex | None = None,
) -> list[tuple[Example, ...]]:
    """The demos each training row is shown when an adapter is trained to be prompted with ``shots`` demos:
    drawn from ``pool`` by the selection the test rows get theirs with (a fresh seeded draw per row for
    balanced and random, the row's nearest pool examples for nearest), never the row itself (nor a pool row
    with its text)."""
    if shots <= 0:
        return [() for _ in train]
    if selection == NEAREST:
        assert index is not None, "nearest demos need the pool's index"
        # One more neighbour than needed: the row itself is its own nearest.
        found = index.nearest([ex.text for ex in train], shots + 1)
        return [
            tuple(d for d in near if d.text != ex.text)[-shots:]
            for ex, near in zip(train, found, strict=True)
        ]
    sets = []
    for i, ex in enumerate(train):
        rng = random.Random(f"{seed}:{i}")
        row_seed = rng.randrange(2**31)
        demos = select_demos(pool, shots, selection, row_seed)
        if any(d.text == ex.text for d in demos):  # rare: drawn again from the pool without the row
            demos = select_demos([p for p in pool if p.text != ex.text], shots, selection, row_seed)
        sets.append(tuple(demos))
    return sets


@dataclass(frozen=True)
class BatchDemos:
    """One demo set per training batch, drawn as the test rows' set is (``selection`` from ``pool``) and
    shared by the batch's rows; never one of the batch's rows (nor a pool row with its text).

    A draw depends only on the seed, the step and the batch's rows, so a resumed run replays the same draws.
    """

    pool: tuple[Example, ...] = field(repr=False)
    shots: int
    selection: str
    seed: int

    def draw(self, step: int, texts: Sequence[str]) -> tuple[Example, ...]:
        """The demos of optimizer step ``step``, whose rows have the input ``texts``."""
        step_seed = random.Random(f"{self.seed}:{step}").randrange(2**31)
        demos = select_demos(self.pool, self.shots, self.selection, step_seed)
        shown = set(texts)
        if any(d.text in shown for d in demos):  # drawn again from the pool without the batch's rows
            demos = select_demos(
                [p for p in self.pool if p.text not in shown], self.shots, self.selection, step_seed
            )
        return tuple(demos)

    def settings(self) -> dict[str, object]:
        """What the draws depend on (a checkpoint of other draws must not be continued): the settings and
        a digest of the pool."""
        pool = hashlib.sha256(json.dumps([[p.text, p.label] for p in self.pool]).encode()).hexdigest()
        return {"shots": self.shots, "selection": self.selection, "seed": self.seed, "pool": pool}


def training_draw(
    train: Sequence[Example],
    pool: Sequence[Example],
    shots: int,
    selection: str,
    seed: int,
    draw: str,
    index: DemoIndex | None = None,
) -> BatchDemos | list[tuple[Example, ...]]:
    """The demos an adapter trained to be prompted with ``shots`` demos is shown in training: one draw per
    batch (``draw`` = batch, a fixed selection), or a set per row (``draw`` = row, or nearest demos, which
    are per input at test time too)."""
    if draw == BATCH_DRAW and selection in FIXED_SELECTIONS and shots > 0:
        return BatchDemos(tuple(pool), shots, selection, seed)
    return training_demos(train, pool, shots, selection, seed, index)
