"""What the learning curves say about the next step: is the score still rising with more labelled data (or
more demos)?

The score is fitted against log2 of the training examples (or shots) by least squares, so the slope reads as
points per doubling; learning curves of fine-tuned models are close to linear in log n over the small sizes a
team can label (Le Scao & Rush 2021; Kaplan et al. 2020 for the power-law form). The projection to the next
doubling takes the smaller of the fitted slope and the last doubling's gain, because curves flatten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Issue 9's "when the last doubling still gained more than ~2 points": below that, doubling the labelled
# data buys less than the 95% interval of a few-hundred-row test set can resolve (about +/-4 points at
# n=400, accuracy 0.8), so "label more" would not be a step the evidence supports.
RISING_POINTS_PER_DOUBLING = 2.0


@dataclass(frozen=True)
class Trend:
    """One curve's trend: the x values (training examples or shots) and the primary score at each."""

    family: str
    """What the curve is of, e.g. "lora" or "few-shot balanced"."""
    axis: str
    """"training examples" or "shots"."""
    xs: tuple[int, ...]
    scores: tuple[float, ...]

    @property
    def per_doubling(self) -> float:
        """Least-squares slope of the score against log2(x), in points per doubling."""
        slope = np.polyfit(np.log2(self.xs), self.scores, 1)[0]
        return float(slope) * 100

    @property
    def last_gain(self) -> float:
        """The last step's gain, in points per doubling."""
        (x0, x1), (s0, s1) = self.xs[-2:], self.scores[-2:]
        return (s1 - s0) * 100 / float(np.log2(x1 / x0))

    @property
    def rising(self) -> bool:
        return self.last_gain > RISING_POINTS_PER_DOUBLING

    @property
    def next_x(self) -> int:
        return 2 * self.xs[-1]

    @property
    def expected_next(self) -> float:
        """Score expected at twice the largest x, capped at 1."""
        return min(1.0, self.scores[-1] + min(self.per_doubling, self.last_gain) / 100)

    def to_dict(self) -> dict[str, object]:
        return {
            "family": self.family,
            "axis": self.axis,
            "x": list(self.xs),
            "score": list(self.scores),
            "points_per_doubling": self.per_doubling,
            "last_doubling_points": self.last_gain,
            "rising": self.rising,
            "next_x": self.next_x,
            "expected_next": self.expected_next,
        }


def trend(family: str, axis: str, points: Sequence[tuple[int, float]]) -> Trend | None:
    """A trend from ``(x, score)`` points with x > 0; None with fewer than two distinct x."""
    best: dict[int, float] = {}
    for x, score in points:
        if x > 0:
            best[x] = max(score, best.get(x, float("-inf")))
    if len(best) < 2:
        return None
    xs = tuple(sorted(best))
    return Trend(family, axis, xs, tuple(best[x] for x in xs))


def data_step(t: Trend | None, sizes: Sequence[int], label: str) -> str | None:
    """The verdict's step about labelling more: from the curve, or the sweep that would tell."""
    if t is None:
        if not sizes:
            return None
        n = max(sizes)
        sweep = ",".join(str(v) for v in sorted({max(1, n // 4), max(1, n // 2), n, 2 * n}))
        return (
            f"one training size ({n}) says nothing about whether more labelled data helps: re-run with "
            f"--train-sizes {sweep} to see the learning curve"
        )
    if not t.rising:
        return (
            f"more labelled data is unlikely to help much: the last doubling of {t.family}'s training "
            f"examples ({t.xs[-2]} -> {t.xs[-1]}) gained {t.last_gain:+.1f} {label} points"
        )
    return (
        f"more labelled data is likely to help: about {t.per_doubling:+.1f} {label} points per doubling "
        f"of {t.family}'s training examples (the last doubling {t.last_gain:+.1f}); expect ~"
        f"{t.expected_next:.3f} at {t.next_x}: label more, then re-run with --train-sizes "
        f"{','.join(str(x) for x in (*t.xs, t.next_x))}"
    )


def shots_step(t: Trend | None, label: str) -> str | None:
    """A step about more demos, when the prompt's shot curve is still rising."""
    if t is None or not t.rising:
        return None
    return (
        f"more demos may help the prompt: {t.family} gained {t.last_gain:+.1f} {label} points over its "
        f"last doubling of shots ({t.xs[-2]} -> {t.xs[-1]}); try --shots {t.next_x}"
    )
