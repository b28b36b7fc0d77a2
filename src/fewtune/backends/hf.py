"""Local Hugging Face causal LM backend: batched label log-likelihood and greedy generation.

Scoring a row costs one pass over the part of its prompt that differs from the others: the shared prefix
(task line and demos) is run once and its KV cache reused for every row (prefix caching, as vLLM and SGLang
do); the first token of every label is read from the row's last position, and the remaining label tokens
of all labels run as a batch against copies of the row's cache. Rows are grouped by exact suffix length so
no batch needs padding. Logits are computed only at the positions that predict label tokens; a
full-vocabulary projection at every prompt position would cost more than the rest of a 270M model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fewtune.backends.base import Backend, ProgressFn

# Label continuations (rows x labels) run against the cached prompt in one batch of at most this many
# sequences; bounds the KV-cache copies (about 36 KB per token per sequence for Gemma 3 270M).
MAX_CONTINUATION_SEQUENCES = 64
# Positions projected onto the vocabulary at once: 256 x 262k float32 logits is about 270 MB.
LOGIT_CHUNK_POSITIONS = 256


class HFBackend(Backend):
    """Wraps a ``transformers`` causal LM (optionally with LoRA merged in) and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "hf", source: str = "") -> None:
        self.model = model.eval()
        self.source = source  # the model folder, recorded in saved adapters
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.prefix_caching = True
        """Reuse the KV cache of a prefix shared by every prompt (the demo block); off = score each whole."""
        self._cached_prefix: tuple[tuple[int, ...], Any] | None = None

    # -- tokens ---------------------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)

    def encode_continuation(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def count_tokens(self, text: str) -> int:
        return len(self.encode_prompt(text))

    # -- model pieces ---------------------------------------------------------------------------------
    def _decoder(self) -> Any:
        return self.model.get_decoder()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits for hidden states ``[..., H]`` -> ``[..., V]`` (float32, soft-capped)."""
        logits = self.model.get_output_embeddings()(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-probabilities for hidden states ``[..., H]`` -> ``[..., V]`` (float32)."""
        return torch.log_softmax(self.logits(hidden), dim=-1)

    def _prefix_cache(self, prefix_ids: list[int]) -> Any:
        """KV cache of the shared prefix, computed once per distinct prefix (kept for the last one)."""
        key = tuple(prefix_ids)
        if self._cached_prefix is None or self._cached_prefix[0] != key:
            ids = torch.tensor([prefix_ids], device=self.device)
            cache = self._decoder()(input_ids=ids, use_cache=True).past_key_values
            self._cached_prefix = (key, cache)
        return self._cached_prefix[1]

    @torch.inference_mode()
    def _score_batch(
        self,
        prefix_cache: Any,
        prefix_len: int,
        suffixes: Sequence[list[int]],
        choices: Sequence[list[int]],
        rows: Sequence[int],
        projector: _Projector,
    ) -> None:
        """Run a batch of rows (suffixes after a cached prefix of ``prefix_len`` tokens) and queue their label
        positions for ``projector``.

        Suffixes are right-padded to the longest: a causal model never looks ahead, so no real token sees
        the padding and the first pass needs no mask. Label continuations come after the padding, so that
        pass masks the padded slots (see :meth:`_batches` for when that is allowed).
        """
        count, labels = len(suffixes), len(choices)
        lengths = torch.tensor([len(s) for s in suffixes])
        width = int(lengths.max())
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(count)
        ids = torch.full((count, width), self.pad_id, dtype=torch.long)
        for i, suffix in enumerate(suffixes):
            ids[i, : len(suffix)] = torch.tensor(suffix)
        positions = (prefix_len + torch.arange(width)).expand(count, width)
        out = self._decoder()(
            input_ids=ids.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
        )
        # The first token of every label is predicted at the row's last real position.
        last = out.last_hidden_state[torch.arange(count), lengths - 1]
        first = torch.tensor([c[0] for c in choices])
        projector.add(last, first.expand(count, labels), rows, np.arange(labels))
        longest = max(len(c) for c in choices)
        if longest == 1:
            return
        # Feed choice tokens [:-1] for every (row, label) pair against the row's cache. Shorter choices
        # are padded at the end, which a causal model never looks back at.
        cache = out.past_key_values
        cache.batch_repeat_interleave(labels)
        steps = longest - 1
        cont = torch.full((labels, steps), self.pad_id, dtype=torch.long)
        targets = torch.zeros((labels, steps), dtype=torch.long)
        valid = torch.zeros((labels, steps), dtype=torch.bool)
        for j, choice in enumerate(choices):
            cont[j, : len(choice) - 1] = torch.tensor(choice[:-1])
            targets[j, : len(choice) - 1] = torch.tensor(choice[1:])
            valid[j, : len(choice) - 1] = True
        cont, targets, valid = (t.repeat(count, 1) for t in (cont, targets, valid))
        pair_length = lengths.repeat_interleave(labels)  # row-major: row 0's labels, then row 1's, ...
        cont_pos = prefix_len + pair_length[:, None] + torch.arange(steps)
        mask = None
        if int(lengths.min()) < width:
            # Hide each row's padding from its continuation tokens (the prefix and real tokens stay visible).
            slot = torch.arange(prefix_len + width + steps)
            mask = ~((slot >= prefix_len + pair_length[:, None]) & (slot < prefix_len + width))
            mask = mask.to(self.device)
        hidden = self._decoder()(
            input_ids=cont.to(self.device),
            position_ids=cont_pos.to(self.device),
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        pair_row = np.repeat(np.asarray(rows), labels * steps).reshape(count * labels, steps)
        pair_label = np.tile(np.repeat(np.arange(labels), steps), count).reshape(count * labels, steps)
        keep = valid.numpy()
        projector.add(
            hidden[valid.to(self.device)], targets[valid][:, None], pair_row[keep], pair_label[keep][:, None]
        )

    def _batches(
        self, lengths: Sequence[int], prefix_len: int, rows_per_batch: int, steps: int
    ) -> list[list[int]]:
        """Length-bucketed batches: rows sorted by suffix length, cut into runs of ``rows_per_batch``.

        Padding is masked in the continuation pass only while a sliding-window layer still holds every token
        (prompt + continuation shorter than the window); beyond that, a batch holds one exact length.
        """
        window = getattr(self.model.config, "sliding_window", None)
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        for i in order:
            padded_ok = steps == 0 or not window or prefix_len + lengths[i] + steps < window
            current = batches[-1] if batches else None
            if (
                current is None
                or len(current) >= rows_per_batch
                or (not padded_ok and lengths[current[0]] != lengths[i])
            ):
                batches.append([i])
            else:
                current.append(i)
        return batches

    @torch.inference_mode()
    def score_choices(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        batch_size: int = 16,
        progress: ProgressFn | None = None,
        prefix: str = "",
    ) -> np.ndarray:
        choice_ids = [self.encode_continuation(c) for c in choices]
        if any(not c for c in choice_ids):
            raise ValueError("every choice must have at least one token")
        steps = max(len(c) for c in choice_ids) - 1
        prompt_ids = [self.encode_prompt(p) for p in prompts]
        prefix_ids = self.encode_prompt(prefix) if prefix and self.prefix_caching else []
        # Rows that start with the cached prefix, and the rest: a prompt whose tokens merge across the
        # prefix boundary (or any prompt, without a prefix) is scored whole.
        shared: list[int] = []
        whole: list[int] = []
        for i, ids in enumerate(prompt_ids):
            starts = bool(prefix_ids) and len(ids) > len(prefix_ids) and ids[: len(prefix_ids)] == prefix_ids
            (shared if starts else whole).append(i)
        rows_per_batch = max(1, min(batch_size, MAX_CONTINUATION_SEQUENCES // len(choices)))
        scores = np.zeros((len(prompts), len(choices)))
        projector = _Projector(self, scores)
        for members, cut in ((shared, len(prefix_ids)), (whole, 0)):
            if not members:
                continue
            cache = self._prefix_cache(prefix_ids) if cut else None
            suffixes = [prompt_ids[i][cut:] for i in members]
            for batch in self._batches([len(s) for s in suffixes], cut, rows_per_batch, steps):
                rows = [members[b] for b in batch]
                self._score_batch(cache, cut, [suffixes[b] for b in batch], choice_ids, rows, projector)
                if progress:
                    progress(len(batch))
        projector.flush()
        return scores

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 10) -> list[str]:
        texts = []
        for prompt in prompts:
            ids = torch.tensor([self.encode_prompt(prompt)], device=self.device)
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
            texts.append(self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        return texts


class _Projector:
    """Adds ``log p(token)`` at queued positions into ``scores``, projecting onto the vocabulary in chunks.

    The output layer (262k x 640 for Gemma 3) is read from memory once per chunk of up to
    ``LOGIT_CHUNK_POSITIONS`` positions gathered across batches; projecting each small batch on its own
    makes scoring memory-bound on that one matrix (about 2 of the 10 s that sst2's 200 rows took).
    """

    def __init__(self, backend: HFBackend, scores: np.ndarray) -> None:
        self.backend = backend
        self.scores = scores
        self.hidden: list[torch.Tensor] = []
        # One entry per wanted log-probability: position (index into the queued hidden states), target
        # token, and the cell of ``scores`` it is added to.
        self.wanted: list[np.ndarray] = []
        self.queued = 0

    def add(self, hidden: torch.Tensor, targets: torch.Tensor, rows: Any, labels: np.ndarray) -> None:
        """Queue ``hidden [N, H]``; ``log p(targets[n, t])`` is added to ``scores[rows[n], labels[n, t]]``."""
        if not len(hidden):
            return
        tgt = targets.cpu().numpy()
        position = np.broadcast_to(self.queued + np.arange(len(hidden))[:, None], tgt.shape)
        row = np.broadcast_to(np.asarray(rows)[:, None], tgt.shape)
        label = np.broadcast_to(labels, tgt.shape)
        self.wanted.append(np.stack([a.ravel() for a in (position, tgt, row, label)]))
        self.hidden.append(hidden)
        self.queued += len(hidden)
        if self.queued >= LOGIT_CHUNK_POSITIONS:
            self.flush()

    def flush(self) -> None:
        if not self.hidden:
            return
        hidden = torch.cat(self.hidden)
        position, target, row, label = np.concatenate(self.wanted, axis=1)
        for start in range(0, len(hidden), LOGIT_CHUNK_POSITIONS):
            stop = start + LOGIT_CHUNK_POSITIONS
            logits = self.backend.logits(hidden[start:stop])
            pick = (position >= start) & (position < stop)
            at = torch.from_numpy(position[pick] - start).to(logits.device)
            # log p = logit - logsumexp: no [positions, vocabulary] log-softmax is written out.
            values = logits[at, torch.from_numpy(target[pick]).to(logits.device)] - logits.logsumexp(-1)[at]
            np.add.at(self.scores, (row[pick], label[pick]), values.double().cpu().numpy())
        self.hidden, self.wanted, self.queued = [], [], 0
