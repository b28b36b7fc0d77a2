"""One fine-tuning job's work on the trainer thread: train its LoRA adapter on a fresh copy of the base model,
then score the held-out comparison (:mod:`~fewtune.serve.finetune.compare`), and write the job's result file.

``check`` is called at every optimizer step and between the comparison's batches: it raises to stop the job
(cancelled, or the server stopping), so a cancel ends every phase within a step or a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fewtune.config import LoraArgs
from fewtune.data.load import Example
from fewtune.decide.cost import PriceTable
from fewtune.methods import Method
from fewtune.serve.finetune.chat_rows import ChatRow, RenderedTemplate, as_examples
from fewtune.serve.finetune.state import JobObject

if TYPE_CHECKING:
    from fewtune.backends.hf import HFBackend
    from fewtune.results.sections import LocalTraining
    from fewtune.serve.engine import Engine
    from fewtune.serve.finetune.compare import LossStep, ResultFile
    from fewtune.serve.finetune.state import EventData

STEP_EVENTS = 100
"""About this many metrics events per job (every step of a short job)."""

Say = Callable[..., None]
"""Adds an event to the job: ``say(message, data=..., kind=...)``."""


@dataclass(frozen=True)
class TrainingJob:
    """What a job trains: its record, the model name it will be served under, its adapter folder, and its
    rows to train on and to compare on."""

    job: JobObject
    name: str
    folder: Path
    train: list[ChatRow]
    validation: list[ChatRow]


def train_and_compare(
    work: TrainingJob,
    base_factory: Callable[[], HFBackend],
    engine: Engine,
    prices: PriceTable,
    defaults: LoraArgs,
    *,
    check: Callable[[], None],
    say: Say,
) -> ResultFile:
    """Train ``work``'s adapter into its folder and compare it with few-shot prompting: the result file."""
    from fewtune.serve.finetune.compare import Training, compare_on_validation

    job, train, validation = work.job, work.train, work.validation
    hyper = job["hyperparameters"]
    args = replace(
        defaults,
        epochs=hyper["n_epochs"],
        batch_size=hyper["batch_size"],
        lr=defaults.lr * hyper["learning_rate_multiplier"],
    )
    base = base_factory()
    check()
    examples = as_examples(train, engine.render_chat)
    total_tokens = sum(
        len(base.encode_prompt(ex.text)) + len(base.encode_continuation(ex.label)) for ex in examples
    )
    tuned, info, steps = _fit(base, examples, args, work.folder, job["seed"], check, say)
    check()
    result = compare_on_validation(
        base=base,
        tuned=tuned,
        train=train,
        validation=validation,
        render=engine.render_chat,
        chat_template=bool(getattr(engine.adapters.tokenizer, "chat_template", None)),
        seed=job["seed"],
        training=Training(len(train), info.train_seconds, info.train_tokens_per_second),
        prices=prices,
        tuned_name=work.name,
        say=say,
        check=check,
    )
    return {
        "job": job["id"],
        "fine_tuned_model": work.name,
        "base_model": engine.base_name,
        "training": {
            "examples": len(train),
            "trained_tokens": total_tokens * args.epochs,
            "train_seconds": info.train_seconds,
            "steps": info.train_steps,
            "hyperparameters": hyper,
            "learning_rate": args.lr,
            Method.LORA.value: {"r": args.r, "alpha": args.alpha, "dropout": args.dropout},
        },
        "validation": {
            "rows": len(validation),
            "source": "validation_file" if job["validation_file"] else "held back from training_file",
            "file": job["validation_file"],
        },
        **result,
        "steps": steps,
    }


def _fit(
    base: HFBackend,
    examples: list[Example],
    args: LoraArgs,
    folder: Path,
    seed: int,
    check: Callable[[], None],
    say: Say,
) -> tuple[HFBackend, LocalTraining, list[LossStep]]:
    """Train the job's adapter (from its checkpoint if any); returns each step's loss as well."""
    from fewtune.training.lora import Lora

    steps: list[LossStep] = []

    def on_step(step: int, total: int, loss: float) -> None:
        check()
        steps.append({"step": step, "train_loss": loss})
        if step % max(1, total // STEP_EVENTS) == 0 or step == total:
            data: EventData = {"step": step, "total_steps": total, "train_loss": loss}
            say(f"Step {step}/{total}: training loss={loss:.4f}", data=data, kind="metrics")

    lora = Lora(base, RenderedTemplate(), args, folder, seed=seed, progress=on_step)
    tuned, info = lora.train(examples)
    if resumed := info.resumed_at_step:
        say(f"Training continued from the checkpoint at step {resumed}")
    return tuned, info, steps
