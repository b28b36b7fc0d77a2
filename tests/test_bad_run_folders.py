"""Bad run folders and data that looks like terminal markup: a damaged or hand-edited results.json, and
labels, paths or names holding ``[...]``, get the same one-line error as any bad input (harness:
bad_input_cases.py), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bad_input_cases import GOOD, Case, check_one_line


def a_run(**changes: Any) -> str:
    """A finished classification run's results.json with one row changed (``field=value``; ``None`` removes
    the field), or a top-level field when the name starts with ``top_``."""
    row: dict[str, Any] = {
        "method": "few-shot",
        "name": "few-shot k=2 balanced",
        "shots": 2,
        "train_examples": None,
        "accuracy": 0.75,
        "accuracy_ci95": [0.5, 1.0],
        "macro_f1": 0.7,
        "latency_ms": {"p50": 10.0, "p95": 12.0, "mean": 10.5, "requests": 4},
    }
    results: dict[str, Any] = {"schema_version": 2, "status": "complete", "seed": 0, "methods": [row]}
    for key, value in changes.items():
        target, name = (results, key[4:]) if key.startswith("top_") else (row, key)
        if value is None:
            target.pop(name)
        else:
            target[name] = value
    return json.dumps(results)


REPORT = ["report", "{dir}/run"]
ROW = "{dir}/run/results.json: method row 'few-shot k=2 balanced'"

CASES: list[Case] = [
    Case("report: no results.json", {"run/x.txt": "x"}, ["report", "{dir}/run"], "no results.json here"),
    Case(
        "report: malformed results.json",
        {"run/results.json": "{oops"},
        ["report", "{dir}/run"],
        "{dir}/run/results.json:1: malformed JSON",
    ),
    Case(
        "report: a newer schema",
        {"run/results.json": json.dumps({"schema_version": 9, "methods": [{"method": "lora"}]})},
        ["report", "{dir}/run"],
        "schema_version 9 is newer",
    ),
    Case(
        "report: an unknown method",
        {"run/results.json": json.dumps({"methods": [{"method": "magic"}]})},
        ["report", "{dir}/run"],
        "unknown method 'magic'",
    ),
    Case(
        "report: no finished methods",
        {"run/results.json": json.dumps({"methods": []})},
        ["report", "{dir}/run"],
        "no finished methods to report yet",
    ),
    Case(
        "report: a results.json that is a list",
        {"run/results.json": "[]"},
        ["report", "{dir}/run"],
        "expected a JSON object",
    ),
    Case(
        "report: malformed predictions",
        {
            "run/results.json": json.dumps(
                {
                    "methods": [
                        {"method": "lora", "name": "lora n=2", "accuracy": 1.0, "accuracy_ci95": [1.0, 1.0]}
                    ]
                }
            ),
            "run/predictions.jsonl": "{oops\n",
        },
        ["report", "{dir}/run"],
        "predictions.jsonl:1: malformed JSON",
    ),
    Case("report: a row without accuracy", {"run/results.json": a_run(accuracy=None)}, REPORT,
         f"{ROW} has no 'accuracy' (a classification row always does)"),
    Case("report: accuracy that is a word", {"run/results.json": a_run(accuracy="high")}, REPORT,
         f"{ROW}: accuracy: Input should be a valid number"),
    Case("report: an interval of one number", {"run/results.json": a_run(accuracy_ci95=[0.5])}, REPORT,
         f"{ROW}: accuracy_ci95: an interval is [low, high] with low <= high, got [0.5]"),
    Case("report: an interval upside down", {"run/results.json": a_run(accuracy_ci95=[0.9, 0.1])}, REPORT,
         f"{ROW}: accuracy_ci95: an interval is [low, high]"),
    Case("report: latency that is not an object", {"run/results.json": a_run(latency_ms=[1, 2])}, REPORT,
         f"{ROW}: latency_ms: Input should be a valid dictionary"),
    Case("report: shots that are a word", {"run/results.json": a_run(shots="two")}, REPORT,
         f"{ROW}: shots: Input should be a valid integer"),
    Case("report: hardware that is a number", {"run/results.json": a_run(top_hardware=5)}, REPORT,
         "{dir}/run/results.json: hardware: Input should be a valid dictionary"),
    Case("report: a seed that is a word", {"run/results.json": a_run(top_seed="x")}, REPORT,
         "{dir}/run/results.json: seed: Input should be a valid integer"),
    Case("report: a task that is a string", {"run/results.json": a_run(top_task="classification")}, REPORT,
         "{dir}/run/results.json: task: Input should be a valid dictionary"),
    # rich reads "[/]" as a closing tag: printed as markup, the one-line error became a MarkupError traceback
    Case("option: --label-names naming '[/]'", {"good.jsonl": GOOD},
         ["run", "--data", "{dir}/good.jsonl", "--train-sizes", "4", "--label-names", "[/]=x"],
         "--label-names: [/] is not a label"),
    Case("option: --label-names naming '[bold]'", {"good.jsonl": GOOD},
         ["run", "--data", "{dir}/good.jsonl", "--train-sizes", "4", "--label-names", "[bold]=x"],
         "--label-names: [bold] is not a label"),
    Case("data: a folder whose name is markup", {"[red]x[/]/x.txt": "x"},
         ["run", "--data", "{dir}/[red]x[/]"], "{dir}/[red]x[/]: is a folder"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_run_folder_is_one_line(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check_one_line(case, tmp_path, monkeypatch, capsys)


def test_a_finished_run_reads_back_as_written() -> None:
    """The checks refuse only what is wrong: the well-formed record above reads without complaint."""
    from fewtune.results.run_record import RunRecord

    record = RunRecord.from_dict(json.loads(a_run()))
    assert record.methods[0].metrics["accuracy"]["value"] == 0.75
