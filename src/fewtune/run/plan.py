"""What a run works on: its data (the user's files or the built-in set) and the checks on its plan that fail
before any model work."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from fewtune.config import DataArgs, RunConfig, default_target_modules
from fewtune.data.split import PreparedData, prepare_data
from fewtune.decide.metric import METRIC_CHOICES
from fewtune.errors import ConfigError, DataError
from fewtune.methods import Method
from fewtune.results.store import check_run_folder, default_run_dir, refuse_existing_run
from fewtune.tasks.base import CLASSIFICATION


def resolve_task(cfg: RunConfig) -> tuple[str, str | None]:
    """The run's task: ``--task``, or inferred from the target field, with why (None when given)."""
    if cfg.data.task is not None:
        return cfg.data.task, None
    from fewtune.tasks.data import infer_task

    data, _ = data_files(cfg)
    if data.lower().endswith(".csv"):
        return CLASSIFICATION, "a CSV file holds a label column"
    try:
        return infer_task(data, cfg.data.label_field)
    except DataError:  # unreadable: the classification loader names the file, line and problem
        return CLASSIFICATION, "the target field could not be read to infer the task"


@dataclass(frozen=True)
class RunPlan:
    """A run's settings resolved once, before any work: the task, the data files, the methods the task
    runs, the run folder and the adapted layers are filled in; nothing changes them afterwards."""

    cfg: RunConfig
    data: str
    test: str | None
    why: str | None
    """How the task was inferred (None: ``--task`` was given)."""

    @property
    def task(self) -> str:
        assert self.cfg.data.task is not None
        return self.cfg.data.task

    @property
    def out(self) -> Path:
        assert self.cfg.out is not None
        return Path(self.cfg.out)


def resolve_plan(cfg: RunConfig, *, overwrite: bool = False, resume: bool = False) -> RunPlan:
    """Resolve ``cfg`` into a :class:`RunPlan` (a copy: the caller's settings are left as they are), after
    the run folder's rules: an ``--out`` that is a file, or that holds a run without ``--resume`` or
    ``--overwrite``, fails in one line before the data is read."""
    from fewtune.tasks.registry import task_type

    if cfg.data.task is not None:
        task_type(cfg.data.task)  # one line naming the registered tasks when it is none of them
    if cfg.out:
        check_run_folder(cfg.out)
        if overwrite and resume:
            raise ConfigError("--resume and --overwrite exclude each other: keep the run or replace it")
        refuse_existing_run(cfg.out, overwrite, resume)
    from fewtune.tasks.data import infer_target_field

    resolved = copy.deepcopy(cfg)
    data, _ = data_files(cfg)
    resolved.data.label_field = infer_target_field(data, cfg.data.label_field, DataArgs.label_field)
    task, why = resolve_task(resolved)
    resolved.data.task = task
    open_output = task_type(task).open_output
    resolved.lora.target_modules = cfg.lora.target_modules or default_target_modules(open_output)
    resolved.out = str(cfg.out or default_run_dir())
    if not task_type(task).has_reference:  # e.g. generation: no classifier can write free text
        resolved.eval.methods = [m for m in cfg.eval.methods if m != Method.REFERENCE]
        if not resolved.eval.methods:
            raise ConfigError(
                f"--methods for {task} takes {', '.join(m.value for m in Method if m.uses_llm)}"
            )
    data, test = data_files(resolved)
    return RunPlan(resolved, data, test, why)


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
    check_hosted(cfg)
    check_shots_and_sizes(cfg, data.report.pool_size)


def check_hosted(cfg: RunConfig) -> None:
    """A run asking for hosted-ft names its fine-tuning API (``--hosted-endpoint URL#BASE_MODEL``)."""
    if Method.HOSTED_FT in cfg.eval.methods and not cfg.hosted.endpoint:
        raise ConfigError(
            "--methods hosted-ft needs --hosted-endpoint URL#BASE_MODEL, the fine-tuning API and the model "
            "to fine-tune (e.g. http://127.0.0.1:8000/v1#gemma-3-270m for a local fewtune serve)"
        )


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
