"""What a training recipe asks of the machine, checked before any model loads (one-line errors).

- ``--precision bf16`` needs a device with native bf16 (a CUDA GPU that supports it, or a CPU with AVX-512
  BF16 or AMX: :mod:`fewtune.backends.precision`); QLoRA (``--quantize nf4``) needs a CUDA GPU and
  bitsandbytes. Elsewhere they are refused, not attempted.
- Full fine-tuning holds, besides the base model the prompting rows use, a trained copy with a gradient and
  AdamW's two moments per weight: 1 + 1 + 1 + 2 = 5 more model-sized tensors, 6 in all, at the weights'
  dtype (torch's AdamW keeps its states like the parameters; the count is ZeRO's, Rajbhandari et al. 2020,
  section 3.1, without its fp32 master copy), plus activations. A model whose estimate exceeds the memory
  the device has free is refused before it is loaded, with the figures.
"""

from __future__ import annotations

from pathlib import Path

from fewtune.config import RunConfig
from fewtune.errors import ConfigError
from fewtune.methods import Method

# Activations, allocator slack and the scoring batches on top of the weights and optimizer states: a
# margin, not a measurement of any one model (docs/training.md sets it beside the sst2 full-ft row's peak).
ACTIVATION_MARGIN = 1.25


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_hardware(cfg: RunConfig) -> None:
    """Refuse recipes this machine cannot run: bf16/QLoRA without a GPU, full-ft past the free memory."""
    from fewtune.backends.endpoint import is_endpoint
    from fewtune.backends.precision import BF16, bf16_supported

    args = cfg.lora
    if args.precision == BF16 and not bf16_supported("cuda" if cuda_available() else "cpu"):
        raise ConfigError(
            "--precision bf16 needs native bf16 (a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or "
            "AMX), and this machine has neither: leave it out (auto runs float32 here)"
        )
    if args.quantize == "nf4" and not cuda_available():
        raise ConfigError(
            "--quantize nf4 needs a CUDA GPU, and this machine has none (torch sees no CUDA device): "
            "leave it out"
        )
    if args.quantize == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--quantize nf4 (QLoRA) needs the bitsandbytes package: pip install bitsandbytes"
            ) from None
    if Method.FULL_FT in cfg.eval.methods and not is_endpoint(cfg.model):
        check_full_ft_memory(cfg)


def parameter_count(folder: Path) -> int:
    """The model's parameter count from its config alone (an empty model on the meta device)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return int(sum(p.numel() for p in model.parameters()))


def free_bytes(gpu: bool) -> int:
    """Memory free for training now: the GPU's free memory, or the system's available memory."""
    if gpu:
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def full_ft_bytes(parameters: int, weight_bytes: int) -> int:
    """Estimated peak of full fine-tuning next to the loaded base model (see the module's docstring)."""
    model = parameters * weight_bytes
    return int(6 * model * ACTIVATION_MARGIN)


def check_full_ft_memory(cfg: RunConfig) -> None:
    from fewtune.backends.models import resolve_model

    folder = resolve_model(cfg.model)
    parameters = parameter_count(folder)
    gpu = cuda_available()
    from fewtune.backends.precision import Precision

    weights = Precision.of(cfg.lora.precision, "cuda" if gpu else "cpu").weights
    need = full_ft_bytes(parameters, weights.itemsize)
    free = free_bytes(gpu)
    if need > free:
        where = "GPU" if gpu else "RAM"
        raise ConfigError(
            f"full-ft of {cfg.model} ({parameters / 1e6:.0f}M parameters) needs about {need / 2**30:.1f} GiB "
            f"(base model, trained copy, gradients and AdamW's two moments, +{ACTIVATION_MARGIN - 1:.0%} for "
            f"activations) and this machine has {free / 2**30:.1f} GiB of {where} free: leave full-ft out of "
            "--methods, or train it under accelerate with DeepSpeed ZeRO (docs/training.md)"
        )
