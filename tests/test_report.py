"""`fewtune report`: results.json fields, report.md against a golden file, a self-contained report.html, and
the report written at the end of `fewtune run` (report.html in a browser: test_report_html.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_jsonl
from gate_helpers import fewtune
from rich.console import Console

from fewtune.backends.fake import FakeBackend
from fewtune.cli.runner import run
from fewtune.config import CostArgs, build_config
from fewtune.metrics import classification_metrics
from fewtune.report.build import PLOT_FILES, REPORT_HTML, REPORT_MD, write_reports
from fewtune.results.run_folder import read_analysed, read_run

GOLDEN = Path(__file__).parent / "golden"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LABELS = ["bad", "good", "meh"]
TEST_ROWS = 60

# (method, name, shots, train examples, rows right, p50 ms, p95 ms, prompt tokens, rows/s, train s)
METHODS = [
    ("zero-shot", "zero-shot", 0, 0, 30, 100.0, 120.0, 50.0, 20.0, None),
    ("few-shot", "few-shot k=5", 5, 0, 36, 300.0, 330.0, 250.0, 4.0, None),
    ("lora", "lora n=100", 0, 100, 54, 95.0, 110.0, 50.0, 21.0, 60.0),
    ("lora+few-shot", "lora+few-shot n=100 k=5", 5, 100, 53, 290.0, 320.0, 250.0, 4.2, 60.0),
]


def write_legacy_run(folder: Path) -> Path:
    """A run folder as `fewtune run` wrote it before costs existed: results.json, predictions, config.yaml.

    Every method is right on the first N rows, so fine-tuning's lead over few-shot (18 rows of 60, all
    discordant one way) is shown to be more than 15 points (95% CI about +18 to +42).
    """
    folder.mkdir(parents=True, exist_ok=True)
    gold = [LABELS[i % 3] for i in range(TEST_ROWS)]
    rows: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    for method, name, shots, train, right, p50, p95, tokens, throughput, train_s in METHODS:
        predicted = [g if i < right else LABELS[(LABELS.index(g) + 1) % 3] for i, g in enumerate(gold)]
        row = {
            "method": method,
            "name": name,
            "shots": shots,
            "train_examples": train,
            "demo_selection": "balanced" if shots else None,
            **classification_metrics(gold, predicted, LABELS),
            "latency_ms": {"p50": p50, "p95": p95, "mean": (p50 + p95) / 2, "requests": 20},
            "prompt_tokens_mean": tokens,
            "output_tokens_mean": 1.0,
            "throughput_rows_per_second": throughput,
            "scoring_seconds": TEST_ROWS / throughput,
            "train_seconds": train_s,
            "demos": [],
        }
        if train:
            row.update(
                train_tokens_per_second=200.0,
                train_steps=25,
                adapter_path=str(folder / "adapters" / f"lora-n{train}"),
                adapter_bytes=2_967_872,
                peak_memory_bytes=10**9,
            )
        rows.append(row)
        predictions += [
            {
                "method": method,
                "name": name,
                "shots": shots,
                "train_examples": train,
                "row": i,
                "text": f"t{i}",
                "gold": g,
                "predicted": p,
                "correct": g == p,
                "score": -1.0,
                "scores": {},
            }
            for i, (g, p) in enumerate(zip(gold, predicted, strict=True))
        ]
    results = {
        "fewtune_version": "0.1.0",
        "status": "complete",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:05:00+00:00",
        "model": "gemma-3-270m",
        "seed": 0,
        "dataset": {
            "pool_size": 400,
            "test_size": TEST_ROWS,
            "label_counts": {"pool": {"bad": 140, "good": 130, "meh": 130}, "test": {k: 20 for k in LABELS}},
            "duplicates_removed": 3,
            "conflicting_labels": 1,
            "leaks_removed": 2,
            "test_source": "test.jsonl",
            "warnings": [],
        },
        "labels": LABELS,
        "hardware": {"platform": "Linux", "cpu_count": 2, "backend": "gemma-3-270m", "device": "cpu"},
        "methods": rows,
    }
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    write_jsonl(folder / "predictions.jsonl", predictions)
    return folder


@pytest.fixture
def legacy_run(tmp_path: Path) -> Path:
    return write_legacy_run(tmp_path / "run")


def test_report_writes_costs_and_recommendation_beside_an_old_results_json(legacy_run: Path) -> None:
    recorded = (legacy_run / "results.json").read_bytes()
    report, written = write_reports(legacy_run, CostArgs(volume_per_day=50_000))
    assert (legacy_run / "results.json").read_bytes() == recorded  # the run's record is never changed
    # Two shot counts make a shot curve; one LoRA size is no training curve, so report-train.png is not drawn.
    drawn = [file for key, file in PLOT_FILES.items() if key != "train"]
    assert {p.name for p in written} == {REPORT_MD, REPORT_HTML, *drawn}
    results = read_analysed(legacy_run)
    for row in results["methods"]:
        assert set(row["costs"]) >= {"setup", "per_request", "total_at_horizon"}
        assert row["costs"]["total_at_horizon"] == pytest.approx(
            row["costs"]["setup"] + row["costs"]["per_request"] * 50_000 * 365
        )
    # few-shot k=5 vs lora n=100: (40 h x $95 + 100 x $0.10 + 60 s at $0.08925/h) - 8 h x $95 extra setup,
    # over $0.08925/3600 x (1/4 - 1/21) saved per request.
    saving = 0.08925 / 3600 * (1 / 4 - 1 / 21)
    extra = 40 * 95 + 100 * 0.10 + 60 / 3600 * 0.08925 - 8 * 95
    assert results["break_even_requests"] == pytest.approx(extra / saving)
    assert results["break_even"]["prompting"] == "few-shot k=5"
    assert results["break_even"]["fine_tuned"] == "lora n=100"
    assumptions = results["cost_assumptions"]
    assert assumptions["volume_per_day"] == 50_000 and assumptions["horizon_days"] == 365
    assert assumptions["prices"]["engineer_dollars_per_hour"]["value"] == 95
    recommendation = results["recommendation"]
    # Fine-tuning is shown more than 15 points ahead: fine-tune at any volume, with the cost stated.
    assert recommendation["choice"] == "fine-tune" and recommendation["method"] == "lora n=100"
    assert any(r.startswith("cost at 50,000 calls/day") for r in recommendation["reasons"])
    # The best of 2 prompt rows against the best of 2 fine-tuned rows, picked on the same test rows.
    assert (
        recommendation["metric"] == "accuracy" and recommendation["comparison"]["test"] == "max-t bootstrap"
    )
    assert recommendation["comparison"]["candidates"] == 4
    # The report says how the compared pair was chosen and what the test allowed for.
    assert any("best of 2 x 2 rows on the same test rows" in c for c in recommendation["caveats"])
    assert all(
        row["primary"]["metric"] == "accuracy" and row["degenerate"] is None for row in results["methods"]
    )
    assert report.focus.name == "lora n=100"


def test_the_analysis_builds_its_own_record_and_leaves_the_one_it_read_unchanged(
    legacy_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    from fewtune.report import analysis

    read: list[dict[str, Any]] = []

    def remember(folder: Path) -> Any:
        results, predictions = read_run(folder)
        read.extend([results, copy.deepcopy(results)])
        return results, predictions

    monkeypatch.setattr(analysis, "read_run", remember)
    report = analysis.analyse(legacy_run, CostArgs(volume_per_day=50_000))
    assert read[0] == read[1]  # not a key added, not a row changed
    assert all(row.costs is not None and row.primary for row in report.methods)
    assert report.results["recommendation"]["method"] == report.focus.name


def test_report_markdown_matches_golden(legacy_run: Path) -> None:
    write_reports(legacy_run, CostArgs(volume_per_day=50_000))
    text = (legacy_run / REPORT_MD).read_text()
    golden = GOLDEN / "report.md"
    if os.environ.get("FEWTUNE_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), "report.md changed; re-run with FEWTUNE_UPDATE_GOLDEN=1 if intended"


def test_report_html_is_self_contained(legacy_run: Path) -> None:
    write_reports(legacy_run, CostArgs(volume_per_day=50_000))
    html = (legacy_run / REPORT_HTML).read_text()
    assert "<script" not in html
    assert not re.findall(r'(?:src|href)="(?!data:)', html), "every src/href must be inline data"
    assert html.count('src="data:image/png;base64,') == len(PLOT_FILES) - 1  # no training curve
    assert html.index('id="recommendation"') < html.index('id="methods"')


SAVED_VOLUME_CASES = [
    # (config.yaml cost section, command-line flags, expected choice)
    ({"volume_per_day": 200_000}, [], "fine-tune"),
    ({"gap": "knowledge"}, ["--volume-per-day", "50000"], "retrieval"),
    ({"gap": "knowledge"}, ["--gap", "behaviour"], "fine-tune"),
    ({}, ["--gap", "knowledge"], "retrieval"),
    ({}, ["--volume-per-day", "150000", "--costs", "hosted-api"], "fine-tune"),
]


@pytest.mark.parametrize("saved, flags, choice", SAVED_VOLUME_CASES)
def test_cli_report_uses_saved_settings_and_flags(
    legacy_run: Path, monkeypatch: pytest.MonkeyPatch, saved: dict, flags: list[str], choice: str
) -> None:
    (legacy_run / "config.yaml").write_text(yaml.safe_dump({"model": "gemma-3-270m", "cost": saved}))
    assert fewtune(monkeypatch, "report", str(legacy_run), *flags) == 0
    assert read_analysed(legacy_run)["recommendation"]["choice"] == choice


ERROR_CASES = [
    # (make the folder, flags, fragment of the one-line error)
    ("empty", [], "no results.json here"),
    ("run", ["--gap", "facts"], "--gap must be knowledge or behaviour"),
    ("run", ["--costs", "missing.yaml"], "price table not found"),
    ("run", ["--horizon-days", "0"], "--horizon-days must be at least 1"),
]


@pytest.mark.parametrize("kind, flags, message", ERROR_CASES)
def test_cli_report_errors_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    flags: list[str],
    message: str,
) -> None:
    folder = write_legacy_run(tmp_path / "run") if kind == "run" else tmp_path
    monkeypatch.chdir(tmp_path)
    assert fewtune(monkeypatch, "report", str(folder), *flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_fewtune_run_writes_the_report(tmp_path: Path) -> None:
    rows = [{"text": f"this is {w} number {i}", "label": w} for i in range(12) for w in ("good", "bad")]
    test = [{"text": f"quite {w} indeed {i}", "label": w} for i in range(5) for w in ("good", "bad")]
    cfg = build_config(
        None,
        {
            "run": {"out": str(tmp_path / "run")},
            "data": {
                "data": str(write_jsonl(tmp_path / "pool.jsonl", rows)),
                "test": str(write_jsonl(tmp_path / "test.jsonl", test)),
            },
            "eval": {"methods": ["zero-shot", "few-shot"], "latency_requests": 2},
            "prompt": {"shots": [0, 5]},
            "cost": {"volume_per_day": 50_000},
        },
    )
    folder = run(cfg, Console(quiet=True), lambda cfg, console: FakeBackend())
    results = read_analysed(folder)
    assert results["recommendation"]["choice"] == "prompt"
    assert results["break_even_requests"] is None  # no fine-tuned method
    assert all("costs" in row for row in results["methods"])
    assert (folder / REPORT_HTML).is_file() and (folder / REPORT_MD).is_file()
    assert yaml.safe_load((folder / "config.yaml").read_text())["cost"]["volume_per_day"] == 50_000


@pytest.mark.parametrize(
    "selection, method, train, fragment",
    [
        ("balanced", "few-shot", 0, "label list and the 8 demos in results.json"),
        ("nearest", "few-shot", 0, "the demo pool and the sentence embedding model"),
        ("nearest", "lora+few-shot", 100, "and the demo pool and embedding model;"),
    ],
)
def test_rollout_says_what_to_freeze_for_each_demo_selection(
    selection: str, method: str, train: int, fragment: str
) -> None:
    from fewtune.decide.cost import MethodCost
    from fewtune.report.rollout import rollout_plan
    from fewtune.results.rows import Row

    row = {
        "method": method,
        "name": "m",
        "shots": 8,
        "train_examples": train,
        "demo_selection": selection,
        "accuracy": 0.9,
        "accuracy_ci95": [0.85, 0.95],
        "latency_ms": {"p95": 100.0},
    }
    plan = rollout_plan(Row(row), MethodCost(1.0, 0.001), 300, chosen=True)
    assert fragment in plan.checks[0]


def test_analysis_json_is_whole_for_a_folder_whose_results_json_an_older_report_filled(
    legacy_run: Path,
) -> None:
    """Reports before analysis.json wrote their fields into results.json; a new one still writes them all."""
    write_reports(legacy_run, CostArgs(volume_per_day=50_000))
    (legacy_run / "results.json").write_text(
        json.dumps(read_analysed(legacy_run))
    )  # as an old report left it
    write_reports(legacy_run, CostArgs(volume_per_day=50_000))
    analysis = json.loads((legacy_run / "analysis.json").read_text())
    assert analysis["recommendation"]["choice"] == "fine-tune" and "cost_assumptions" in analysis
    assert all("costs" in row for row in analysis["methods"].values()) and len(analysis["methods"]) == 4
