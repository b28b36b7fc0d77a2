"""A multi-label run end to end on the tiny model: inferred from a ``labels`` list field, every method
(zero-shot, k-shot, the one-vs-rest reference, LoRA, LoRA+k-shot), every metric, a verdict and a report
with the per-label table. The task's own tests are in test_task_multilabel.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_jsonl
from rich.console import Console
from task_helpers import SEED, one_torch_thread  # noqa: F401 (one_torch_thread is an autouse fixture)
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.hf import HFBackend
from fewtune.config import RunConfig, build_config
from fewtune.embeddings import FakeEmbedder
from fewtune.results.run_folder import read_analysed

LABELS = ("billing", "refund", "login", "shipping")


def rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + count):
        tags = [LABELS[i % 4]] + ([LABELS[(i + 1) % 4]] if i % 3 == 0 else [])
        out.append({"text": f"ticket {i} about {' and '.join(tags)}", "labels": tags})
    return out


def test_a_multi_label_run_is_inferred_and_runs_every_method(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fewtune.cli.runner import run

    monkeypatch.setattr("fewtune.training.lora.matmul_peak_flops", lambda *a, **k: 1e12)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows(16))
    test = write_jsonl(tmp_path / "test.jsonl", rows(6, start=50))
    cfg: RunConfig = build_config(
        None,
        {
            "run": {"out": str(tmp_path / "run")},
            "data": {"data": str(pool), "test": str(test)},  # no --task, no --target-field
            "prompt": {"shots": [0, 2], "demo_selection": ["random"]},
            "lora": {"train_sizes": [8], "epochs": 1, "batch_size": 4},
            "eval": {"latency_requests": 1},
        },
    )
    tokenizer = tiny_tokenizer()

    def backend(cfg: RunConfig, events: Any) -> HFBackend:
        return HFBackend(
            tiny_model(tokenizer, seed=SEED, sliding_window=512), tokenizer, source=str(tiny_model_dir)
        )

    folder = run(cfg, Console(quiet=True), backend, lambda cfg, events: FakeEmbedder(dim=64))
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["task"]["name"] == "multi-label" and results["task"]["primary_metric"] == "micro-f1"
    assert results["task"]["labels"] == sorted(LABELS)
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["data"]["label_field"] == "labels" and saved["data"]["task"] == "multi-label"
    names = [m["name"] for m in results["methods"]]
    assert names == [
        "zero-shot",
        "few-shot k=2 random",
        "reference n=8",
        "lora n=8",
        "lora+few-shot n=8 k=2 random",
    ]
    wanted = {
        "micro_f1",
        "macro_f1",
        "example_f1",
        "exact_match",
        "hamming_loss",
        "micro_precision",
        "micro_recall",
    }
    for row in results["methods"]:
        assert wanted <= set(row["metrics"]), row["name"]
        assert set(row["per_label"]) >= set(LABELS) and row["primary"]["name"] == "micro-f1"
    # The data checks count examples per label, pool and test.
    counts = results["dataset"]["summary"]["pool"]["label_counts"]
    assert sum(counts.values()) == sum(len(r["labels"]) for r in rows(16))
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == (len(names) + 1) * 6  # and the floor's rows
    assert results["floor"]["output"].startswith(("the pool's most common output", "the input copied"))
    reference = [json.loads(line) for line in lines if json.loads(line)["name"] == "reference n=8"]
    assert all(p["parsed"] is not None for p in reference)  # the reference always names known labels
    analysed = read_analysed(folder)
    assert analysed["recommendation"]["headline"]
    report = (folder / "report.md").read_text()
    assert "## Per label:" in report and "micro-F1" in report
    assert 'id="per-label"' in (folder / "report.html").read_text()


def cli_run_on_the_fake_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *flags: str) -> Path:
    """``fewtune run --task multi-label FLAGS`` through the CLI's entry point, on the fake backend."""
    from fewtune.backends.fake import FakeBackend
    from fewtune.cli import commands as cli
    from fewtune.cli import runner

    real_run = runner.run

    def fake_run(cfg: RunConfig, console: Any, overwrite: bool = False, resume: bool = False) -> Path:
        return real_run(
            cfg, console, lambda c, e: FakeBackend(), lambda c, e: FakeEmbedder(dim=64), overwrite, resume
        )

    monkeypatch.setattr("fewtune.cli.runner.run", fake_run)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows(16))
    test = write_jsonl(tmp_path / "test.jsonl", rows(6, start=50))
    out = tmp_path / "run"
    data = ["--data", str(pool), "--test", str(test), "--task", "multi-label"]
    methods = ["--methods", "zero-shot,few-shot", "--shots", "0,2"]
    monkeypatch.setattr("sys.argv", ["fewtune", "run", *data, *methods, "--out", str(out), *flags])
    try:
        cli.main()
    except SystemExit as exit_info:
        if exit_info.code:
            raise
    return out


@pytest.mark.parametrize("metric", ["micro-f1", "example-f1"])
def test_the_cli_decides_a_multi_label_run_on_the_metric_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metric: str
) -> None:
    folder = cli_run_on_the_fake_backend(monkeypatch, tmp_path, "--metric", metric)
    analysed = read_analysed(folder)
    assert analysed["status"] == "complete" and analysed["task"]["primary_metric"] == metric
    assert analysed["recommendation"]["metric"] == metric
    assert all(row["primary"]["name"] == metric for row in analysed["methods"])


def test_the_cli_refuses_a_metric_of_another_task_in_one_line_naming_the_tasks_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_run_on_the_fake_backend(monkeypatch, tmp_path, "--metric", "accuracy")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--metric for multi-label takes micro-f1, macro-f1, example-f1, got 'accuracy'" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "results.json").exists()


def test_the_report_checks_its_metric_against_the_runs_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fewtune.cli import commands as cli

    folder = cli_run_on_the_fake_backend(monkeypatch, tmp_path)
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["fewtune", "report", str(folder), "--metric", "accuracy"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--metric for multi-label takes micro-f1, macro-f1, example-f1, got 'accuracy'" in err
    assert "Traceback" not in err
