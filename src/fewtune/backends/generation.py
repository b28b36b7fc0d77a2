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
task's ``output_end`` says its output is complete (extraction: the JSON object closed); once half a batch's
rows have stopped, the others go on in a smaller batch (:func:`_decode`).
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


# A batch goes on without its finished rows once no more than this share of them is left: decoding a row
# alone costs far less than a batch's step (Gemma 3 270M, float32, 2 cores, 660 tokens of context: 104 ms
# for one row, 204 ms for 4, 266 ms for 16), and a cut batch reuses its cache rows.
SHED_SHARE = 0.5


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


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
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
    with backend.precision.scoring():
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
        for batch in length_batches([len(s) for s in suffixes], batch_size):
            rows = [members[b] for b in batch]
            inputs = continuation_inputs(
                prefix_ids[:start], states, [suffixes[b] for b in batch], backend.pad_id, backend.model.config
            )
            new = _decode(backend, *inputs, max_new_tokens, stop, output_end, constraint)
            for r, row in enumerate(rows):
                results[row] = _generation(backend, new[r], len(prompt_ids[row]), stop, output_end)
            if progress:
                progress(len(rows))
    return [r for r in results if r is not None]


class Finished:
    """The one ``generate`` stopping criterion: each row's end (``criteria``: the stop marker, ``output_end``;
    or an EOS token in ``eos``), remembered in ``done``, and the whole batch's once no more than ``shed_at``
    rows are left, so that :func:`_decode` goes on with those in a smaller batch."""

    def __init__(self, criteria: Sequence[Any], eos: set[int], shed_at: int) -> None:
        self.criteria, self.eos, self.shed_at = criteria, torch.tensor(sorted(eos)), shed_at
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        hit = torch.isin(input_ids[:, -1], self.eos.to(input_ids.device))
        for criterion in self.criteria:
            hit = hit | criterion(input_ids, scores, **kwargs)
        self.done = hit if self.done is None else self.done | hit
        if int((~self.done).sum()) <= self.shed_at:
            return torch.ones_like(hit)
        return hit


def _eos_ids(backend: LocalModel) -> set[int]:
    """Every token ``generate`` ends a row at: the tokenizer's EOS and the generation config's."""
    configured = getattr(backend.model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return {i for i in (backend.tokenizer.eos_token_id, *ids) if i is not None}


def _decode(
    backend: LocalModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cache: Any,
    max_new_tokens: int,
    stop: str | None,
    output_end: OutputEnd | None,
    constraint: Callable[[], Any] | None,
) -> list[list[int]]:
    """Each row's new tokens (a row that stopped early is padded after its end).

    A batch decodes until at most half its rows are left unfinished (:data:`SHED_SHARE`); those go on in a
    smaller batch from where they are (their cache rows, their tokens so far), and so on: a row that runs
    to the cap no longer makes every finished row of its batch decode with it. Not with a ``constraint``:
    its logits processor holds every row's grammar state.
    """
    from transformers import StoppingCriteriaList

    criteria = list(stop_at(backend.tokenizer, stop).get("stopping_criteria", []))
    if output_end is not None:
        criteria.append(Complete(backend.tokenizer, ids.shape[1], output_end))
    cache = cache if cache is not None else filled_cache([], backend.model.config)
    eos, live, left = _eos_ids(backend), list(range(ids.shape[0])), max_new_tokens
    tokens: list[list[int]] = [[] for _ in live]
    while True:
        shed_at = int(len(live) * SHED_SHARE) if constraint is None else 0
        finished = Finished(criteria, eos, shed_at)
        out = backend.model.generate(
            input_ids=ids.to(backend.device),
            attention_mask=mask.to(backend.device),
            max_new_tokens=left,
            do_sample=False,
            pad_token_id=backend.pad_id,
            stopping_criteria=StoppingCriteriaList([finished]),
            **({"logits_processor": [constraint()]} if constraint is not None else {}),
            **with_cache(cache),
        ).cpu()
        steps = out.shape[1] - ids.shape[1]
        for r, row in enumerate(live):
            tokens[row] += out[r, ids.shape[1] :].tolist()
        left -= steps
        going = [r for r in range(len(live)) if finished.done is not None and not finished.done[r]]
        if not going or left <= 0 or constraint is not None:
            return tokens
        keep = torch.tensor(going)
        cache.batch_select_indices(keep.to(backend.device))
        ids = out[keep]
        mask = torch.cat([mask[keep], torch.ones((len(going), steps), dtype=mask.dtype)], dim=1)
        live = [live[r] for r in going]


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
    text, complete = _cut(decode_answer(backend.tokenizer, tokens), stop, output_end)
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
