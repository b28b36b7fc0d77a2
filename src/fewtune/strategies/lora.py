"""LoRA fine-tuning with peft: loss on the answer tokens only, seeded, adapter saved in peft's format.

The loop projects onto the vocabulary only at the positions that predict answer tokens (a few per
example) instead of every position, which is most of a small model's training FLOPs with Gemma's 262k
vocabulary. Batches are length-grouped and padded only to their own longest example.
"""

from __future__ import annotations

import copy
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch

from fewtune.backends.base import Backend
from fewtune.backends.hf import HFBackend
from fewtune.config import LoraArgs, default_target_modules
from fewtune.data.load import Example
from fewtune.errors import ConfigError
from fewtune.prompts.template import PromptTemplate
from fewtune.strategies.base import Predictor, Strategy
from fewtune.strategies.checkpoint import (
    CHECKPOINT_SECONDS,
    checkpoint_key,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from fewtune.sysinfo import PeakMemory, lora_train_flops_per_token, matmul_peak_flops

# Length grouping: shuffle, cut into windows of this many batches, sort each window by length.
LENGTH_GROUP_BATCHES = 32
WARMUP_RATIO = 0.1


def _batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, sample_weights: Sequence[float] | None = None
) -> list[list[int]]:
    """One epoch's batches: a shuffled order (or, with ``sample_weights``, as many rows drawn with
    replacement in proportion to their weights), cut into length-sorted windows."""
    if sample_weights is None:
        order = list(range(len(lengths)))
        rng.shuffle(order)
    else:
        order = rng.choices(range(len(lengths)), weights=sample_weights, k=len(lengths))
    window = batch_size * LENGTH_GROUP_BATCHES
    batches = []
    for start in range(0, len(order), window):
        group = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(
    features: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad prompt+answer; return ids, mask, positions predicting answer tokens, and those tokens."""
    width = max(len(p) + len(a) for p, a in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    predict_at = torch.zeros((len(features), width), dtype=torch.bool)
    targets = []
    for i, (prompt, answer) in enumerate(features):
        seq = prompt + answer
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        predict_at[i, len(prompt) - 1 : len(seq) - 1] = True
        targets += answer
    return ids, mask, predict_at, torch.tensor(targets)


def example_weights(labels: Sequence[str], balanced: bool) -> list[float]:
    """Weight of each training example: 1, or scikit-learn's "balanced" inverse class frequency
    ``n / (classes x count(label))``, so every class carries the same total weight (King & Zeng 2001)."""
    if not balanced:
        return [1.0] * len(labels)
    from sklearn.utils.class_weight import compute_class_weight

    classes = sorted(set(labels))
    values = compute_class_weight("balanced", classes=np.array(classes), y=np.array(labels))
    by_label = dict(zip(classes, values.tolist(), strict=True))
    return [by_label[label] for label in labels]


def answer_loss(log_probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean negative log-likelihood of the answer tokens; each token carries its example's weight."""
    losses = torch.nn.functional.nll_loss(log_probs, targets, reduction="none")
    return (losses * weights).sum() / weights.sum()


class TrainingTemplate(Protocol):
    """What training needs of a template: the prompt for an input and the answer text after it."""

    def render(self, text: str, demos: Sequence[Example] = ()) -> str: ...

    def continuation(self, label: str) -> str: ...


@dataclass
class Lora(Strategy):
    """Trains one adapter on ``train`` and returns a zero-shot predictor over the merged model."""

    backend: Backend
    """A backend whose ``capabilities.trainable`` is set (a local Hugging Face model)."""
    template: TrainingTemplate
    args: LoraArgs
    save_dir: Path
    seed: int = 0
    progress: Callable[[int, int, float], None] | None = None
    """Called as ``progress(step, total_steps, loss)`` after each optimizer step."""
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    """Training seconds between checkpoints in ``save_dir`` (see :mod:`fewtune.strategies.checkpoint`)."""

    def __post_init__(self) -> None:
        if not self.backend.capabilities.trainable:
            raise ConfigError(
                f"LoRA needs a local Hugging Face model; backend '{self.backend.name}' cannot be trained"
            )

    def fit(self, train: Sequence[Example]) -> Predictor:
        if not isinstance(self.template, PromptTemplate):
            raise TypeError("Lora.fit makes a label predictor; use Lora.train for other templates")
        backend, info = self.train(train)
        return Predictor(
            method="lora", backend=backend, template=self.template, train_examples=len(train), info=info
        )

    def train(self, train: Sequence[Example]) -> tuple[HFBackend, dict[str, Any]]:
        """Train the adapter on ``train`` (answer-only loss on each example's continuation); return the
        merged model's backend and what training measured."""
        from peft import LoraConfig, get_peft_model
        from transformers import get_linear_schedule_with_warmup

        torch.manual_seed(self.seed)
        rng = random.Random(self.seed)
        base = cast(HFBackend, self.backend)  # trainable: checked in __post_init__
        model = copy.deepcopy(base.model)  # the base backend stays untouched for the prompting rows
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5; not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(
                model,
                LoraConfig(
                    r=self.args.r,
                    lora_alpha=self.args.alpha,
                    lora_dropout=self.args.dropout,
                    target_modules=self.args.target_modules or default_target_modules(None),
                    task_type="CAUSAL_LM",
                ),
            )
        features = [
            (
                base.encode_prompt(self.template.render(ex.text)),
                base.encode_continuation(self.template.continuation(ex.label)),
            )
            for ex in train
        ]
        balance = self.args.class_balance
        inverse_frequency = example_weights([ex.label for ex in train], balance != "none")
        # "loss" weights each example's answer loss; "sampling" draws class-balanced batches (with
        # replacement), so a 5% class appears in most batches instead of a few.
        weights = inverse_frequency if balance == "loss" else [1.0] * len(train)
        draw = inverse_frequency if balance == "sampling" else None
        lengths = [len(p) + len(a) for p, a in features]
        steps_per_epoch = -(-len(features) // self.args.batch_size)
        total_steps = steps_per_epoch * self.args.epochs
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.args.lr, weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP_RATIO * total_steps), total_steps)
        decoder: Any = model.get_base_model().get_decoder()  # type: ignore[operator]
        key = checkpoint_key({"args": asdict(self.args), "seed": self.seed, "weights": weights}, features)
        done = load_checkpoint(self.save_dir, key, model, optimizer, scheduler)
        resumed_at = done.step
        model.train()
        step, saved_at = 0, time.perf_counter()
        with PeakMemory(base.device) as peak:
            start = time.perf_counter()
            for _ in range(self.args.epochs):
                for batch in _batches(lengths, self.args.batch_size, rng, draw):
                    step += 1
                    if step <= done.step:
                        continue  # trained before the run was interrupted: replay the seeded order only
                    ids, mask, predict_at, targets = _collate([features[i] for i in batch], base.pad_id)
                    ids, mask = ids.to(base.device), mask.to(base.device)
                    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                    log_probs = base.log_probs(hidden[predict_at.to(base.device)])
                    token_weights = torch.tensor(
                        [weights[i] for i in batch for _ in features[i][1]], device=base.device
                    )
                    loss = answer_loss(log_probs, targets.to(base.device), token_weights)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    done.step = step
                    done.tokens += int(mask.sum())
                    done.answer_tokens += len(targets)
                    if self.progress:
                        self.progress(step, total_steps, loss.item())
                    if step < total_steps and time.perf_counter() - saved_at >= self.checkpoint_seconds:
                        done.seconds += time.perf_counter() - start
                        start = saved_at = time.perf_counter()
                        save_checkpoint(self.save_dir, key, model, optimizer, scheduler, done)
            train_seconds = done.seconds + time.perf_counter() - start
        model.eval()
        model.peft_config["default"].base_model_name_or_path = base.source
        self.save_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(self.save_dir))
        remove_checkpoint(self.save_dir)
        adapter_bytes = sum(f.stat().st_size for f in self.save_dir.glob("adapter_model.*"))
        merged = model.merge_and_unload()
        tokens_per_second = done.tokens / train_seconds
        flops_per_token = lora_train_flops_per_token(
            merged, seq_len=sum(lengths) / len(lengths), answer_share=done.answer_tokens / done.tokens
        )
        dtype = next(merged.parameters()).dtype
        info: dict[str, Any] = {
            "train_seconds": train_seconds,
            "train_tokens_per_second": tokens_per_second,
            "train_flops_per_token": flops_per_token,
            # Model FLOPs utilisation against this machine's measured matmul peak (see sysinfo).
            "train_mfu": tokens_per_second * flops_per_token / matmul_peak_flops(base.device, dtype),
            "train_steps": total_steps,
            "resumed_at_step": resumed_at,
            "class_balance": self.args.class_balance,
            "adapter_path": str(self.save_dir),
            "adapter_bytes": adapter_bytes,
            "peak_memory_bytes": peak.bytes,
        }
        return HFBackend(merged, base.tokenizer, name=f"{base.name}+lora", source=base.source), info
