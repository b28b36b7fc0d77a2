"""Run settings as documented dataclasses, validated once (after peft's LoraConfig and litgpt's args).

Precedence: command line > ``--config FILE`` (YAML, same shape as a run's ``config.yaml``) > these defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fewtune.backends.models import DEFAULT_MODEL
from fewtune.backends.precision import PRECISIONS
from fewtune.config_yaml import _coerce as _coerce
from fewtune.config_yaml import load_config_file as load_config_file
from fewtune.config_yaml import read_yaml as read_yaml
from fewtune.errors import ConfigError
from fewtune.methods import ALL_METHODS, DEFAULT_METHODS
from fewtune.prompts.demos import DEMO_DRAWS, DEMO_SELECTIONS
from fewtune.prompts.template import AUTO_LABEL_NAMES

METHODS = ALL_METHODS
CONFIG_FILE = "config.yaml"
"""A run folder's resolved settings, as :meth:`RunConfig.save` wrote them."""
CLASS_BALANCE = ("none", "loss", "sampling")
QUANTIZE = ("none", "nf4")
KSHOT_TRAINING = ("demos", "plain", "both")
LABEL_SCORING = ("loglik", "generate")


@dataclass
class DataArgs:
    data: str | None = None
    """Pool file (JSONL, chat JSONL or CSV) for demos and training rows; None = the built-in dataset."""
    test: str | None = None
    """Held-out test file; without it a seeded stratified split of ``data`` is held out."""
    input_field: str = "text"
    """Field (JSONL) or column (CSV) holding the input text."""
    label_field: str = "label"
    """Field or column holding the label."""
    max_test: int | None = None
    """Score a seeded stratified sample of this many test rows."""
    test_fraction: float = 0.2
    """Share of ``data`` held out when no ``test`` file is given."""
    task: str | None = None
    """classification, multi-label, extraction or generation; None = inferred from the target field and
    recorded."""
    schema: str | None = None
    """JSON Schema file for extraction outputs; None = inferred from the pool's targets."""

    def __post_init__(self) -> None:
        # ``task`` is checked against the task registry when the plan is resolved (plan.resolve_plan).
        if self.max_test is not None and self.max_test < 1:
            raise ConfigError(f"--max-test must be at least 1, got {self.max_test}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must be between 0 and 1, got {self.test_fraction}")


@dataclass
class PromptArgs:
    shots: list[int] = field(default_factory=lambda: [0, 5])
    """Demos per prompt; 0 is zero-shot. The guides say to try at least 5 before fine-tuning."""
    demo_selection: list[str] = field(default_factory=lambda: ["balanced"])
    """How demos are drawn from the pool, one or more of: balanced (round-robin over labels), random,
    nearest (the most similar pool examples to each input, by sentence embedding)."""
    demo_seeds: int = 1
    """Demo sets drawn (seeds seed..seed+N-1) for random and balanced, reported as mean and std."""
    label_names: dict[str, str] | str | None = None
    """Readable names the model sees instead of the label codes ({code: name}, or "auto": underscores and
    hyphens to spaces); results keep the codes."""
    calibrate: bool = False
    """Also report each fixed-demo prompt with contextual calibration (Zhao et al. 2021) as its own row."""
    instruction: str | None = None
    """The instruction line that opens every prompt; None = the task's own ("Classify the input into exactly
    one label.", "Extract the fields mentioned in the input as JSON.", "Write the output for the input.")."""

    def __post_init__(self) -> None:
        if any(k < 0 for k in self.shots):
            raise ConfigError(f"--shots must be 0 or more, got {self.shots}")
        self.shots = sorted(set(self.shots))
        if isinstance(self.demo_selection, str):  # config files written before selections were a list
            self.demo_selection = [s.strip() for s in self.demo_selection.split(",") if s.strip()]
        unknown = [s for s in self.demo_selection if s not in DEMO_SELECTIONS]
        if unknown or not self.demo_selection:
            raise ConfigError(
                f"--demo-selection takes one or more of {', '.join(DEMO_SELECTIONS)}, "
                f"got {', '.join(self.demo_selection) or 'none'}"
            )
        self.demo_selection = list(dict.fromkeys(self.demo_selection))
        if self.demo_seeds < 1:
            raise ConfigError(f"--demo-seeds must be at least 1, got {self.demo_seeds}")
        names = self.label_names
        if isinstance(names, str) and names != AUTO_LABEL_NAMES:
            raise ConfigError(f"--label-names takes CODE=name pairs or {AUTO_LABEL_NAMES!r}, got {names!r}")
        if isinstance(names, dict):
            # YAML reads a label like 0 as a number; labels are always text.
            self.label_names = {str(k): "" if v is None else str(v).strip() for k, v in names.items()}
            if not all(self.label_names.values()):
                raise ConfigError("--label-names needs a non-empty name for every label code it lists")
        elif names is not None and not isinstance(names, str):
            raise ConfigError(f"label_names must be a mapping of label to name, got {names!r}")


ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = [*ATTENTION_PROJECTIONS, "gate_proj", "up_proj", "down_proj"]


def default_target_modules(open_output: bool) -> list[str]:
    """The layers LoRA adapts when ``--lora-target-modules`` is not given, by whether the task's answer is an
    open output (the task type's ``open_output``).

    Classification keeps the attention projections: its answer is a label's few tokens, and its measured
    figures (README) were made with them. Extraction and generation write whole outputs, and LoRA on every
    linear layer of the blocks is what QLoRA (Dettmers et al. 2023) found necessary to match full
    fine-tuning on generation; on snips (500 rows) it moved field F1 from 0.365 to 0.504 for 8% more
    training time. Both are served by vLLM and LoRAX.
    """
    return list(ALL_LINEAR if open_output else ATTENTION_PROJECTIONS)


@dataclass
class LoraArgs:
    train_sizes: list[int] = field(default_factory=lambda: [200])
    """Training examples per adapter (a seeded stratified sample of the pool), one adapter each; several
    sizes give the learning curve (and the reference its training sets)."""
    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] | None = None
    """Linear layers that get adapters; default by task: classification the attention projections
    (q_proj,k_proj,v_proj,o_proj), extraction and generation every linear layer of the blocks (those plus
    gate_proj,up_proj,down_proj). vLLM and LoRAX serve either."""
    epochs: int = 2
    """Passes over the training examples."""
    lr: float = 5e-4
    """Peak AdamW learning rate (linear warm-up over 10% of steps, then linear decay)."""
    batch_size: int = 8
    """Training examples per optimizer step."""
    class_balance: str = "none"
    """none; loss (weight each example's answer loss by inverse class frequency); or sampling (draw each
    epoch's rows with replacement in proportion to inverse class frequency, so batches are class-balanced).
    Either keeps a small imbalanced sample from teaching the adapter to always answer the majority label."""
    kshot_training: str = "demos"
    """How the lora+few-shot row's adapter is trained: demos (k demos from the pool in every training
    prompt, as it is prompted at test time, never the row itself), plain (the lora row's adapter, trained
    without demos, then prompted with them), or both (a row each)."""
    demo_draw: str = "batch"
    """How the demos of --kshot-training demos are drawn: batch (one balanced or random draw per training
    batch, shared by its rows and run once per batch) or row (a draw per row). Nearest demos: per row."""
    full_lr: float = 2e-5
    """Peak AdamW learning rate of full-ft (every weight; same schedule, loss and batches as LoRA)."""
    precision: str = "auto"
    """auto: bf16 where the hardware runs it natively (a CUDA GPU that supports it; on a CPU with AVX-512
    BF16 or AMX, training in bf16 and scoring in float32), float32 elsewhere; fp32; or bf16 (training and
    scoring in bfloat16; on a CPU, float32 weights under bf16 autocast with the output layer and label
    scores in float32). docs/benchmarks.md has the agreement with float32."""
    quantize: str = "none"
    """none, or nf4: QLoRA (the base model loaded in 4-bit NF4 by bitsandbytes, LoRA trained on top; needs
    a CUDA GPU and the bitsandbytes package)."""

    def __post_init__(self) -> None:
        for option, value, choices in (
            ("--kshot-training", self.kshot_training, KSHOT_TRAINING),
            ("--demo-draw", self.demo_draw, DEMO_DRAWS),
            ("--precision", self.precision, PRECISIONS),
            ("--quantize", self.quantize, QUANTIZE),
        ):
            if value not in choices:
                raise ConfigError(f"{option} takes {', '.join(choices)}; got {value!r}")
        if not 0 < self.full_lr < 1:
            raise ConfigError(f"--full-lr must be between 0 and 1, got {self.full_lr}")
        if self.class_balance not in CLASS_BALANCE:
            raise ConfigError(f"--class-balance takes {', '.join(CLASS_BALANCE)}; got {self.class_balance!r}")
        if any(n < 1 for n in self.train_sizes):
            raise ConfigError(f"--train-sizes must be positive, got {self.train_sizes}")
        self.train_sizes = sorted(set(self.train_sizes))
        for name, count in (
            ("--lora-r", self.r),
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
        ):
            if count < 1:
                raise ConfigError(f"{name} must be at least 1, got {count}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"--lr must be between 0 and 1, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.dropout}")


@dataclass
class EvalArgs:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Which of zero-shot, few-shot, lora, lora+few-shot, reference (embeddings + logistic regression),
    full-ft (every weight trained) and hosted-ft (a fine-tuning API's job, see --hosted-endpoint) to run."""
    batch_size: int = 16
    """Test rows per forward pass when scoring (length-bucketed, right-padded)."""
    latency_requests: int = 20
    """Requests timed one at a time (after 2 warm-up requests) for p50/p95 latency."""
    constrained: bool = False
    """Extraction: add a row per prompt that decodes under the output's JSON Schema (xgrammar)."""
    label_scoring: str = "loglik"
    """Classification: loglik (each label's log-likelihood after the prompt) or generate (the model writes
    its answer, which is parsed as a label; unparsed answers count as wrong and as errors)."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(
                f"--methods takes {', '.join(METHODS)}; got {', '.join(self.methods) or 'none'}"
            )
        self.methods = [m for m in METHODS if m in self.methods]
        if self.label_scoring not in LABEL_SCORING:
            raise ConfigError(
                f"--label-scoring takes {' or '.join(LABEL_SCORING)}, got {self.label_scoring!r}"
            )
        if self.batch_size < 1 or self.latency_requests < 0:
            raise ConfigError("--eval-batch-size must be at least 1 and --latency-requests 0 or more")


@dataclass
class CostArgs:
    volume_per_day: int | None = None
    """Expected requests per day; None = not given (the report assumes 10,000 and says so)."""
    horizon_days: int = 365
    """Days that setup and per-request costs are totalled over."""
    costs: str | None = None
    """Price table: a preset (auto, self-hosted-cpu, self-hosted-gpu, hosted-api) or a YAML file."""
    gap: str | None = None
    """What the model lacks, if you know: knowledge (facts -> retrieval) or behaviour (format -> tuning)."""
    metric: str | None = None
    """The metric the verdict is decided on, one of the task's own: accuracy or macro-f1 (classification),
    field-f1 (extraction), chrf, rouge-l or semantic (generation), micro-f1, macro-f1 or example-f1
    (multi-label); None = the task's default (classification: accuracy, or macro-F1 when the test labels are
    imbalanced)."""
    value_per_correct: float | None = None
    """Dollars one more correct answer is worth: the option with the best value net of cost ships."""

    def __post_init__(self) -> None:
        # ``metric`` is checked against the task's own choices once the task is known (tasks.registry).
        if self.value_per_correct is not None and not self.value_per_correct >= 0:
            raise ConfigError(f"--value-per-correct must be 0 or more dollars, got {self.value_per_correct}")
        if self.volume_per_day is not None and self.volume_per_day < 1:
            raise ConfigError(f"--volume-per-day must be at least 1, got {self.volume_per_day}")
        if self.horizon_days < 1:
            raise ConfigError(f"--horizon-days must be at least 1, got {self.horizon_days}")
        if self.gap not in (None, "knowledge", "behaviour"):
            raise ConfigError(f"--gap must be knowledge or behaviour, got {self.gap!r}")


@dataclass
class HostedArgs:
    """hosted-ft: a fine-tuning job on an OpenAI-compatible API (a provider, or ``fewtune serve``)."""

    endpoint: str | None = None
    """The fine-tuning API and the model to fine-tune, as URL#BASE_MODEL (e.g.
    https://api.openai.com/v1#gpt-4.1-mini-2025-04-14, or http://127.0.0.1:8000/v1#gemma-3-270m for a local
    fewtune serve); its key is read from --api-key-env."""
    n_epochs: int | None = None
    """Epochs the job trains; None = the provider's choice (fewtune serve: its LoRA default, 2)."""
    batch_size: int | None = None
    """Training batch size of the job; None = the provider's choice (fewtune serve: 8)."""
    learning_rate_multiplier: float | None = None
    """Multiplier of the provider's base learning rate; None = the provider's choice."""
    suffix: str = "fewtune"
    """Text put in the fine-tuned model's name (ft:BASE:ORG:SUFFIX:ID)."""
    poll_seconds: float = 5.0
    """Seconds between polls of the job's state and events."""
    max_wait_hours: float = 24.0
    """Hours a run follows a job at most, queueing included (it keeps running; --resume follows it again)."""

    def __post_init__(self) -> None:
        if self.endpoint is not None and "#" not in self.endpoint:
            raise ConfigError(f"--hosted-endpoint takes URL#BASE_MODEL, got {self.endpoint!r}")
        for option, value in (("--hosted-epochs", self.n_epochs), ("--hosted-batch-size", self.batch_size)):
            if value is not None and value < 1:
                raise ConfigError(f"{option} must be at least 1, got {value}")
        positive = (("lr-multiplier", self.learning_rate_multiplier), ("max-wait-hours", self.max_wait_hours))
        for name, v in (*positive, ("poll-seconds", self.poll_seconds)):
            if v is not None and not v > 0:
                raise ConfigError(f"--hosted-{name} must be above 0, got {v}")


@dataclass
class RunConfig:
    model: str = DEFAULT_MODEL
    """'gemma-3-270m' (built in), a local Hugging Face model folder, a .gguf file, or an OpenAI-compatible
    endpoint as URL#MODEL (prompting only: LoRA needs a local model)."""
    prompt_model: str | None = None
    """Model for the prompting rows (zero-shot, few-shot), in --model's forms, e.g. a large served model
    as URL#MODEL; LoRA still trains on --model. None = --model for every row."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding an endpoint's API key (the key is never written anywhere); 'none' for
    a server without one."""
    out: str | None = None
    """Run folder; default runs/<timestamp>."""
    seed: int = 0
    """Seed for splits, demos, training-row samples, LoRA init and bootstrap."""
    mlflow: str | None = None
    """MLflow tracking URI (e.g. http://mlflow:5000, sqlite:///mlflow.db) to log the run to: params,
    metrics, the report and adapters (needs the mlflow extra). None = no MLflow."""
    data: DataArgs = field(default_factory=DataArgs)
    prompt: PromptArgs = field(default_factory=PromptArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    cost: CostArgs = field(default_factory=CostArgs)
    hosted: HostedArgs = field(default_factory=HostedArgs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, folder_or_file: str | Path) -> RunConfig:
        """The settings in a run folder's config.yaml (or a YAML settings file, e.g. ``--config``'s), over
        the defaults; a missing or bad file or setting is a one-line error naming the file."""
        path = _config_path(folder_or_file)
        try:
            return build_config(load_config_file(path), {})
        except ConfigError as err:
            message = str(err)
            raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None

    @staticmethod
    def load_values(folder_or_file: str | Path) -> Mapping[str, Any]:
        """The values of a run folder's config.yaml (or a settings file) as written: neither validated nor
        defaulted, for a caller that needs the saved settings themselves (resume compares them, MLflow logs
        them); a missing or bad file is a one-line error naming it."""
        return load_config_file(_config_path(folder_or_file))


def _config_path(folder_or_file: str | Path) -> Path:
    path = Path(folder_or_file)
    return path / CONFIG_FILE if path.is_dir() else path


TRAINING_SECTION = "lora"
"""The settings section of the trained rows (LoRA, lora+few-shot, full-ft): config.yaml's ``lora:`` block."""
_SECTIONS = {
    "data": DataArgs,
    "prompt": PromptArgs,
    TRAINING_SECTION: LoraArgs,
    "eval": EvalArgs,
    "cost": CostArgs,
    "hosted": HostedArgs,
}


def _check_overrides(overrides: Mapping[str, Mapping[str, Any]]) -> None:
    """Overrides name known sections and settings (a library caller's typo is a one-line error, not a
    ``TypeError`` from a dataclass)."""
    for name, given in overrides.items():
        cls = RunConfig if name == "run" else _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"unknown settings section '{name}'; sections: run, {', '.join(_SECTIONS)}")
        known = {f.name for f in fields(cls)}
        bad = sorted(key for key, value in given.items() if value is not None and key not in known)
        if bad:  # None is "not given" (a command line's unset option), whatever its name
            raise ConfigError(f"unknown keys in settings section '{name}': {', '.join(bad)}")


def build_config(
    file_values: Mapping[str, Any] | None, overrides: Mapping[str, Mapping[str, Any]]
) -> RunConfig:
    """Merge a config file's values and command-line overrides (None = not given) over the defaults."""
    _check_overrides(overrides)
    file_values = dict(file_values or {})
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
    sections = {}
    for name, cls in _SECTIONS.items():
        given = file_values.pop(name, None) or {}
        if not isinstance(given, dict):
            raise ConfigError(
                f"config section '{name}' must be a mapping of settings, got {type(given).__name__}"
            )
        values = _coerce(name, cls, given)
        if name == "prompt" and "task" in values:
            raise ConfigError(
                "config key prompt.task was renamed prompt.instruction (the prompt's first line); "
                "--task now names the kind of task (classification, extraction, generation)"
            )
        allowed = {f.name for f in fields(cls)}
        bad = sorted(set(values) - allowed)
        if bad:
            raise ConfigError(f"unknown keys in config section '{name}': {', '.join(bad)}")
        values.update({k: v for k, v in overrides.get(name, {}).items() if v is not None})
        sections[name] = cls(**values)
    top = _coerce("run", RunConfig, {k: v for k, v in file_values.items() if k not in _SECTIONS})
    top.update({k: v for k, v in overrides.get("run", {}).items() if v is not None})
    return RunConfig(**top, **sections)
