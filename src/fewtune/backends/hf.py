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

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-probabilities for hidden states ``[..., H]`` -> ``[..., V]`` (float32)."""
        logits = self.model.get_output_embeddings()(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits, dim=-1)

    def _token_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``log p(targets)`` for hidden ``[N, H]`` and targets ``[N]``, projecting in chunks."""
        out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, targets.shape[0], LOGIT_CHUNK_POSITIONS):
            chunk = slice(start, start + LOGIT_CHUNK_POSITIONS)
            out[chunk] = self.log_probs(hidden[chunk]).gather(-1, targets[chunk, None]).squeeze(-1)
        return out

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
        self, prefix_cache: Any, prefix_len: int, suffixes: Sequence[list[int]], choices: Sequence[list[int]]
    ) -> np.ndarray:
        """Score rows whose suffixes all have the same length, so no row needs padding or a mask."""
        rows, labels, width = len(suffixes), len(choices), len(suffixes[0])
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(rows)
        ids = torch.tensor(suffixes, device=self.device)
        positions = (prefix_len + torch.arange(width, device=self.device)).expand(rows, width)
        out = self._decoder()(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
        first = torch.tensor([c[0] for c in choices], device=self.device)
        scores = self.log_probs(out.last_hidden_state[:, -1])[:, first]  # [rows, labels]
        longest = max(len(c) for c in choices)
        if longest > 1:
            # Feed choice tokens [:-1] for every (row, label) pair against the row's cache. Shorter
            # choices are padded at the end, which a causal model never looks back at.
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
            cont, targets, valid = (t.repeat(rows, 1).to(self.device) for t in (cont, targets, valid))
            start = prefix_len + width
            cont_pos = (start + torch.arange(steps, device=self.device)).expand(rows * labels, steps)
            hidden = self._decoder()(
                input_ids=cont, position_ids=cont_pos, past_key_values=cache, use_cache=True
            ).last_hidden_state
            token_lp = torch.zeros((rows * labels, steps), device=self.device)
            token_lp[valid] = self._token_log_probs(hidden[valid], targets[valid])
            scores = scores + token_lp.sum(-1).view(rows, labels)
        return scores.double().cpu().numpy()

    @torch.inference_mode()
    def score_choices(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        batch_size: int = 8,
        progress: ProgressFn | None = None,
        prefix: str = "",
    ) -> np.ndarray:
        choice_ids = [self.encode_continuation(c) for c in choices]
        if any(not c for c in choice_ids):
            raise ValueError("every choice must have at least one token")
        prompt_ids = [self.encode_prompt(p) for p in prompts]
        prefix_ids = self.encode_prompt(prefix) if prefix and self.prefix_caching else []
        # Bucket rows by (uses the cached prefix, suffix length): equal lengths batch without padding.
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, ids in enumerate(prompt_ids):
            # A prompt whose tokens merge across the prefix boundary is scored whole.
            shared = bool(prefix_ids) and len(ids) > len(prefix_ids) and ids[: len(prefix_ids)] == prefix_ids
            groups.setdefault((shared, len(ids) - len(prefix_ids) * shared), []).append(i)
        rows_per_batch = max(1, min(batch_size, MAX_CONTINUATION_SEQUENCES // len(choices)))
        scores = np.empty((len(prompts), len(choices)))
        for (shared, _), members in sorted(groups.items()):
            cache = self._prefix_cache(prefix_ids) if shared else None
            cut = len(prefix_ids) if shared else 0
            for start in range(0, len(members), rows_per_batch):
                batch = members[start : start + rows_per_batch]
                scores[batch] = self._score_batch(
                    cache, cut, [prompt_ids[i][cut:] for i in batch], choice_ids
                )
                if progress:
                    progress(len(batch))
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
