"""``fewtune serve --engine vllm``: the same model and adapters served by vLLM, where one machine's
fewtune server is not enough.

fewtune does not wrap vLLM: it builds the ``vllm serve`` command from the checked settings and hands the
process over to it (``exec``), so vLLM's own options, logs and signals are what the operator sees. Each
adapter is served as ``NAME-SHA8``, the first 8 hex digits of its weights file's sha256 (the
``adapter_sha256`` the run registry records): vLLM keys a loaded LoRA by its name, so a retrained adapter
served under its old name could answer with the old weights, and a canary between two versions of
``lora-n200`` needs two names. The base model keeps its served name.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from fewtune.errors import ConfigError
from fewtune.files import file_sha256
from fewtune.serve.adapters import ADAPTER_FILES, adapter_rank
from fewtune.serve.launch import ServeSettings

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``--max-lora-rank`` values vLLM accepts (``vllm.config.lora.MaxLoRARanks``)."""
CONFIG, WEIGHTS = ADAPTER_FILES  # the files fewtune checks an adapter folder for


def versioned_names(adapters: dict[str, Path]) -> dict[str, Path]:
    """Each adapter under ``NAME-SHA8`` of its weights (two versions of one name get two names)."""
    return {f"{name}-{file_sha256(path / WEIGHTS)[:8]}": path for name, path in adapters.items()}


def lora_rank_limit(adapters: dict[str, Path]) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds every adapter's rank."""
    highest = max((adapter_rank(path / CONFIG) for path in adapters.values()), default=1)
    for rank in VLLM_RANKS:
        if rank >= highest:
            return rank
    limit = VLLM_RANKS[-1]
    raise ConfigError(f"--engine vllm: an adapter has rank {highest}; vLLM serves ranks up to {limit}")


def vllm_command(settings: ServeSettings, model_folder: Path, names: dict[str, Path]) -> list[str]:
    """The ``vllm serve`` command line for ``settings`` (the API key goes in the environment, not here)."""
    command = [
        "vllm",
        "serve",
        str(model_folder),
        "--served-model-name",
        settings.served_name,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
    ]
    if names:
        command += ["--enable-lora", "--max-loras", str(len(names))]
        command += ["--max-lora-rank", str(lora_rank_limit(names)), "--lora-modules"]
        command += [f"{name}={path.resolve()}" for name, path in names.items()]
    return command


def exec_vllm(settings: ServeSettings, say: Callable[[str], None] = print) -> None:
    """Replace this process with ``vllm serve`` (returns only by raising a one-line :class:`ConfigError`)."""
    from fewtune.backends.models import resolve_model

    names = versioned_names(settings.adapters)
    folder = resolve_model(settings.model)
    command = vllm_command(settings, folder, names)
    executable = shutil.which("vllm")
    if executable is None:
        raise ConfigError(
            "--engine vllm: vLLM is not installed here (pip install vllm, on a machine with a supported "
            f"GPU); the command would be: {shlex.join(command)}"
        )
    environment = dict(os.environ)
    if settings.api_key:
        environment["VLLM_API_KEY"] = settings.api_key  # not on the command line, where ps shows it
    else:
        environment.pop("VLLM_API_KEY", None)
    for name, path in names.items():
        say(f"adapter {path} served by vLLM as {name}")
    say(f"starting: {shlex.join(command)}")
    sys.stdout.flush()  # exec replaces the process: what is still buffered would be lost
    os.execvpe(executable, command, environment)
