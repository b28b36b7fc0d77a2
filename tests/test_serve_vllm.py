"""``fewtune serve --engine vllm``: the ``vllm serve`` command built from the checked settings, one adapter
name per version, the key kept off the command line, and the process really handed over (to a stand-in
``vllm`` on PATH that records what it was given: vLLM itself needs a GPU)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from servers import make_adapter
from tiny import tiny_tokenizer

from fewtune.errors import ConfigError
from fewtune.files import file_sha256
from fewtune.serve.launch import settings_from_cli
from fewtune.serve.vllm import lora_rank_limit, versioned_names, vllm_command

COMMON: dict[str, Any] = dict(
    adapter=[], host="127.0.0.1", port=8123, request_log=None, served_model_name=None, max_batch=4,
    batch_wait_ms=5, api_key="secret-key", no_auth=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    tokenizer = tiny_tokenizer()
    return {
        "old": make_adapter(tokenizer, root / "v1" / "lora-n20", seed=1),
        "new": make_adapter(tokenizer, root / "v2" / "lora-n20", seed=2),
        "copy": make_adapter(tokenizer, root / "v3" / "lora-n20", seed=1),
    }


def test_each_version_of_an_adapter_gets_its_own_name(adapters: dict[str, Path]) -> None:
    names = [next(iter(versioned_names({"lora-n20": path}))) for path in adapters.values()]
    old, new, copy = names
    sha = file_sha256(adapters["old"] / "adapter_model.safetensors")
    assert old == f"lora-n20-{sha[:8]}"
    assert new != old  # retrained: a new name, so vLLM cannot answer with the weights it loaded first
    assert copy == old  # the same weights: the same name wherever they are served from


def test_rank_limit_is_the_smallest_vllm_accepts(tmp_path: Path) -> None:
    def adapter(rank: int) -> dict[str, Path]:
        folder = tmp_path / f"r{rank}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
        return {f"r{rank}": folder}

    assert lora_rank_limit(adapter(8)) == 8
    assert lora_rank_limit({**adapter(4), **adapter(9)}) == 16
    with pytest.raises(ConfigError, match="ranks up to 512"):
        lora_rank_limit(adapter(1024))


def test_command_serves_the_model_and_every_adapter(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    settings = settings_from_cli(
        None, model=str(tiny_model_dir), engine="vllm", **{**COMMON, "adapter": [f"a={adapters['old']}"]}
    )
    names = versioned_names(settings.adapters)
    command = vllm_command(settings, tiny_model_dir, names)
    assert command[:3] == ["vllm", "serve", str(tiny_model_dir)]

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert flag("--served-model-name") == tiny_model_dir.name and flag("--port") == "8123"
    assert "--enable-lora" in command and flag("--max-lora-rank") == "8" and flag("--max-loras") == "1"
    assert command[-1] == f"{next(iter(names))}={adapters['old'].resolve()}"
    assert "secret-key" not in " ".join(command)
    with pytest.raises(ConfigError, match="canary routes are fewtune's"):
        settings_from_cli(None, model="m", engine="vllm", route=["r=few-shot,lora"], **COMMON)
    with pytest.raises(ConfigError, match="--engine must be one of fewtune, vllm"):
        settings_from_cli(None, model="m", engine="tgi", **COMMON)


def _serve(args: list[str], path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path, "FEWTUNE_API_KEY": "secret-key"}
    command = [sys.executable, "-m", "fewtune", "serve", *args, "--engine", "vllm", "--port", "8123"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)


def test_serve_hands_the_process_to_vllm(
    tmp_path: Path, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    args = ["--model", str(tiny_model_dir), "--adapter", f"lora-n20={adapters['new']}"]
    bare = str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin"
    missing = _serve(args, bare)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "vLLM is not installed here" in missing.stderr and "vllm serve" in missing.stderr

    stand_in = tmp_path / "bin" / "vllm"
    stand_in.parent.mkdir()
    record = tmp_path / "record.json"
    stand_in.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'key': os.environ.get('VLLM_API_KEY'), 'pid': os.getpid()}}, "
        f"open({str(record)!r}, 'w'))\n"
    )
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    done = _serve(args, str(stand_in.parent) + os.pathsep + bare)
    assert done.returncode == 0, done.stderr
    seen = json.loads(record.read_text())
    name = next(iter(versioned_names({"lora-n20": adapters["new"]})))
    assert seen["argv"][:2] == ["serve", str(tiny_model_dir)]
    assert f"{name}={adapters['new'].resolve()}" in seen["argv"]
    assert seen["key"] == "secret-key" and "secret-key" not in " ".join(seen["argv"])
    assert f"served by vLLM as {name}\n" in done.stdout
    assert f"starting: vllm serve {tiny_model_dir}" in done.stdout  # one line, to copy as it is
