"""A tiny randomly initialised Gemma 3 and a byte-level BPE tokenizer, built in memory (no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = [
    "Classify the input into exactly one label.",
    "Labels: negative, positive, complaint, inquiry, praise, cancellation",
    "Input: the film is great fun Output: positive",
    "Input: a dull and tired story Output: negative",
    "Answer with the label only. ---",
]


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def tiny_model(tokenizer: Any, seed: int = 0, sliding_window: int = 16) -> Any:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Gemma3ForCausalLM(config).eval()


def save_tiny(folder: Path, seed: int = 0, sliding_window: int = 16) -> Path:
    """Write a tiny model folder that ``--model`` accepts."""
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer, seed, sliding_window).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
