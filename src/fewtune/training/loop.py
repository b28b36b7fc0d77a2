"""The training loop LoRA and full fine-tuning share: loss on the answer tokens only, seeded, resumable.

The loop projects onto the vocabulary only at the positions that predict answer tokens (a few per
example) instead of every position, which is most of a small model's training FLOPs with Gemma's 262k
vocabulary. Batches are length-grouped and padded only to their own longest example. Under
``accelerate launch`` (see :mod:`fewtune.training.distributed`) each process takes its share of every
batch and accelerate's DDP (or DeepSpeed) reduces the gradients, so the update is the one-process update up
to the order of floating-point sums.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fewtune.backends.kvcache import cache_of, filled_cache, layer_states, with_cache
from fewtune.backends.precision import of_model
from fewtune.data.load import Example
from fewtune.sysinfo import PeakMemory
from fewtune.training.checkpoint import Progress, StateDict, load_checkpoint, save_checkpoint
from fewtune.training.demo_block import BatchPrompt, DemoBlocks
from fewtune.training.distributed import Distributed

# Length grouping: shuffle, cut into windows of this many batches, sort each window by length.
LENGTH_GROUP_BATCHES = 32
WARMUP_RATIO = 0.1
PIECE_TOKENS = 1024
"""On a CPU, one process runs a training batch forward and backward in pieces of at most this many row
tokens (rows x their padded width) and sums the pieces' gradients. Backward keeps about 1.1 MB of
activations per token for Gemma 3 270M: a step on 8 whole prompts of 320 tokens (8-shot sst2) peaked at
3.8 GB run whole, 2.9 GB in pieces of 1024 tokens (5.7 s a step instead of 5.0: more, smaller passes
through every layer) and 2.2 GB in pieces of 512 (7.7 s; bench/training_pieces.py). Short rows (a plain
adapter's, or rows after a shared demo block) fit one piece and run as before. The update is the whole
batch's, up to the order of floating-point sums (as under DDP, which splits a batch the same way)."""


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
    """What training needs of a template: the prompt for an input and the answer text after it; the prompt
    is ``prefix(demos) + query(text)``, so a batch can share its demo block (:mod:`.demo_block`)."""

    def render(self, text: str, demos: Sequence[Example] = ()) -> str: ...

    def prefix(self, demos: Sequence[Example]) -> str: ...

    def query(self, text: str) -> str: ...

    def continuation(self, label: str) -> str: ...


class AnswerLogProbs(torch.nn.Module):
    """The trained model as one module: log-probabilities at the positions that predict answer tokens.

    One module, so that accelerate's DDP (or DeepSpeed) wraps every trained weight, the output layer's
    included when it is trained (full fine-tuning of a model with tied embeddings)."""

    def __init__(self, model: Any, decoder: Any, softcap: float | None) -> None:
        super().__init__()
        self.model = model
        self.decoder = decoder
        self.softcap = softcap
        self.precision = of_model(model)
        """bf16 autocast on a CPU with bf16 units: the decoder's products in bf16, the head in float32."""

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        predict_at: torch.Tensor,
        block: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if block is not None:  # rows after a shared demo block: one ``forward`` so that DDP sees the call
            return self.after_block(block, ids, mask, predict_at)
        with self.precision.training():
            hidden = self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return self.answer_log_probs(hidden[predict_at])

    def answer_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the vocabulary at hidden states ``[N, H]`` that predict answer tokens."""
        head = self.model.get_output_embeddings()
        with self.precision.exact():
            logits = head(hidden.to(head.weight.dtype)).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits, dim=-1)

    def after_block(
        self, block: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, predict_at: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`forward` for rows ``ids [B, W]`` (right-padded, ``mask``) that follow the demo block
        ``block [1, P]``: the block runs once, with gradients, and its keys and values are repeated for
        every row (as the prefix cache does when scoring), the rows sitting at positions ``P ..``. The
        result is that of writing the block before each row and calling :meth:`forward` (the rows' padding
        shifted right past it), which ``tests/test_demo_block.py`` checks for the loss and its gradients."""
        return self.after_states(self.block_states(block), block.shape[1], ids, mask, predict_at)

    def block_states(self, block: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The demo block ``[1, P]`` run once, with gradients: each layer's keys and values."""
        with self.precision.training():
            return layer_states(cache_of(self.decoder(input_ids=block, use_cache=True)))

    def after_states(
        self,
        states: list[tuple[torch.Tensor, torch.Tensor]],
        length: int,
        ids: torch.Tensor,
        mask: torch.Tensor,
        predict_at: torch.Tensor,
    ) -> torch.Tensor:
        """The rows after a block of ``length`` tokens whose keys and values are ``states``
        (:meth:`block_states`): a differentiable copy per row, so gradients flow back into the block."""
        rows, width = ids.shape
        repeated = [(k.repeat_interleave(rows, dim=0), v.repeat_interleave(rows, dim=0)) for k, v in states]
        cache = filled_cache(repeated, self.decoder.config)
        with self.precision.training():
            positions = (length + torch.arange(width, device=ids.device)).expand(rows, width)
            hidden = self.decoder(
                input_ids=ids,
                attention_mask=torch.cat([mask.new_ones(rows, length), mask], dim=1),
                position_ids=positions,
                **with_cache(cache),
                use_cache=True,
            ).last_hidden_state
        return self.answer_log_probs(hidden[predict_at])


def pieces(widths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive runs of rows (by index) whose count times their widest row stays within ``budget``
    tokens; a row wider than the budget runs alone."""
    runs: list[list[int]] = []
    widest = 0
    for i, width in enumerate(widths):
        if runs and (len(runs[-1]) + 1) * max(widest, width) <= budget:
            runs[-1].append(i)
            widest = max(widest, width)
        else:
            runs.append([i])
            widest = width
    return runs


@dataclass
class Schedule:
    """How a model is trained: passes, batch size, peak learning rate and class balancing."""

    epochs: int
    batch_size: int
    lr: float
    class_balance: str


@dataclass
class Trained:
    """What one training run measured."""

    done: Progress
    seconds: float
    total_steps: int
    resumed_at: int
    peak_bytes: int | None
    mean_length: float
    prepared: Any = None
    """The module as accelerate wrapped it (DDP, a DeepSpeed engine), or the module itself."""


@dataclass
class TrainingLoop:
    """Trains ``module``'s trainable weights on ``features`` under ``schedule``, checkpointing into
    ``folder`` through ``state`` / ``restore`` (the trained weights' state dict, and how to load one)."""

    module: AnswerLogProbs
    schedule: Schedule
    features: list[tuple[list[int], list[int]]]
    labels: list[str]
    pad_id: int
    device: Any
    seed: int
    folder: Path
    key: str
    state: Callable[[], StateDict]
    restore: Callable[[StateDict], None]
    progress: Callable[[int, int, float], None] | None = None
    checkpoint_seconds: float = 60.0
    blocks: DemoBlocks | None = None
    """Demos drawn per batch: each batch's demo block (``features`` then hold what follows it)."""

    def run(self) -> Trained:
        s = self.schedule
        rng = random.Random(self.seed)
        balance = s.class_balance
        inverse_frequency = example_weights(self.labels, balance != "none")
        # "loss" weights each example's answer loss; "sampling" draws class-balanced batches (with
        # replacement), so a 5% class appears in most batches instead of a few.
        weights = inverse_frequency if balance == "loss" else [1.0] * len(self.labels)
        draw = inverse_frequency if balance == "sampling" else None
        features = self.features
        lengths = [len(p) + len(a) for p, a in features]
        total_steps = -(-len(features) // s.batch_size) * s.epochs
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
        from transformers import get_linear_schedule_with_warmup

        scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP_RATIO * total_steps), total_steps)
        dist = Distributed.current()
        done = load_checkpoint(self.folder, self.key, self.restore, optimizer, scheduler)
        resumed_at = done.step
        module, optimizer = dist.prepare(self.module, optimizer, s.batch_size)
        module.train()
        step, saved_at = 0, time.perf_counter()
        with PeakMemory(self.device) as peak:
            start = time.perf_counter()
            for _ in range(s.epochs):
                for batch in _batches(lengths, s.batch_size, rng, draw):
                    step += 1
                    if step <= done.step:
                        continue  # trained before the run was interrupted: replay the seeded order only
                    prompt = self._prompt(step, batch)
                    loss = self._backward(module, dist, batch, prompt, weights)
                    dist.clip(params, 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    done.step = step
                    done.tokens += prompt.tokens
                    done.answer_tokens += sum(len(features[i][1]) for i in batch)
                    done.block_tokens += prompt.block_tokens
                    done.shared_steps += bool(prompt.block)
                    if self.progress and dist.main:  # this process's share of the batch's loss
                        self.progress(step, total_steps, loss.item() / dist.processes)
                    if (
                        dist.checkpoints
                        and step < total_steps
                        and time.perf_counter() - saved_at >= self.checkpoint_seconds
                    ):
                        done.seconds += time.perf_counter() - start
                        start = saved_at = time.perf_counter()
                        if dist.main:
                            save_checkpoint(self.folder, self.key, self.state(), optimizer, scheduler, done)
            seconds = done.seconds + time.perf_counter() - start
        self.module.eval()
        # A row's prompt and answer, with the demo block when one is drawn per batch (the features hold
        # only what follows it).
        mean_length = sum(lengths) / len(lengths) + done.block_tokens / max(done.step, 1)
        return Trained(done, seconds, total_steps, resumed_at, peak.bytes, mean_length, module)

    def _prompt(self, step: int, batch: list[int]) -> BatchPrompt:
        """The tokens of optimizer step ``step``'s rows ``batch``: their features, or with demos drawn per
        batch, the batch's demo block and what follows it (:mod:`fewtune.training.demo_block`)."""
        if self.blocks is None:
            return BatchPrompt([], [self.features[i] for i in batch], 0)
        return self.blocks.batch(step, batch)

    def _backward(
        self, module: Any, dist: Distributed, batch: list[int], prompt: BatchPrompt, weights: list[float]
    ) -> torch.Tensor:
        """``batch``'s weighted answer loss with its gradients in the trained weights; on a CPU with one
        process, in pieces of at most :data:`PIECE_TOKENS` row tokens (their gradients summed)."""
        runs = pieces([len(p) + len(a) for p, a in prompt.features], PIECE_TOKENS)
        if dist.processes > 1 or len(runs) == 1 or torch.device(self.device).type != "cpu":
            loss = self._loss(module, dist, batch, prompt, weights)
            dist.backward(loss)
            return loss.detach()
        total_weight = sum(weights[i] * len(a) for i, (_, a) in zip(batch, prompt.features, strict=True))
        states = (
            module.block_states(torch.tensor([prompt.block], device=self.device)) if prompt.block else None
        )
        loss = torch.zeros((), device=self.device)
        for n, run in enumerate(runs):
            ids, mask, predict_at, targets = (
                t.to(self.device) for t in _collate([prompt.features[j] for j in run], self.pad_id)
            )
            if states is None:
                log_probs = module(ids, mask, predict_at)
            else:
                log_probs = module.after_states(states, len(prompt.block), ids, mask, predict_at)
            token_weights = torch.tensor(
                [weights[batch[j]] for j in run for _ in prompt.features[j][1]], device=self.device
            )
            losses = torch.nn.functional.nll_loss(log_probs, targets, reduction="none")
            part = (losses * token_weights).sum() / total_weight
            part.backward(retain_graph=states is not None and n < len(runs) - 1)  # the block's graph
            loss += part.detach()
        return loss

    def _loss(
        self, module: Any, dist: Distributed, batch: list[int], prompt: BatchPrompt, weights: list[float]
    ) -> torch.Tensor:
        """This process's part of ``batch``'s weighted answer loss, from its share of the rows."""
        # Shared by position: a row drawn twice (class-balanced sampling) is trained twice.
        mine = dist.share(range(len(batch)))
        at = mine or [0]  # a process with no rows still joins the gradient reduction
        ids, mask, predict_at, targets = _collate([prompt.features[j] for j in at], self.pad_id)
        block = torch.tensor([prompt.block], device=self.device) if prompt.block else None
        log_probs = module(ids.to(self.device), mask.to(self.device), predict_at.to(self.device), block)
        token_weights = torch.tensor(
            [weights[batch[j]] * bool(mine) for j in at for _ in prompt.features[j][1]], device=self.device
        )
        targets = targets.to(self.device)
        if dist.processes == 1:
            return answer_loss(log_probs, targets, token_weights)
        # This share's part of the batch's weighted mean; DDP averages over processes.
        total_weight = sum(weights[i] * len(self.features[i][1]) for i in batch)
        losses = torch.nn.functional.nll_loss(log_probs, targets, reduction="none")
        return (losses * token_weights).sum() / total_weight * dist.processes
