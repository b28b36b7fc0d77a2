"""A training batch run in pieces on a CPU (training.loop.PIECE_TOKENS): the same loss and gradients as the
whole batch at once, with and without a shared demo block, with unequal example weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from task_helpers import one_torch_thread  # noqa: F401 (an autouse fixture)
from test_demo_block import Share, backend, blocks, lora_module

from fewtune.training import loop as training_loop
from fewtune.training.demo_block import BatchPrompt
from fewtune.training.loop import AnswerLogProbs, TrainingLoop, pieces

WEIGHTS = [4.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0, 0.25]
BATCH = [3, 0, 6, 1, 5]


def test_pieces_keep_row_order_and_the_token_budget() -> None:
    assert pieces([3, 4, 5, 9], 10) == [[0, 1], [2], [3]]
    assert pieces([3, 3, 3, 3], 12) == [[0, 1, 2, 3]]
    assert pieces([20, 2, 2], 10) == [[0], [1, 2]]  # a row past the budget runs alone
    runs = pieces([5, 6, 7, 8, 9, 10, 11], 24)
    assert [i for run in runs for i in run] == list(range(7))
    assert all(len(run) * max([5, 6, 7, 8, 9, 10, 11][i] for i in run) <= 24 for run in runs)


def loop_for(module: AnswerLogProbs, features: list, pad_id: int) -> TrainingLoop:
    return TrainingLoop(module, None, features, [], pad_id, "cpu", 0, Path(), "", dict, print)  # type: ignore[arg-type]


class OneProcess(Share):
    def __init__(self) -> None:
        super().__init__(0, 1)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def gradients(module: AnswerLogProbs, loop: TrainingLoop, prompt: BatchPrompt) -> tuple[float, dict]:
    loss = loop._backward(module, OneProcess(), BATCH, prompt, WEIGHTS)  # type: ignore[arg-type]
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return float(loss), grads


@pytest.mark.parametrize("shared_block", [False, True])
def test_a_batch_in_pieces_has_the_whole_batchs_loss_and_gradients(
    shared_block: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = backend()
    module = lora_module(base)
    draw = blocks(base)
    prompt = draw.batch(1, BATCH)
    if not shared_block:  # the block written before each row: whole prompts, no block
        prompt = BatchPrompt([], [(prompt.block + p, a) for p, a in prompt.features], len(prompt.block))
    assert bool(prompt.block) == shared_block
    loop = loop_for(module, draw.features, base.pad_id)
    widest = max(len(p) + len(a) for p, a in prompt.features)
    monkeypatch.setattr(training_loop, "PIECE_TOKENS", len(BATCH) * widest)  # the whole batch at once
    whole_loss, whole = gradients(module, loop, prompt)
    monkeypatch.setattr(training_loop, "PIECE_TOKENS", 2 * widest)  # pieces of two rows
    assert len(pieces([len(p) + len(a) for p, a in prompt.features], 2 * widest)) == 3
    piece_loss, pieced = gradients(module, loop, prompt)
    assert piece_loss == pytest.approx(whole_loss, rel=1e-5)
    assert whole.keys() == pieced.keys() and whole
    for name, grad in whole.items():
        assert torch.allclose(grad, pieced[name], rtol=1e-4, atol=1e-7), name
