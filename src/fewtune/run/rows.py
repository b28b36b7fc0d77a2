"""A task's rows as the one job (:class:`fewtune.run.job.Job`) runs them."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from fewtune.results.record import RunResults
from fewtune.run.events import RunEvents
from fewtune.run.session import RunSession
from fewtune.run.training_rows import Tuning

EmbedderFactory = Callable[[Any, RunEvents], Any]


class TaskRows(abc.ABC):
    """A task's rows: its data, its prompting and reference rows, and its side of the training loop."""

    @abc.abstractmethod
    def prepare(self) -> RunResults:
        """Read and check the data; return the record's header (``task``, ``dataset``, ...)."""

    @abc.abstractmethod
    def start(self, session: RunSession) -> Any:
        """What comes before the rows (the data checks, the floor); returns the nearest-demo index or None."""

    @abc.abstractmethod
    def prompt_rows(self, session: RunSession, backends: tuple[Any, Any], index: Any) -> None:
        """zero-shot and few-shot rows."""

    @abc.abstractmethod
    def reference_rows(self, session: RunSession) -> None:
        """The task's no-LLM reference per training size, where it has one and it is asked for."""

    def hosted_rows(self, session: RunSession) -> None:
        """hosted-ft rows; a task that cannot run them refuses ``--methods hosted-ft`` in ``prepare``."""
        raise NotImplementedError("hosted-ft is refused in prepare() by this task")

    @abc.abstractmethod
    def tuning(self, session: RunSession, backends: tuple[Any, Any], index: Any) -> Tuning:
        """The task's side of the training loop."""
