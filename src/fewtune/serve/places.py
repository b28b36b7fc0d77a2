"""Where ``fewtune serve`` reads its model and keeps its state: never the folder it was started from.

The state folder (``--state-dir``) holds the request log (``requests.jsonl``) and the fine-tuning API's
files, jobs and adapters (``finetune/``). Its default is the run folder when serving a run, else a folder
per served model in the user's data folder (``platformdirs.user_data_dir``: ``~/.local/share/fewtune/serve/
NAME`` on Linux, ``$XDG_DATA_HOME`` honoured), so ``fewtune serve --model X`` started anywhere writes nothing
there and finds its fine-tuned models again on the next start.
"""

from __future__ import annotations

from pathlib import Path

from fewtune.errors import ConfigError

REQUEST_LOG_NAME = "requests.jsonl"
FINETUNE_DIR_NAME = "finetune"
"""The fine-tuning API's folder in the state folder."""
APP_NAME = "fewtune"


def home(given: Path | None, run_dir: Path | None, served_name: str) -> Path:
    """The state folder: ``given`` (``--state-dir``), else the run folder, else the user's data folder for
    ``served_name``; a :class:`ConfigError` if it is a file."""
    from platformdirs import user_data_dir

    folder = given or run_dir or Path(user_data_dir(APP_NAME)) / "serve" / served_name
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--state-dir {folder} is a file; give a folder")
    return folder


def served_name_of(spec: str) -> str:
    """The base model's name in requests: the built-in name, else the model folder's (or file's) name."""
    from fewtune.backends.models import DEFAULT_MODEL

    if spec == DEFAULT_MODEL:
        return spec
    path = Path(spec).expanduser()
    return path.stem if path.suffix.lower() == ".gguf" else path.resolve().name


def run_model(run_dir: Path) -> str:
    """The model a run folder ran (its config.yaml's ``model:``), or a one-line :class:`ConfigError`."""
    import yaml

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml); or serve a model with --model")
    try:
        values = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{config}: not valid YAML ({err})") from None
    model = values.get("model") if isinstance(values, dict) else None
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{config}: has no 'model:' setting")
    return model


def run_precision(run_dir: Path) -> str:
    """The ``--precision`` a run folder ran with."""
    from fewtune.config import RunConfig

    return RunConfig.load(run_dir).lora.precision
