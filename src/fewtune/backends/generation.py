"""Batched greedy generation for the local Hugging Face backend, reusing the demo block's KV cache.

The shared prefix (task line, output format, demos, ``Input:``) is run once; each batch of rows copies its
cache and continues from it with ``transformers``' ``generate`` (greedy), so every row pays only for its own
input and output. Rows are sorted by length and left-padded after the prefix: the padding sits between
prefix and input, masked out, and position ids come from the attention mask, so a row's tokens keep the
positions they would have alone.

A sliding-window layer counts masked padding as window slots, so padding between prefix and input would
change what a row that outgrows the window (prompt plus new tokens) sees. Such rows are generated whole
instead, left-padded in front of the prompt: every row's real tokens are then contiguous, slot distance
equals position distance, and the window is exact. They pay for the prefix again, but they share batches:
a long-output task (support replies of a few hundred tokens behind five demos) is dominated by decoding
steps, which a batch shares, not by the prefix. Generation stops at the end-of-output marker
(:func:`stop_at`), at EOS, or at ``max_new_tokens``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from fewtune.backends.base import Generation, ProgressFn
from fewtune.backends.kvcache import with_cache
from fewtune.backends.precision import Precision


class LocalModel(Protocol):
    """What generation needs of a local backend (:class:`~fewtune.backends.hf.HFBackend` has it)."""

    model: Any
    tokenizer: Any
    pad_id: int
    device: Any
    prefix_caching: bool
    precision: Precision

    def encode_prompt(self, text: str) -> list[int]: ...

    def prefix_cache(self, prefix_ids: list[int]) -> Any: ...

    def fits_window(self, tokens: int) -> bool: ...


@functools.lru_cache(maxsize=16)
def _stop_criteria(tokenizer: Any, stop: str) -> Any:
    from transformers import StopStringCriteria

    return StopStringCriteria(tokenizer, [stop])


def stop_at(tokenizer: Any, stop: str | None) -> dict[str, Any]:
    """``generate`` keyword arguments that end generation once ``stop`` is written.

    ``stop_strings=`` would build a :class:`~transformers.StopStringCriteria` on every call, which reads and
    compares the whole vocabulary (1.2 s for Gemma's 262k tokens on 2 CPU cores, measured, against 0.33 s
    for a whole 8-shot label generation); it is built once per tokenizer and stop string instead. It holds
    no state between calls.
    """
    if not stop:
        return {}
    from transformers import StoppingCriteriaList

    return {"stopping_criteria": StoppingCriteriaList([_stop_criteria(tokenizer, stop)])}


UNFLAGGED_CONTROL_TOKENS = frozenset(
    {"<start_of_image>", "<end_of_image>", "<image_soft_token>", "[multimodal]"}
)
"""Gemma 3's image markers: control tokens its tokenizer.json does not flag special (unlike ``<end_of_turn>``;
the HTML tags added beside them are text), so ``decode(skip_special_tokens=True)`` writes them out: a
fine-tuned model's chat answer carried ``<start_of_image>``."""


@functools.lru_cache(maxsize=16)
def special_ids(tokenizer: Any) -> frozenset[int]:
    """Ids an answer never shows as text: the tokenizer's special tokens, every added token its vocabulary
    flags special, and the control tokens it does not flag (:data:`UNFLAGGED_CONTROL_TOKENS`)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        added = backend.get_added_tokens_decoder().items()
        ids |= {i for i, token in added if token.special or token.content in UNFLAGGED_CONTROL_TOKENS}
    return frozenset(ids)


def decode_answer(tokenizer: Any, tokens: Sequence[int]) -> str:
    """The text of generated ``tokens`` without special tokens (:func:`special_ids`)."""
    skip = special_ids(tokenizer)
    return str(tokenizer.decode([t for t in tokens if t not in skip], skip_special_tokens=True))


def _cut(text: str, stop: str | None) -> tuple[str, bool]:
    if stop and stop in text:
        return text[: text.index(stop)], True
    return text, False


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length (sorted), so that little padding is computed."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def generate_batch(
    backend: LocalModel,
    prompts: Sequence[str],
    *,
    prefix: str = "",
    max_new_tokens: int = 64,
    stop: str | None = None,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
    constraint: Callable[[], Any] | None = None,
) -> list[Generation]:
    """Greedy continuations of ``prompts``; ``constraint()`` makes a fresh logits processor per batch
    (constrained decoding). The model runs in its backend's precision."""
    with backend.precision.scoring():
        return _generate(backend, prompts, prefix, max_new_tokens, stop, batch_size, progress, constraint)


def _generate(
    backend: LocalModel,
    prompts: Sequence[str],
    prefix: str,
    max_new_tokens: int,
    stop: str | None,
    batch_size: int,
    progress: ProgressFn | None,
    constraint: Callable[[], Any] | None,
) -> list[Generation]:
    tokenizer, model = backend.tokenizer, backend.model
    prompt_ids = [backend.encode_prompt(p) for p in prompts]
    prefix_ids = backend.encode_prompt(prefix) if prefix and backend.prefix_caching else []
    cut = len(prefix_ids)
    shared = [
        bool(cut)
        and len(ids) > cut
        and ids[:cut] == prefix_ids
        and backend.fits_window(len(ids) + max_new_tokens)
        for ids in prompt_ids
    ]
    results: list[Generation | None] = [None] * len(prompts)
    eos = tokenizer.eos_token_id
    for members, width_cut in (
        ([i for i, s in enumerate(shared) if s], cut),
        ([i for i, s in enumerate(shared) if not s], 0),
    ):
        if not members:
            continue
        cache = backend.prefix_cache(prefix_ids) if width_cut else None
        suffixes = [prompt_ids[i][width_cut:] for i in members]

        for batch in _batches([len(s) for s in suffixes], batch_size):
            rows = [members[b] for b in batch]
            group = [suffixes[b] for b in batch]
            width = max(len(s) for s in group)
            ids = torch.full((len(group), width_cut + width), backend.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, suffix in enumerate(group):
                ids[r, :width_cut] = torch.tensor(prefix_ids[:width_cut], dtype=torch.long)
                ids[r, width_cut + width - len(suffix) :] = torch.tensor(suffix)
                mask[r, :width_cut] = 1
                mask[r, width_cut + width - len(suffix) :] = 1
            kwargs: dict[str, Any] = {}
            if cache is not None:
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(group))
                kwargs.update(with_cache(batch_cache))
            kwargs.update(stop_at(tokenizer, stop))
            if constraint is not None:
                kwargs["logits_processor"] = [constraint()]
            out = model.generate(
                input_ids=ids.to(backend.device),
                attention_mask=mask.to(backend.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=backend.pad_id,
                **kwargs,
            )
            new = out[:, ids.shape[1] :].cpu()
            for r, row in enumerate(rows):
                tokens = new[r].tolist()
                ended = eos in tokens
                if ended:
                    tokens = tokens[: tokens.index(eos) + 1]
                else:
                    while tokens and tokens[-1] == backend.pad_id and backend.pad_id != eos:
                        tokens.pop()
                text, stopped = _cut(decode_answer(tokenizer, tokens), stop)
                results[row] = Generation(text, len(prompt_ids[row]), len(tokens), stopped or ended)
            if progress:
                progress(len(rows))
    return [r for r in results if r is not None]


def json_schema_constraint(backend: LocalModel, schema: Mapping[str, Any]) -> Callable[[], Any]:
    """A factory of xgrammar logits processors that allow only compact JSON matching ``schema``, after the
    space that follows ``Output:``.

    xgrammar (the structured-generation engine vLLM and SGLang default to) is chosen over outlines,
    llguidance and lm-format-enforcer because it works with this transformers version on CPU through its
    own ``LogitsProcessor``, compiles a 39-field schema against Gemma's 262k-token vocabulary in about 2 s,
    and takes the same ``separators`` that fewtune renders targets with.
    """
    import json

    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(backend.tokenizer, vocab_size=backend.model.config.vocab_size)
    grammar = xgr.Grammar.concat(
        xgr.Grammar.from_ebnf('root ::= " "'),
        xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":")),
    )
    compiled = xgr.GrammarCompiler(info).compile_grammar(grammar)
    return lambda: xgr.contrib.hf.LogitsProcessor(compiled)
