"""What fitting a method measured, as types: a local model's training (:class:`LocalTraining`, LoRA or
full-ft), a provider's fine-tuning job (:class:`HostedJob`) and the no-LLM reference's fit
(:class:`ReferenceFit`). Each writes its part of a results row (its training fields, in the order results.json
has always held them) through ``fields``; :func:`fewtune.results.builders.training_fields` is the one caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from typing_extensions import TypedDict

from fewtune.prompts.demos import BATCH_DRAW, ROW_DRAW
from fewtune.results.record import MethodRow


@dataclass(frozen=True)
class LocalTraining:
    """What training a local model measured: a LoRA adapter or every weight (the fields are
    :class:`~fewtune.results.record.MethodRow`'s of the same names)."""

    train_seconds: float
    train_tokens_per_second: float
    train_flops_per_token: float
    train_mfu: float
    train_steps: int
    resumed_at_step: int
    class_balance: str
    adapter_path: str
    adapter_bytes: int
    peak_memory_bytes: int | None
    trained_parameters: int
    train_processes: int
    precision: str
    train_precision: str | None = None
    """What training's matrix products ran in, where it differs from scoring's ``precision`` (on a CPU with
    bf16 units, ``--precision auto`` trains in bfloat16 and scores in float32); None otherwise."""
    quantization: str | None = None
    """QLoRA: the base model's 4-bit quantization (nf4); None otherwise (not written)."""
    kshot_training: str | None = None
    """lora+few-shot rows: how the prompted adapter was trained (plain or demos); None otherwise."""
    demo_draw: str | None = None
    """An adapter trained with demos: batch (a draw per batch, shared by its rows) or row; None otherwise."""
    demo_block_steps: int | None = None
    """demo_draw batch: the steps whose rows shared one run of the demo block; None otherwise."""

    def prompted(self, kshot_training: str) -> LocalTraining:
        """The same training, for a lora+few-shot row whose adapter was trained ``kshot_training``."""
        return replace(self, kshot_training=kshot_training)

    def with_demos(self, per_batch: bool, shared_steps: int) -> LocalTraining:
        """The same training, of an adapter trained with demos drawn per batch (``shared_steps`` of its steps
        sharing one run of the block) or per row."""
        if not per_batch:
            return replace(self, demo_draw=ROW_DRAW)
        return replace(self, demo_draw=BATCH_DRAW, demo_block_steps=shared_steps)

    def fields(self) -> MethodRow:
        row: MethodRow = {
            "train_seconds": self.train_seconds,
            "train_tokens_per_second": self.train_tokens_per_second,
            "train_flops_per_token": self.train_flops_per_token,
            "train_mfu": self.train_mfu,
            "train_steps": self.train_steps,
            "resumed_at_step": self.resumed_at_step,
            "class_balance": self.class_balance,
            "adapter_path": self.adapter_path,
            "adapter_bytes": self.adapter_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "trained_parameters": self.trained_parameters,
            "train_processes": self.train_processes,
            "precision": self.precision,
        }
        if self.train_precision is not None:
            row["train_precision"] = self.train_precision
        if self.quantization is not None:
            row["quantization"] = self.quantization
        if self.kshot_training is not None:
            row["kshot_training"] = self.kshot_training
        if self.demo_draw is not None:
            row["demo_draw"] = self.demo_draw
        if self.demo_block_steps is not None:
            row["demo_block_steps"] = self.demo_block_steps
        return row


class HostedComparison(TypedDict):
    """A ``fewtune serve`` result file's held-out comparison against few-shot prompting."""

    verdict: str | None
    metric: str | None
    rows: int | None
    few_shot: float | None
    fine_tuned: float | None
    file: str
    """The saved result file's name (in adapters/hosted-ft-n<N>/)."""


@dataclass(frozen=True)
class HostedJob:
    """A finished fine-tuning job at a provider (the fields are
    :class:`~fewtune.results.record.MethodRow`'s ``fine_tuned_model`` ... ``hosted_comparison``)."""

    fine_tuned_model: str
    fine_tuning_job: str
    hosted_endpoint: str
    trained_tokens: int | None
    train_seconds: float | None
    """The job's wall time at the provider, queueing included (None: it reported no finish time)."""
    hosted_hyperparameters: Mapping[str, Any]
    """As the provider reported them (its own names and values)."""
    validation_examples: int
    hosted_result_files: tuple[str, ...]
    hosted_comparison: HostedComparison | None = None

    def fields(self) -> MethodRow:
        row: MethodRow = {
            "train_seconds": self.train_seconds,
            "fine_tuned_model": self.fine_tuned_model,
            "fine_tuning_job": self.fine_tuning_job,
            "hosted_endpoint": self.hosted_endpoint,
            "trained_tokens": self.trained_tokens,
            "hosted_hyperparameters": dict(self.hosted_hyperparameters),
            "validation_examples": self.validation_examples,
            "hosted_result_files": list(self.hosted_result_files),
        }
        if self.hosted_comparison is not None:
            row["hosted_comparison"] = dict(self.hosted_comparison)
        return row


@dataclass(frozen=True)
class ReferenceFit:
    """The classification reference's fit: sentence embeddings and a classifier on them."""

    train_seconds: float
    embedding_model: str
    classifier: str
    """The classifier and its setting, e.g. ``LogisticRegression(C=1)``."""

    def fields(self) -> MethodRow:
        return {
            "train_seconds": self.train_seconds,
            "embedding_model": self.embedding_model,
            "classifier": self.classifier,
        }


Fitted = LocalTraining | HostedJob | ReferenceFit
"""What fitting a trained method measured (a prompting method has nothing: None)."""
