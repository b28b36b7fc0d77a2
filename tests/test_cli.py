from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fewtune.cli import commands as cli
from fewtune.cli import options as cli_options


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr("sys.argv", ["fewtune", *args])
    try:
        cli.main()
    except SystemExit as exit_info:
        if exit_info.code:
            raise


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from fewtune.cli import commands as cli; sys.argv=['fewtune','--help']\n"
        "try:\n    cli.main()\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_end_to_end_on_a_tiny_model(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    run_cli(
        monkeypatch,
        "run",
        "--model",
        str(tiny_model_dir),
        "--max-test",
        "12",
        "--shots",
        "0,5",
        "--train-sizes",
        "20",
        "--epochs",
        "1",
        "--latency-requests",
        "2",
        "--out",
        str(out),
    )
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    # Every method by default; the reference (real all-MiniLM-L6-v2 embeddings) runs before LoRA.
    assert [(m["method"], m["name"], m["shots"], m["train_examples"]) for m in results["methods"]] == [
        ("zero-shot", "zero-shot", 0, 0),
        ("few-shot", "few-shot k=5 balanced", 5, 0),
        ("reference", "reference n=20", 0, 20),
        ("lora", "lora n=20", 0, 20),
        ("lora+few-shot", "lora+few-shot n=20 k=5 balanced", 5, 20),
    ]
    lora = results["methods"][3]
    assert lora["train_seconds"] > 0 and lora["adapter_bytes"] > 0 and 0 < lora["train_mfu"] < 1
    few = results["methods"][1]
    assert few["latency_ms"]["requests"] == few["latency_ms_no_prefix_cache"]["requests"] == 2
    assert few["demo_selection"] == "balanced" and few["accuracy_mean"] == few["accuracy"]
    reference = results["methods"][2]
    assert reference["embedding_model"] == "all-MiniLM-L6-v2" and reference["latency_ms"]["requests"] == 2
    curves = results["curves"]
    assert [(p["strategy"], p["k"]) for p in curves["shots"]] == [("balanced", 0), ("balanced", 5)]
    assert [p["n"] for p in curves["train_examples"]] == [20] and curves["crossover"]["method"] == "lora"
    assert (out / "adapters" / "lora-n20" / "adapter_model.safetensors").exists()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5 * 12
    assert (out / "config.yaml").exists()


def test_missing_model_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, "run", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no such model folder or GGUF file" in err and "Traceback" not in err


def test_broken_gguf_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    monkeypatch.setenv("FEWTUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit):
        run_cli(monkeypatch, "run", "--model", str(broken), "--out", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert "could not load GGUF model" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "value, expected",
    [
        ("DESC=description, NUM=number", {"DESC": "description", "NUM": "number"}),
        ("auto", "auto"),
        (None, None),
        ("0=very negative", {"0": "very negative"}),
    ],
)
def test_label_names_option_parses_code_name_pairs(value: str | None, expected: object) -> None:
    assert cli_options.label_names(value) == expected


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--label-names", "DESC"], "--label-names takes CODE=name pairs"),
        (["--label-names", "NOPE=nope"], "NOPE is not a label of the data"),
        (["--demo-selection", "random,best"], "--demo-selection takes one or more of"),
        (["--demo-seeds", "0"], "--demo-seeds must be at least 1"),
    ],
)
def test_prompt_option_errors_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, "run", *flags, "--out", str(tmp_path / "r"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_setting_has_a_flag_with_help_and_flags_are_unique() -> None:
    from dataclasses import fields

    from fewtune.config import _SECTIONS, RunConfig

    options = cli_options.setting_options()
    flags = [flag for *_, flag, _parameter, _convert in options]
    assert len(flags) == len(set(flags))
    covered = {(section, name) for section, name, *_ in options}
    expected = {("run", f.name) for f in fields(RunConfig) if f.name not in _SECTIONS}
    expected |= {(s, f.name) for s, cls in _SECTIONS.items() for f in fields(cls)}
    assert covered == expected - cli_options.NO_FLAG
    docs = {s: cli_options.field_docs(cls) for s, cls in {"run": RunConfig, **_SECTIONS}.items()}
    assert all(docs[section].get(name) for section, name, *_ in options)


def test_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(cfg: Any, console: Any, overwrite: bool = False, resume: bool = False) -> None:
        seen["cfg"] = cfg

    monkeypatch.setattr("fewtune.cli.runner.run", fake_run)
    run_cli(
        monkeypatch,
        "run",
        "--shots",
        "0,4",
        "--lora-r",
        "4",
        "--eval-batch-size",
        "3",
        "--target-field",
        "slots",
        "--constrained",
        "--label-names",
        "A=alpha",
        "--task",
        "extraction",
    )
    cfg = seen["cfg"]
    assert cfg.prompt.shots == [0, 4] and cfg.lora.r == 4 and cfg.eval.batch_size == 3
    assert cfg.data.label_field == "slots" and cfg.eval.constrained and cfg.data.task == "extraction"
    assert cfg.prompt.label_names == {"A": "alpha"}


def test_the_metric_help_names_every_tasks_own_metrics() -> None:
    from fewtune.config import CostArgs
    from fewtune.tasks.registry import TASK_TYPES

    help_text = cli_options.field_docs(CostArgs)["metric"]
    for kind in TASK_TYPES:
        assert kind.name in help_text and all(metric in help_text for metric in kind.metric_choices)
