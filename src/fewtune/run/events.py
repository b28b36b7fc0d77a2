"""How a run tells its user what is happening, without printing: the pipeline calls a :class:`RunEvents`,
and the user interface decides what to show (``cli.ui.RichEvents`` in the terminal; :class:`QuietEvents`
for a library caller or a test)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from fewtune.backends.base import ProgressFn

T = TypeVar("T")
TrainStep = Callable[[int, int, float], None]
"""``on_step(step, total_steps, loss)``, called by a training loop after each optimiser step."""


class RunEvents(Protocol):
    """What a run reports; every method returns what its ``work`` returns."""

    def info(self, message: str) -> None:
        """A line of progress (what was loaded, what a run folder holds)."""

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the run."""

    def finished(self, row: Mapping[str, Any]) -> None:
        """A method's results row, just recorded."""

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Every finished row, once the methods are done."""

    def status(self, message: str) -> contextlib.AbstractContextManager[Any]:
        """A step without a count (loading a model), for as long as the context lasts."""

    def progress(self, title: str, total: int, work: Callable[[ProgressFn], T]) -> T:
        """Run ``work(advance)``; ``advance(n)`` says n more of ``total`` items are done."""

    def training(self, title: str, fit: Callable[[TrainStep], T]) -> T:
        """Run ``fit(on_step)``, a training loop that reports its steps and loss."""


class QuietEvents:
    """Shows nothing; keeps the warnings (a library caller's or a test's events)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def finished(self, row: Mapping[str, Any]) -> None:
        pass

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> None:
        pass

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        yield

    def progress(self, title: str, total: int, work: Callable[[ProgressFn], T]) -> T:
        return work(lambda n: None)

    def training(self, title: str, fit: Callable[[TrainStep], T]) -> T:
        return fit(lambda step, total, loss: None)
