"""What a run works on: its data (the user's files or the built-in set) and the checks on its plan that fail
before any model work."""

from __future__ import annotations

from importlib.resources import files

from fewtune.config import RunConfig
from fewtune.data.split import PreparedData, prepare_data
from fewtune.decide.metric import METRIC_CHOICES
from fewtune.errors import ConfigError, DataError
from fewtune.methods import Method
from fewtune.tasks.base import CLASSIFICATION


def resolve_task(cfg: RunConfig) -> str | None:
    """Set ``cfg.data.task`` when it was not given (inferred from the target field); return why, or None."""
    if cfg.data.task is not None:
        return None
    from fewtune.tasks.data import infer_task

    data, _ = data_files(cfg)
    if data.lower().endswith(".csv"):
        cfg.data.task = CLASSIFICATION
        return "a CSV file holds a label column"
    try:
        cfg.data.task, why = infer_task(data, cfg.data.label_field)
    except DataError:  # unreadable: the classification loader names the file, line and problem
        cfg.data.task = CLASSIFICATION
        return "the target field could not be read to infer the task"
    return why


BUILTIN_DATASET = "support"


def builtin_dataset_files(name: str = BUILTIN_DATASET) -> tuple[str, str]:
    folder = files("fewtune").joinpath("datasets", name)
    return str(folder.joinpath("train.jsonl")), str(folder.joinpath("test.jsonl"))


def data_files(cfg: RunConfig) -> tuple[str, str | None]:
    """The pool file and the test file (None: a split of the pool) the run reads."""
    data, test = cfg.data.data, cfg.data.test
    if data is None:
        data, builtin_test = builtin_dataset_files()
        test = test or builtin_test
    return data, test


def load_data(cfg: RunConfig) -> PreparedData:
    data, test = data_files(cfg)
    return prepare_data(
        data,
        test,
        input_field=cfg.data.input_field,
        label_field=cfg.data.label_field,
        max_test=cfg.data.max_test,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.seed,
    )


def check_plan(cfg: RunConfig, data: PreparedData) -> None:
    if cfg.cost.metric is not None and cfg.cost.metric not in METRIC_CHOICES:
        raise ConfigError(f"--metric for classification takes {' or '.join(METRIC_CHOICES)}")
    for option, value in (("--schema", cfg.data.schema), ("--constrained", cfg.eval.constrained or None)):
        if value is not None:
            raise ConfigError(f"{option} applies to --task extraction, not classification")
    if cfg.eval.label_scoring == "generate" and cfg.prompt.calibrate:
        raise ConfigError(
            "--calibrate needs label log-likelihoods; it does not apply to --label-scoring generate"
        )
    check_shots_and_sizes(cfg, data.report.pool_size)


def check_shots_and_sizes(cfg: RunConfig, pool: int) -> None:
    """Shot counts and training sizes the pool can serve (every task)."""
    methods, shots = cfg.eval.methods, [k for k in cfg.prompt.shots if k > 0]
    for method in methods:
        if Method(method).uses_demos and not shots:
            raise ConfigError(f"{method} needs a shot count above 0 in --shots (got {cfg.prompt.shots})")
    if shots and max(shots) > pool:
        raise ConfigError(f"--shots {max(shots)} is more than the {pool} examples in the pool")
    if any(Method(m).trained for m in methods):
        too_big = [n for n in cfg.lora.train_sizes if n > pool]
        if too_big:
            raise ConfigError(
                f"--train-sizes {too_big[0]} is more than the {pool} examples left in the pool "
                "after removing duplicates and test leaks"
            )
