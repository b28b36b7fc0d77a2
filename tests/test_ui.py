"""What the terminal shows, and that the pipeline itself shows nothing (only the UI prints)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_jsonl
from rich.console import Console
from task_helpers import extraction_rows

from fewtune.backends.fake import FakeBackend
from fewtune.cli.ui import RichEvents
from fewtune.config import build_config
from fewtune.embeddings import FakeEmbedder
from fewtune.run.events import QuietEvents
from fewtune.run.pipeline import run_pipeline


def test_messages_are_shown_as_written_not_as_markup() -> None:
    console = Console(record=True, width=200)
    events = RichEvents(console)
    events.info("pool [NAME] rows")
    events.warn("a row says [NAME] is [bold]")
    shown = console.export_text()
    assert "pool [NAME] rows" in shown and "warning: a row says [NAME] is [bold]" in shown


def test_progress_and_training_return_their_work() -> None:
    events = RichEvents(Console(quiet=True))
    assert events.progress("x", 3, lambda advance: [advance(1) for _ in range(3)] and "done") == "done"
    steps: list[int] = []
    assert (
        events.training("t", lambda on_step: [on_step(i, 2, 0.5) or steps.append(i) for i in (1, 2)])
        is not None
    )
    assert steps == [1, 2]


def test_the_pipeline_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", extraction_rows(8))
    test = write_jsonl(tmp_path / "test.jsonl", extraction_rows(3, start=50))
    cfg = build_config(
        None,
        {
            "run": {"out": str(tmp_path / "run")},
            "data": {"data": str(pool), "test": str(test), "max_test": 3},
            "prompt": {"shots": [0, 1], "demo_selection": ["random"]},
            "eval": {"methods": ["zero-shot", "few-shot"], "latency_requests": 1},
        },
    )
    before = cfg.to_dict()
    events = QuietEvents()
    folder = run_pipeline(cfg, events, lambda c, e: FakeBackend(), lambda c, e: FakeEmbedder(dim=16))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (folder / "results.json").is_file() and not (
        folder / "report.md"
    ).exists()  # the report is the UI's
    assert cfg.to_dict() == before  # the plan is a resolved copy: the caller's settings are unchanged
