"""Typed views of a record's run-level parts beside its rows: the curves and their points, the
recommendation as release reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired

from typing_extensions import TypedDict

from fewtune.methods import Method


class ShotRecord(TypedDict):
    """A point of a shot curve: a demo selection's accuracy at ``k`` demos."""

    strategy: str
    k: int
    mean: float
    std: float | None
    draws: int
    name: str


class SizeRecord(TypedDict):
    """A point of a training-size curve (LoRA's or the reference's)."""

    n: int
    accuracy: float
    ci95: list[float]
    name: str


class CrossoverRecord(TypedDict):
    """Where LoRA's training-size curve first reaches the best prompt's accuracy."""

    method: str
    prompt: str
    prompt_accuracy: float
    prompt_draws: int
    reached: bool
    n: float | None
    between: list[int | None] | None
    statement: NotRequired[str]


class CurvesRecord(TypedDict):
    """results.json's ``curves`` as :func:`fewtune.decide.curves.build_curves` writes it."""

    shots: list[ShotRecord]
    train_examples: list[SizeRecord]
    reference: list[SizeRecord]
    crossover: CrossoverRecord | None


@dataclass(frozen=True)
class SizePoint:
    """One point of a training-size curve (LoRA's or the reference's): ``{n, accuracy, ci95, name}``."""

    data: Mapping[str, Any]

    @property
    def n(self) -> int:
        return int(self.data["n"])

    @property
    def accuracy(self) -> float:
        return float(self.data["accuracy"])

    @property
    def ci95(self) -> tuple[float, float]:
        low, high = self.data["ci95"]
        return float(low), float(high)

    @property
    def name(self) -> str:
        """The row the point stands for."""
        return str(self.data.get("name"))


@dataclass(frozen=True)
class Curves:
    """A typed view of a record's ``curves`` (:func:`fewtune.decide.curves.build_curves`)."""

    data: Mapping[str, Any]

    @property
    def shots(self) -> list[Mapping[str, Any]]:
        """``[{strategy, k, mean, std, draws, name}]``: accuracy per demo selection and shot count."""
        return list(self.data.get("shots") or [])

    @property
    def train_examples(self) -> list[SizePoint]:
        """LoRA's accuracy per training size."""
        return [SizePoint(p) for p in self.data.get("train_examples") or []]

    @property
    def reference(self) -> list[SizePoint]:
        """The no-LLM reference's accuracy per training size."""
        return [SizePoint(p) for p in self.data.get(Method.REFERENCE.value) or []]

    @property
    def crossover(self) -> Mapping[str, Any] | None:
        """``{reached, n, prompt_accuracy, statement, ...}``, or None without a pair to compare."""
        return self.data.get("crossover")


@dataclass(frozen=True)
class Recommendation:
    """A typed view of a record's ``recommendation`` as far as release reads it (the method and whether the
    verdict is settled); :func:`fewtune.decide.recommend.recommend` writes the whole record."""

    data: Mapping[str, Any]

    @property
    def method(self) -> str | None:
        """The method to ship; None when the report recommends none."""
        value = self.data.get("method")
        return str(value) if value else None

    @property
    def settled(self) -> bool | None:
        """True settled, False provisional, None unknown (a report older than the flag)."""
        value = self.data.get("settled")
        return value if isinstance(value, bool) else None

    @property
    def unsettled(self) -> Any:
        """What did not settle, as written (``{shipped, other, lead_points, ...}``), when provisional."""
        return self.data.get("unsettled")
