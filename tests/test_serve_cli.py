"""``fewtune serve`` as a command: option checks (one-line errors), and a real server process that
SIGTERM stops."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from servers import free_port, make_adapter
from tiny import tiny_tokenizer

from fewtune.cli import commands as cli
from fewtune.errors import ConfigError, ModelError
from fewtune.serve.launch import settings_from_cli

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - the openai client pulls in one of them
    import httpx  # type: ignore[no-redef]


def test_cli_settings_need_a_key_and_refuse_no_auth_off_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FEWTUNE_API_KEY", raising=False)
    for args, message in (
        (["--model", "m", "--no-auth", "--host", "0.0.0.0"], "only binds a loopback host"),
        (["--model", "m", "--no-auth", "--api-key", "k"], "contradict"),
        (["--model", "m"], "an API key is required"),
        (["--model", "m", "--api-key", "k", "--adapter", "broken"], "NAME=PATH"),
        ([str(tmp_path), "--api-key", "k"], "not a run folder"),
    ):
        monkeypatch.setattr("sys.argv", ["fewtune", "serve", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err

    common: dict[str, Any] = dict(
        adapter=[], host="127.0.0.1", port=8000, request_log=None, served_model_name=None, max_batch=4,
        batch_wait_ms=5,
    )  # fmt: skip
    assert settings_from_cli(None, model="m", api_key=None, no_auth=True, **common).api_key is None
    monkeypatch.setenv("FEWTUNE_API_KEY", "from-env")
    run = tmp_path / "run"
    (run / "adapters" / "lora-n20").mkdir(parents=True)
    (run / "adapters" / "lora-n20" / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (run / "adapters" / "lora-n20" / "adapter_model.safetensors").write_bytes(b"")
    (run / "config.yaml").write_text("model: /models/tiny-base\nseed: 0\n")
    settings = settings_from_cli(run, model=None, api_key=None, no_auth=False, **common)
    assert settings.api_key == "from-env" and settings.served_name == "tiny-base"
    assert list(settings.adapters) == ["lora-n20"] and settings.request_log == run / "requests.jsonl"
    with pytest.raises(ModelError, match="no such adapter folder"):
        settings_from_cli(None, model="m", api_key="k", no_auth=False, **{**common, "adapter": ["a=/nope"]})
    with pytest.raises(ConfigError, match="give a run folder"):
        settings_from_cli(None, model=None, api_key="k", no_auth=False, **common)


def test_the_serve_command_serves_until_sigterm(tmp_path: Path, tiny_model_dir: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    adapter = make_adapter(tiny_tokenizer(), tmp_path / "support", seed=1)
    port = free_port()
    log = tmp_path / "log.jsonl"
    command = [
        sys.executable,
        "-m",
        "fewtune.cli.commands",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--no-auth",
    ]
    command += ["--adapter", f"support={adapter}", "--port", str(port), "--request-log", str(log)]
    env = {**os.environ, "FEWTUNE_API_KEY": "", "XDG_DATA_HOME": str(tmp_path / "data")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path("src").resolve()), env.get("PYTHONPATH", "")])
    started_in = tmp_path / "started-in"  # the server writes nothing in the folder it starts from
    started_in.mkdir()
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=started_in
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180  # importing torch on a busy 2-core machine
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "fewtune serve did not start"
            time.sleep(0.2)
        names = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert names == [tiny_model_dir.name, "support"]
        body = {"model": "support", "prompt": "Input: the film is great fun\nOutput:", "max_tokens": 2}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0, output
    assert "Traceback" not in output and list(started_in.iterdir()) == []
    assert (tmp_path / "data" / "fewtune" / "serve" / tiny_model_dir.name / "finetune" / "jobs").is_dir()
    assert [json.loads(line)["endpoint"] for line in log.read_text().splitlines()] == [
        "/v1/models",
        "/v1/completions",
    ]


def test_serve_flags_come_from_the_settings_dataclass() -> None:
    """Every ServeArgs field is a `fewtune serve` flag with its docstring as help, and nothing else is."""
    from dataclasses import fields

    from typer.main import get_command

    from fewtune.cli.commands import app
    from fewtune.serve.launch import ServeArgs

    command = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    options = {opt: param for param in command.params for opt in param.opts if opt.startswith("--")}
    expected = {"--" + f.name.replace("_", "-") for f in fields(ServeArgs)}
    assert set(options) - {"--help"} == expected
    assert (
        options["--max-batch"].help
        == "Most prompts generated together in one batch (scoring, max_tokens 0, takes up to 256)."
    )
    assert options["--adapter"].multiple and options["--no-auth"].is_flag
