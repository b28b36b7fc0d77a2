"""Local Hugging Face causal LM backend: batched label log-likelihood and greedy generation.

Scoring a row costs one pass over its prompt: the prompt is run once with a KV cache, the first token of
every label is read from the last position, and the remaining label tokens of all labels run as a batch
against copies of that cache. Logits are computed only at the positions that predict label tokens; a
full-vocabulary projection at every prompt position would cost more than the rest of a 270M model.
"""

from __future__ import annotations

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

    def _left_pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # -- scoring --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _score_batch(self, prompts: Sequence[list[int]], choices: Sequence[list[int]]) -> np.ndarray:
        rows, labels = len(prompts), len(choices)
        ids, mask = self._left_pad(prompts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._decoder()(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        first = torch.tensor([c[0] for c in choices], device=self.device)
        scores = self.log_probs(out.last_hidden_state[:, -1])[:, first]  # [rows, labels]
        longest = max(len(c) for c in choices)
        if longest > 1:
            # Feed choice tokens [:-1] for every (row, label) pair against the row's cached prompt.
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
            cont_mask = torch.cat([mask.repeat_interleave(labels, 0), valid.long()], dim=1)
            lengths = mask.sum(-1).repeat_interleave(labels)
            cont_pos = lengths[:, None] + torch.arange(steps, device=self.device)[None]
            hidden = self._decoder()(
                input_ids=cont,
                attention_mask=cont_mask,
                position_ids=cont_pos,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
            token_lp = torch.zeros((rows * labels, steps), device=self.device)
            token_lp[valid] = self._token_log_probs(hidden[valid], targets[valid])
            scores = scores + token_lp.sum(-1).view(rows, labels)
        return scores.double().cpu().numpy()

    def score_choices(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        batch_size: int = 8,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        choice_ids = [self.encode_continuation(c) for c in choices]
        if any(not c for c in choice_ids):
            raise ValueError("every choice must have at least one token")
        prompt_ids = [self.encode_prompt(p) for p in prompts]
        rows_per_batch = max(1, min(batch_size, MAX_CONTINUATION_SEQUENCES // len(choices)))
        # Length bucketing: batch prompts of similar length so padding stays small.
        order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
        scores = np.empty((len(prompts), len(choices)))
        for start in range(0, len(order), rows_per_batch):
            batch = order[start : start + rows_per_batch]
            scores[batch] = self._score_batch([prompt_ids[i] for i in batch], choice_ids)
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
