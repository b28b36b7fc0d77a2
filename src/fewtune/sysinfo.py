"""Peak memory of a phase: CUDA's allocator peak on a GPU, the process's resident high-water mark on CPU."""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path
from typing import Any

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _rss_high_water() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Context manager; ``bytes`` is the phase's peak (process peak where the OS cannot reset it)."""

    def __init__(self, device: Any) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            # "5" resets the resident-set high-water mark (Linux >= 4.0).
            with contextlib.suppress(OSError):
                _CLEAR_REFS.write_text("5")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.bytes = int(torch.cuda.max_memory_allocated())
        else:
            self.bytes = _rss_high_water() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Square matmul size for the peak measurement: large enough to reach the BLAS library's top speed.
PEAK_MATMUL_SIZE = 2048
_peak_cache: dict[tuple[str, str], float] = {}


def matmul_peak_flops(device: Any = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Best measured dense matmul FLOP/s on ``device`` in ``dtype`` (the MFU denominator).

    nanoGPT's ``estimate_mfu`` divides by a datasheet peak (A100: 312 TFLOPS bf16); CPUs have no single
    datasheet figure for PyTorch's kernels, so this measures what a large matmul reaches here.
    """
    key = (str(device), str(dtype))
    if key not in _peak_cache:
        a = torch.randn(PEAK_MATMUL_SIZE, PEAK_MATMUL_SIZE, device=device, dtype=dtype)
        b = torch.randn(PEAK_MATMUL_SIZE, PEAK_MATMUL_SIZE, device=device, dtype=dtype)
        best = float("inf")
        for _ in range(5):
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        _peak_cache[key] = 2 * PEAK_MATMUL_SIZE**3 / best
    return _peak_cache[key]


def lora_train_flops_per_token(
    model: Any, seq_len: float, answer_share: float, every_weight: bool = False
) -> float:
    """Training FLOPs per token for LoRA on a frozen decoder (or, ``every_weight``, for full fine-tuning).

    From the PaLM paper's appendix B count that nanoGPT's ``estimate_mfu`` uses, ``6N + 12*L*H*Q*T`` per
    token, adapted to frozen base weights: the backward pass computes activation gradients (2N) but no
    weight gradients, so weights cost 4N; attention scores keep 12*L*H*Q*T. The vocabulary projection runs
    only at answer positions: 4*V*d for each of those (forward and input gradient), spread over all tokens.
    Training every weight adds the weight gradients back: 6N, and 6*V*d at the answer positions.
    """
    config = model.config
    embed = config.vocab_size * config.hidden_size
    params = sum(p.numel() for p in model.parameters())
    non_embedding = params - embed  # Gemma ties the output layer to the input embeddings
    head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    passes = 6 if every_weight else 4
    return passes * non_embedding + attention + answer_share * passes * embed
