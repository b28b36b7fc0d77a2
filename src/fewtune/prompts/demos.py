"""Choosing the k demos shown in a few-shot prompt, from the pool only."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from fewtune.data.load import Example

DEMO_SELECTIONS = ("balanced", "random")


def select_demos(
    pool: Sequence[Example], shots: int, selection: str = "balanced", seed: int = 0
) -> list[Example]:
    """Pick ``shots`` demos from ``pool``, seeded.

    ``balanced`` takes labels round-robin (each label's rows shuffled, labels in a shuffled order), so the
    counts differ by at most one and no label's demos all sit at the end of the prompt, where recency
    bias would favour it. ``random`` is a plain seeded sample.
    """
    if shots <= 0:
        return []
    if selection not in DEMO_SELECTIONS:
        raise ValueError(f"unknown demo selection {selection!r}; choose from {', '.join(DEMO_SELECTIONS)}")
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
