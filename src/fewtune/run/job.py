"""The one job every task's methods run through: :meth:`Job.prepare` reads and checks the data before any
model loads; :meth:`Job.execute` runs the rows in one order for every task (the data checks and the
task's floor, the prompting rows, the no-LLM reference, a fine-tuning API's job, then every trained row
through :func:`fewtune.run.training_rows.train_rows`), recording each row in the run's session.

How a task's rows are asked and scored is its :class:`TaskRows`: a closed label set
(:class:`fewtune.run.label_rows.LabelRows`: label log-likelihood or generate-and-parse) or an open output
(:class:`fewtune.run.output_rows.OutputRows`: generate, parse, score)."""

from __future__ import annotations

from typing import Any

from fewtune.methods import Method
from fewtune.results.record import RunResults
from fewtune.run.events import RunEvents
from fewtune.run.label_rows import LabelRows
from fewtune.run.loaders import answerers
from fewtune.run.output_rows import OutputRows
from fewtune.run.plan import RunPlan
from fewtune.run.rows import EmbedderFactory, TaskRows
from fewtune.run.session import RunSession
from fewtune.run.training_rows import train_rows
from fewtune.tasks.base import Task, TaskType


class Job:
    def __init__(
        self, plan: RunPlan, task: TaskType, events: RunEvents, embedder_factory: EmbedderFactory
    ) -> None:
        self.cfg = plan.cfg
        self.rows = rows_for(plan, task, events, embedder_factory)

    def prepare(self) -> RunResults:
        return self.rows.prepare()

    def execute(self, session: RunSession, backends: tuple[Any, Any]) -> None:
        """``backends``: the model LoRA trains on (``--model``) and the one the prompting rows ask."""
        rows = self.rows
        session.answerers = answerers(self.cfg, backends[1])
        index = rows.start(session)
        rows.prompt_rows(session, backends, index)
        rows.reference_rows(session)
        if Method.HOSTED_FT in self.cfg.eval.methods:
            rows.hosted_rows(session)
        train_rows(self.cfg, session, backends[0], rows.tuning(session, backends, index))


def rows_for(plan: RunPlan, task: TaskType, events: RunEvents, embedder_factory: EmbedderFactory) -> TaskRows:
    """An open-output task's rows generate, parse and score; classification scores its closed label set."""
    if isinstance(task, Task):
        return OutputRows(plan, task, events, embedder_factory)
    return LabelRows(plan, events, embedder_factory)
