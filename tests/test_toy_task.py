"""The extension point docs/development.md claims: a new task is one module plus one line in the task
registry. A toy closed-answer task (yes/no questions, tests/toy_yesno.py) is registered and run end to end on
the fake backend: data, prompting rows, the floor, costs, the verdict and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl
from rich.console import Console
from toy_yesno import YesNoTask

from fewtune.backends.fake import FakeBackend
from fewtune.cli.runner import run
from fewtune.config import build_config
from fewtune.embeddings import FakeEmbedder
from fewtune.tasks import registry


def questions(count: int, start: int = 0) -> list[dict[str, str]]:
    # The fake backend answers with the input's first word: right on "yes ..." rows, wrong on "no" ones
    # only where the question starts otherwise.
    return [
        {"text": f"{'yes' if i % 3 else 'is'} it so, question {i}?", "answer": "yes" if i % 3 else "no"}
        for i in range(start, start + count)
    ]


def test_a_new_task_is_one_module_plus_one_registry_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "TASK_TYPES", (*registry.TASK_TYPES, YesNoTask))  # the registry line
    pool = write_jsonl(tmp_path / "pool.jsonl", questions(24))
    test = write_jsonl(tmp_path / "test.jsonl", questions(12, start=100))
    cfg = build_config(
        None,
        {
            "run": {"out": str(tmp_path / "run")},
            "data": {"data": str(pool), "test": str(test), "task": "yes-no"},
            "prompt": {"shots": [0, 2]},
            "eval": {"methods": ["zero-shot", "few-shot"], "latency_requests": 1},
        },
    )
    folder = run(
        cfg, Console(quiet=True), lambda cfg, events: FakeBackend(), lambda cfg, events: FakeEmbedder()
    )
    results = json.loads((folder / "results.json").read_text())
    assert results["task"]["name"] == "yes-no" and results["status"] == "complete"
    assert [row["name"] for row in results["methods"]] == ["zero-shot", "few-shot k=2 random"]
    for row in results["methods"]:
        assert row["primary"]["name"] == "yes-no-accuracy"
        assert row["primary"]["value"] == pytest.approx(8 / 12)  # the 8 "yes ..." rows of 12
    analysis = json.loads((folder / "analysis.json").read_text())
    assert analysis["recommendation"]["choice"]
    assert (
        "yes-no-accuracy" in (folder / "report.md").read_text()
        or "accuracy" in (folder / "report.md").read_text()
    )
