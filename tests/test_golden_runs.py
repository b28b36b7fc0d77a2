"""Golden runs: ``fewtune run`` of each task on the fake backend; its results.json, analysis.json and
report.md compared byte for byte (after masking what differs between machines) with tests/golden/runs/<task>/.

A refactor moves no number: these files fail when any printed figure changes. The clock the run reads is made
deterministic (each reading of ``time.perf_counter`` on the main thread advances it by one millisecond), so
latency, throughput and every cost derived from them are reproducible; dates, paths and the machine's
description are masked. Regenerate with ``FEWTUNE_UPDATE_GOLDEN=1`` when a change of output is intended.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import write_jsonl
from rich.console import Console

from fewtune.backends.fake import FakeBackend
from fewtune.cli.runner import run
from fewtune.config import build_config
from fewtune.embeddings import FakeEmbedder

GOLDEN = Path(__file__).parent / "golden" / "runs"
FILES = ("results.json", "analysis.json", "report.md")
MASKED_KEYS = {"started_at", "finished_at", "hardware", "fewtune_version", "created", "registered_at"}
STEP = 0.001


def classification_rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    # Every fourth row names no label, so the fake backend guesses and the rows differ.
    words = ("good", "bad", "meh")
    return [
        {"text": f"a {words[i % 3] if i % 4 else 'plain'} one, number {i}", "label": words[i % 3]}
        for i in range(start, start + count)
    ]


def multilabel_rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    sets = (["joy"], ["anger"], ["joy", "surprise"], ["fear"])
    return [
        {"text": f"{sets[i % 4][0] if i % 3 else 'so'} again {i}", "labels": sets[i % 4]}
        for i in range(start, start + count)
    ]


def extraction_rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "text": f"s{i} please by artist a{i}",
            "label": {"song": f"s{i}", "artist": f"a{i}"} if i % 2 else {"song": f"s{i}"},
        }
        for i in range(start, start + count)
    ]


def generation_rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"text": f"name[Place {i}], food[Thai]", "target": f"name[Place {i}] serves Thai food."}
        for i in range(start, start + count)
    ]


# task -> (rows, label field, methods)
RUNS: dict[str, tuple[Callable[[int, int], list[dict[str, Any]]], str, list[str]]] = {
    "classification": (classification_rows, "label", ["zero-shot", "few-shot", "reference"]),
    "multi-label": (multilabel_rows, "labels", ["zero-shot", "few-shot", "reference"]),
    "extraction": (extraction_rows, "label", ["zero-shot", "few-shot"]),
    "generation": (generation_rows, "target", ["zero-shot", "few-shot"]),
}


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``time.perf_counter`` on the main thread advances one step per reading (other threads, such as a
    progress bar's, keep the real clock)."""
    real, main = time.perf_counter, threading.main_thread()
    ticks = iter(range(1, 10**9))

    def clock() -> float:
        return next(ticks) * STEP if threading.current_thread() is main else real()

    monkeypatch.setattr(time, "perf_counter", clock)


def masked(value: Any, folder: str) -> Any:
    if isinstance(value, dict):
        return {k: "<masked>" if k in MASKED_KEYS else masked(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, folder) for v in value]
    if isinstance(value, str):
        return value.replace(folder, "<run>")
    return value


def normalised(path: Path, folder: Path) -> str:
    """The file's text with ``folder`` (the test's temporary folder) and dates masked."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.dumps(masked(json.loads(text), str(folder)), indent=2, sort_keys=True) + "\n"
    text = text.replace(str(folder), "<run>")
    return re.sub(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d)?(\.\d+)?(\+00:00|Z| UTC)?", "<date>", text)


def golden_run(task: str, tmp_path: Path) -> Path:
    rows, field, methods = RUNS[task]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows(36, 0))
    test = write_jsonl(tmp_path / "test.jsonl", rows(12, 100))
    cfg = build_config(
        None,
        {
            "run": {"out": str(tmp_path / "run"), "seed": 0},
            "data": {"data": str(pool), "test": str(test), "label_field": field, "task": task},
            "prompt": {"shots": [0, 2]},
            "lora": {"train_sizes": [12]},
            "eval": {"methods": methods, "latency_requests": 3},
            "cost": {"volume_per_day": 10_000},
        },
    )
    return run(
        cfg, Console(quiet=True), lambda cfg, events: FakeBackend(), lambda cfg, events: FakeEmbedder()
    )


@pytest.mark.parametrize("task", sorted(RUNS))
def test_a_fake_run_of_each_task_matches_its_golden_files(
    task: str, tmp_path: Path, fixed_clock: None
) -> None:
    folder = golden_run(task, tmp_path)
    golden = GOLDEN / task
    for name in FILES:
        text = normalised(folder / name, tmp_path)
        if os.environ.get("FEWTUNE_UPDATE_GOLDEN"):
            golden.mkdir(parents=True, exist_ok=True)
            (golden / name).write_text(text, encoding="utf-8")
        assert text == (golden / name).read_text(encoding="utf-8"), (
            f"{task}/{name} changed; re-run with FEWTUNE_UPDATE_GOLDEN=1 if intended"
        )
