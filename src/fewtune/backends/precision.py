"""The number format a local model computes in: float32, or bfloat16 where the hardware has units for it.

``--precision auto`` (the default) picks bfloat16 on a CUDA GPU that supports it and on a CPU with bf16
units (AVX-512 BF16 or AMX, where oneDNN runs bf16 matrix products natively: Gemma 3 270M's decoder over
8x320 tokens took 4.40 s in float32 and 2.13 s under bf16 autocast on the 2-core AVX-512 BF16 machine
docs/benchmarks.md names), and float32 elsewhere. ``--precision bf16`` on a CPU without those units is
refused: emulated bf16 would be slower than float32, not faster.

On a GPU the weights are loaded in bfloat16. On a CPU they stay float32 and the decoder runs under
``torch.autocast`` in bfloat16 (mixed precision, Micikevicius et al. 2018): matrix products in bf16,
norms, softmax and residual sums in float32; LoRA weights, their gradients and AdamW's states stay
float32; the output layer, the log-softmax and the label scores are computed in float32 outside autocast
(:meth:`Precision.exact`). A LoRA adapter trained in bf16 is not merged into the weights: ``W + BA``
rounded to bf16 (8 significant bits) would keep little of an update that is a fraction of a percent of
``W``, so it runs beside the base as peft applies it, the way ``fewtune serve`` runs adapters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads on first use: the CLI and config.py import this module for its names
    import torch

AUTO, FP32, BF16 = "auto", "fp32", "bf16"
PRECISIONS = (AUTO, FP32, BF16)


def cpu_bf16_units() -> bool:
    """This CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), as torch's CPU build detects it."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def bf16_supported(device: str) -> bool:
    """bfloat16 runs natively on ``device`` ("cpu", "cuda:0", ...)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return cpu_bf16_units()


@dataclass(frozen=True)
class Precision:
    """How a model on one device computes: the weights' dtype, and the autocast dtype of training and of
    scoring (None: none)."""

    device_type: str
    weights: torch.dtype
    train: torch.dtype | None = None
    """Autocast while training (the decoder's forward and backward)."""
    score: torch.dtype | None = None
    """Autocast while scoring and generating."""

    @classmethod
    def of(cls, precision: str, device: str) -> Precision:
        """``precision`` (auto, fp32, bf16) on ``device``; auto resolves to what the hardware runs fast
        (on a CPU: training in bf16, scoring in float32; see the module docstring)."""
        import torch

        device_type = device.split(":")[0]
        if precision == FP32 or (precision == AUTO and not bf16_supported(device)):
            return cls(device_type, torch.float32)
        if device_type == "cuda":
            return cls(device_type, torch.bfloat16)
        score = torch.bfloat16 if precision == BF16 else None
        return cls(device_type, torch.float32, torch.bfloat16, score)

    @property
    def name(self) -> str:
        """What a results row records: the dtype scoring's matrix products run in."""
        return str(self.score or self.weights).removeprefix("torch.")

    @property
    def train_name(self) -> str:
        """The dtype training's matrix products run in."""
        return str(self.train or self.weights).removeprefix("torch.")

    @property
    def mixed(self) -> bool:
        """float32 weights scored in a lower precision (a CPU in bf16): an adapter is not merged."""
        return self.score is not None

    def training(self) -> contextlib.AbstractContextManager[None]:
        """The context a training forward pass runs in (autocast, or nothing)."""
        return _autocast(self.device_type, self.train)

    def scoring(self) -> contextlib.AbstractContextManager[None]:
        """The context a scoring or generating forward pass runs in (autocast, or nothing)."""
        return _autocast(self.device_type, self.score)

    @contextlib.contextmanager
    def exact(self) -> Iterator[None]:
        """The weights' own dtype inside any autocast block: for the output layer and the log-softmax."""
        import torch

        with torch.autocast(self.device_type, enabled=False):
            yield


def _autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


AUTOCAST_ATTRIBUTE = "fewtune_autocast"


def mark(model: Any, precision: Precision) -> None:
    """Record on ``model`` the autocast it trains and scores under (read back by :func:`of_model`)."""
    names = tuple(
        None if t is None else str(t).removeprefix("torch.") for t in (precision.train, precision.score)
    )
    setattr(model, AUTOCAST_ATTRIBUTE, names)


def of_model(model: Any) -> Precision:
    """The precision a loaded model runs in: its weights' dtype, plus the autocasts :func:`mark` set (an
    attribute of the model object: copies, peft's wrappers and merged models carry it; no saved file does)."""
    import torch

    first = next(model.parameters())
    train, score = getattr(model, AUTOCAST_ATTRIBUTE, None) or (None, None)
    dtypes = [None if name is None else getattr(torch, name) for name in (train, score)]
    return Precision(first.device.type, first.dtype, *dtypes)
