"""Peak resident memory and seconds of a LoRA training step on 8 rows of 320 tokens (the length of 8-shot
sst2 prompts), the batch run whole or in pieces of at most BUDGET row tokens (training.loop.PIECE_TOKENS).

    .venv/bin/python bench/training_pieces.py 100000   # whole
    .venv/bin/python bench/training_pieces.py 1024     # the default

Run each budget in its own process: the peak is the process's resident high-water mark (Linux).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from fewtune.backends.models import load_model, resolve_model
from fewtune.config import RunConfig
from fewtune.training import loop as training_loop
from fewtune.training.demo_block import BatchPrompt
from fewtune.training.lora import shared_copy

STATUS = Path("/proc/self/status")


def megabytes(field: str) -> int:
    line = next(line for line in STATUS.read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) // 1024


class OneProcess:
    processes = 1

    def share(self, batch: list[int]) -> list[int]:
        return list(batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def main() -> None:
    warnings.filterwarnings("ignore")
    budget = int(sys.argv[1])
    training_loop.PIECE_TOKENS = budget
    model, _ = load_model(resolve_model(RunConfig().model), precision="auto")
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(shared_copy(model), config)
    module = training_loop.AnswerLogProbs(peft_model, peft_model.get_base_model().get_decoder(), None)
    module.train()
    g = torch.Generator().manual_seed(0)
    features = [(torch.randint(10, 20000, (318,), generator=g).tolist(), [2, 3]) for _ in range(8)]
    loop = training_loop.TrainingLoop(module, None, features, [], 0, "cpu", 0, Path(), "", dict, print)  # type: ignore[arg-type]
    prompt = BatchPrompt([], features, 0)
    steps, losses = 3, []
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(float(loop._backward(module, OneProcess(), list(range(8)), prompt, [1.0] * 8)))  # type: ignore[arg-type]
        module.zero_grad(set_to_none=True)
    seconds = (time.perf_counter() - start) / steps
    print(f"budget {budget}: loss {losses[-1]:.5f}, peak {megabytes('VmHWM:')} MB, {seconds:.2f} s a step")


if __name__ == "__main__":
    main()
