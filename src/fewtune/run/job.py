"""What runs one task's methods: a :class:`TaskJob` reads and checks the data (``prepare``) before any model
loads, then runs every method, recording each row in the run's session (``execute``). Classification's job
is :class:`fewtune.run.classify.ClassificationJob`; every open-output task shares
:class:`fewtune.run.text_job.TextJob`. :func:`fewtune.run.pipeline.job_for` picks one."""

from __future__ import annotations

import abc
from typing import Any

from fewtune.run.session import RunSession


class TaskJob(abc.ABC):
    @abc.abstractmethod
    def prepare(self) -> dict[str, Any]:
        """Read and check the data; return the record's header (``task``, ``dataset``, ...)."""

    @abc.abstractmethod
    def execute(self, session: RunSession, backends: tuple[Any, Any]) -> None:
        """``backends``: the model LoRA trains on (``--model``) and the one the prompting rows ask."""
