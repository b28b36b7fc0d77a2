"""Shared pieces of the open-output task tests (extraction, generation, multi-label)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fewtune.errors import DataError
from fewtune.tasks.base import TaskExample
from fewtune.tasks.extraction import ExtractionTask

WHERE = Path("rows.jsonl")
# A seed whose random tiny model writes varied tokens (others repeat one byte token), so equal outputs mean
# something.
SEED = 2


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The tiny model gains nothing from intra-op threads, and on a busy machine their spinning makes each
    # forward pass ~100x slower (1 ms -> 300 ms measured on 2 loaded cores).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def extraction_example(target: dict[str, Any], text: str = "an input") -> TaskExample:
    return TaskExample(text=text, label=ExtractionTask().render(target), target=target)


def generation_example(
    *references: str, fields: dict[str, str] | None = None, text: str = "an input"
) -> TaskExample:
    return TaskExample(
        text=text, label=references[0], target=references[0], references=tuple(references), fields=fields
    )


def assert_names_file_and_line(err: pytest.ExceptionInfo[DataError], path: Path, line: int) -> None:
    assert f"{path}:{line}:" in str(err.value)
    assert err.value.line == line


def extraction_rows(count: int, start: int = 0) -> list[dict]:
    return [
        {"text": f"play song {i} by artist {i}", "label": {"song": f"s{i}", "artist": f"a{i}"}}
        for i in range(start, start + count)
    ]


def multilabel_example(*labels: str, text: str = "an input") -> TaskExample:
    from fewtune.tasks.multilabel import render

    return TaskExample(text=text, label=render(labels), target=labels)


def fitted_multilabel(*labels: str, metric: str | None = None) -> Any:
    """A multi-label task fitted on one row per label (its label set is ``labels``)."""
    from fewtune.tasks.multilabel import MultiLabelTask

    task = MultiLabelTask(metric)
    task.fit([multilabel_example(label) for label in labels])
    return task
