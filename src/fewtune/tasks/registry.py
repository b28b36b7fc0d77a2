"""Every task fewtune runs, one line each. A new task is its own module plus a line here: the pipeline,
task inference, ``--task`` and the report find it through this table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fewtune.errors import ConfigError
from fewtune.tasks.base import TaskType
from fewtune.tasks.classification import ClassificationTask
from fewtune.tasks.extraction import ExtractionTask
from fewtune.tasks.generation import GenerationTask
from fewtune.tasks.multilabel import MultiLabelTask

if TYPE_CHECKING:
    from fewtune.config import RunConfig

# Task inference asks each in this order whether the target field's values are its kind; classification
# and generation, both plain text, are told apart by infer_task's own rule on distinct values.
TASK_TYPES: tuple[type[TaskType], ...] = (
    ExtractionTask,
    MultiLabelTask,
    ClassificationTask,
    GenerationTask,
)


def task_names() -> tuple[str, ...]:
    """Every task's name, alphabetically (as ``--task`` lists them)."""
    return tuple(sorted(t.name for t in TASK_TYPES))


def task_type(name: str | None) -> type[TaskType]:
    """The task type ``name`` names; classification for none (records written before tasks had names)."""
    name = name or ClassificationTask.name
    for kind in TASK_TYPES:
        if kind.name == name:
            return kind
    raise ConfigError(f"--task takes {', '.join(task_names())}, got {name!r}")


def check_metric(kind: type[TaskType], metric: str | None) -> None:
    """``--metric`` (None: the task's default) is one of the task's own metric choices."""
    if metric is not None and metric not in kind.metric_choices:
        raise ConfigError(f"--metric for {kind.name} takes {', '.join(kind.metric_choices)}, got {metric!r}")


def make_task(cfg: RunConfig) -> TaskType:
    """The task a resolved run's settings name, built from them (extraction's schema, a chosen metric);
    ``--metric`` is checked here, once the task is known."""
    assert cfg.data.task is not None, "the plan resolves the task"
    kind = task_type(cfg.data.task)
    check_metric(kind, cfg.cost.metric)
    return kind.from_config(cfg)


def task_of_record(block: Mapping[str, Any]) -> TaskType:
    """The task a run's record names (its ``task`` block; classification for records without one)."""
    return task_type(block.get("name")).from_record(block)
