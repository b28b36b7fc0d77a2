"""Batched greedy generation for the local Hugging Face backend, reusing the demo block's KV cache.

The shared prefix (task line, output format, demos, ``Input:``) is run once; each batch of rows continues
from its cache with ``transformers``' ``generate`` (greedy), so every row pays only for its own input and
output. Rows are sorted by length and batched, and a batch is laid out so that every row's real tokens are
contiguous and end together (:func:`continuation_inputs`): a row shorter than the batch's longest takes the
last few prefix tokens into its input in place of padding, and its copy of the cache starts with as many
masked slots. Position ids come from the attention mask, so every token keeps the position it has alone, and
slot distance equals position distance, which a sliding-window layer needs: it counts masked slots as window
slots, so padding between prefix and input would change what a row that outgrows the window sees (an 8-shot
extraction prompt is longer than Gemma 3's 512-token window). Re-reading those prefix tokens costs what the
padding would have.

Each row stops at the end-of-output marker (:func:`stop_at`), at EOS, at ``max_new_tokens``, or where the
task's ``output_end`` says its output is complete (extraction: the JSON object closed); a batch runs until
its last row stops.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from fewtune.backends.base import Generation, OutputEnd, ProgressFn
from fewtune.backends.kvcache import filled_cache, layer_states, with_cache
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

    def prefix_cache(self, prefix_ids: list[int], keep_all: bool = False) -> Any: ...


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


class Complete:
    """A ``generate`` stopping criterion: the rows whose output ``output_end`` finds complete.

    It decodes each row's new tokens (after the first ``start`` columns) at every step: a few rows of a few
    dozen tokens, microseconds against a decoding step. transformers asks only that it be callable like its
    ``StoppingCriteria`` (subclassing would import transformers with this module).
    """

    def __init__(self, tokenizer: Any, start: int, output_end: OutputEnd) -> None:
        self.tokenizer, self.start, self.output_end = tokenizer, start, output_end

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([self.output_end(t) is not None for t in texts], device=input_ids.device)


def _cut(text: str, stop: str | None, output_end: OutputEnd | None) -> tuple[str, bool]:
    """``text`` up to the stop marker or the end of a complete output, whichever comes first."""
    ends = [text.index(stop)] if stop and stop in text else []
    complete = output_end(text) if output_end else None
    if complete is not None:
        ends.append(complete)
    return (text[: min(ends)], True) if ends else (text, False)


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length (sorted), so that few prefix tokens are re-read."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _shifted(states: torch.Tensor, shifts: Sequence[int]) -> torch.Tensor:
    """``[1, heads, slots, dim]`` -> ``[rows, heads, slots, dim]``: row ``r`` moved ``shifts[r]`` slots later,
    zeros in front (its last ``shifts[r]`` slots dropped)."""
    out = states.new_zeros((len(shifts), *states.shape[1:]))
    slots = states.shape[2]
    for r, shift in enumerate(shifts):
        out[r, :, shift:] = states[0, :, : slots - shift]
    return out


def continuation_inputs(
    prefix_ids: Sequence[int],
    prefix_states: Sequence[tuple[torch.Tensor, torch.Tensor]],
    suffixes: Sequence[list[int]],
    pad_id: int,
    config: Any,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Input ids and attention mask ``[rows, len(prefix) + width]`` and a cache of the first ``len(prefix)``
    columns (None without a prefix) for a batch of rows that each continue ``prefix_ids`` with their suffix
    (``width``: the longest suffix).

    The layout is that of whole prompts, left-padded: a row ``taken`` tokens shorter than the longest starts
    ``taken`` columns in, so its real tokens are contiguous and end at the last column. Its cache is the
    prefix's (``prefix_states``: every layer's keys and values of the whole prefix, ``[1, kv_heads, prefix,
    head_dim]``) moved ``taken`` slots later, and ``generate`` feeds it the prefix's last ``taken`` tokens
    again with its suffix, where padding would otherwise go. A row shorter by more than the prefix keeps
    nothing of the cache.
    """
    cut, width = len(prefix_ids), max(len(s) for s in suffixes)
    ids = torch.full((len(suffixes), cut + width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    taken = [min(width - len(s), cut) for s in suffixes]
    for r, suffix in enumerate(suffixes):
        row = [*prefix_ids, *suffix]
        ids[r, cut + width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[r, cut + width - len(row) :] = 1
    if not cut:
        return ids, mask, None
    states = [(_shifted(keys, taken), _shifted(values, taken)) for keys, values in prefix_states]
    return ids, mask, filled_cache(states, config)


# Not inference_mode: under it autocast casts every float32 weight to bf16 again at each forward pass (its
# cast cache holds only weights autograd tracks), which for Gemma 3 270M was 1.1 GB read and 125 ms of a
# 270 ms decoding step (batch 16, measured); under no_grad each weight is cast once per call.
@torch.no_grad()
def generate_batch(
    backend: LocalModel,
    prompts: Sequence[str],
    *,
    prefix: str = "",
    max_new_tokens: int = 64,
    stop: str | None = None,
    output_end: OutputEnd | None = None,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
    constraint: Callable[[], Any] | None = None,
) -> list[Generation]:
    """Greedy continuations of ``prompts``, each cut at ``stop`` or where ``output_end`` finds it complete;
    ``constraint()`` makes a fresh logits processor per batch (constrained decoding). The model runs in its
    backend's precision."""
    with backend.precision.compute():
        return _generate(
            backend, prompts, prefix, max_new_tokens, stop, output_end, batch_size, progress, constraint
        )


def _generate(
    backend: LocalModel,
    prompts: Sequence[str],
    prefix: str,
    max_new_tokens: int,
    stop: str | None,
    output_end: OutputEnd | None,
    batch_size: int,
    progress: ProgressFn | None,
    constraint: Callable[[], Any] | None,
) -> list[Generation]:
    prompt_ids = [backend.encode_prompt(p) for p in prompts]
    prefix_ids = backend.encode_prompt(prefix) if prefix and backend.prefix_caching else []
    cut = len(prefix_ids)
    # A prompt whose tokens merge across the prefix boundary (or any prompt, without a prefix) runs whole.
    shared = [bool(cut) and len(ids) > cut and ids[:cut] == prefix_ids for ids in prompt_ids]
    results: list[Generation | None] = [None] * len(prompts)
    for members, start in (
        ([i for i, s in enumerate(shared) if s], cut),
        ([i for i, s in enumerate(shared) if not s], 0),
    ):
        if not members:
            continue
        states = layer_states(backend.prefix_cache(prefix_ids, keep_all=True)) if start else []
        suffixes = [prompt_ids[i][start:] for i in members]
        for batch in _batches([len(s) for s in suffixes], batch_size):
            rows = [members[b] for b in batch]
            inputs = continuation_inputs(
                prefix_ids[:start], states, [suffixes[b] for b in batch], backend.pad_id, backend.model.config
            )
            new = _decode(backend, *inputs, max_new_tokens, stop, output_end, constraint)
            for r, row in enumerate(rows):
                results[row] = _generation(backend, new[r].tolist(), len(prompt_ids[row]), stop, output_end)
            if progress:
                progress(len(rows))
    return [r for r in results if r is not None]


def _decode(
    backend: LocalModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cache: Any,
    max_new_tokens: int,
    stop: str | None,
    output_end: OutputEnd | None,
    constraint: Callable[[], Any] | None,
) -> torch.Tensor:
    """The new tokens ``[rows, steps]`` of one batch (a row that stopped early is padded)."""
    kwargs: dict[str, Any] = with_cache(cache) if cache is not None else {}
    kwargs.update(stop_at(backend.tokenizer, stop))
    if output_end is not None:
        from transformers import StoppingCriteriaList

        criteria = kwargs.get("stopping_criteria") or StoppingCriteriaList()
        complete = Complete(backend.tokenizer, ids.shape[1], output_end)
        kwargs["stopping_criteria"] = StoppingCriteriaList([*criteria, complete])
    if constraint is not None:
        kwargs["logits_processor"] = [constraint()]
    out = backend.model.generate(
        input_ids=ids.to(backend.device),
        attention_mask=mask.to(backend.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=backend.pad_id,
        **kwargs,
    )
    return out[:, ids.shape[1] :].cpu()


def _generation(
    backend: LocalModel, tokens: list[int], prompt_tokens: int, stop: str | None, output_end: OutputEnd | None
) -> Generation:
    """One row's output: its tokens up to EOS (kept) or without the padding after an early stop, decoded and
    cut."""
    eos = backend.tokenizer.eos_token_id
    ended = eos in tokens
    if ended:
        tokens = tokens[: tokens.index(eos) + 1]
    else:
        while tokens and tokens[-1] == backend.pad_id and backend.pad_id != eos:
            tokens.pop()
    text, complete = _cut(backend.tokenizer.decode(tokens, skip_special_tokens=True), stop, output_end)
    return Generation(text, prompt_tokens, len(tokens), complete or ended)


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
