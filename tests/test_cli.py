from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fewtune import cli


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr("sys.argv", ["fewtune", *args])
    try:
        cli.main()
    except SystemExit as exit_info:
        if exit_info.code:
            raise


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from fewtune import cli; sys.argv=['fewtune','--help']\n"
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
    assert [(m["method"], m["shots"], m["train_examples"]) for m in results["methods"]] == [
        ("zero-shot", 0, 0),
        ("few-shot", 5, 0),
        ("lora", 0, 20),
        ("lora+few-shot", 5, 20),
    ]
    lora = results["methods"][2]
    assert lora["train_seconds"] > 0 and lora["adapter_bytes"] > 0 and 0 < lora["train_mfu"] < 1
    few = results["methods"][1]
    assert few["latency_ms"]["requests"] == few["latency_ms_no_prefix_cache"]["requests"] == 2
    assert (out / "adapters" / "lora-n20" / "adapter_model.safetensors").exists()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4 * 12
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
