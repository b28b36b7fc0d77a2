"""Local Hugging Face causal LM backend: batched label log-likelihood and greedy generation.

Scoring a row costs one pass over the part of its prompt that differs from the others: the shared prefix
(task line, demos, ``Input:``) is run once and its KV cache reused for every row (prefix caching, as vLLM and
SGLang do). Rows are sorted by length and right-padded into batches; the first token of every label is read
at the row's last real position, and the remaining label tokens of all labels are fed as one token tree
after the row's tokens, in the same forward pass (:class:`~fewtune.backends.scoring.LabelTree`). Logits
are computed only at the positions that predict label tokens: at the row's last position only for the
labels' first tokens (the softmax normalizer there is the same for every label, so scores are
log-likelihoods up to a constant per row), and over the whole vocabulary, many rows at once, inside the
tree. A full-vocabulary projection at
every prompt position would cost more than the rest of a 270M model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fewtune.backends.base import Backend, Capabilities, Generation, OutputEnd, ProgressFn
from fewtune.backends.generation import length_batches
from fewtune.backends.kvcache import cache_of, unbounded_cache, with_cache
from fewtune.backends.precision import of_model
from fewtune.backends.scoring import LabelTree, LogProbQueue


class HFBackend(Backend):
    """Wraps a ``transformers`` causal LM (optionally with LoRA merged in) and its tokenizer."""

    capabilities = Capabilities(
        loglikelihood=True, prefix_cache=True, trainable=True, constrained_decoding=True
    )

    def __init__(self, model: Any, tokenizer: Any, name: str = "hf", source: str = "") -> None:
        self.model = model.eval()
        self.source = source  # the model folder, recorded in saved adapters
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.precision = of_model(model)
        """What the decoder computes in; the output layer and the scores are float32 whatever it is."""
        self.prefix_caching = True
        """Reuse the KV cache of a prefix shared by every prompt (the demo block); off = score each whole."""
        self._cached_prefix: tuple[tuple[tuple[int, ...], bool], Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model_parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "model_path": self.source,
            "precision": self.precision.name,
        }

    @property
    def context_length(self) -> int | None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        return int(limit) if limit else None

    @property
    def on_cpu(self) -> bool:
        return str(self.device).startswith("cpu")

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
        with self.precision.exact():
            logits = self.model.get_output_embeddings()(hidden.to(self._head_dtype)).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def token_logits(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of ``tokens`` only, ``[..., H]`` -> ``[..., len(tokens)]``: reads those rows of the output
        layer instead of all 262k."""
        head = self.model.get_output_embeddings()
        bias = None if head.bias is None else head.bias[tokens]
        with self.precision.exact():
            logits = torch.nn.functional.linear(
                hidden.to(self._head_dtype), head.weight[tokens], bias
            ).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @property
    def _head_dtype(self) -> torch.dtype:
        return self.model.get_output_embeddings().weight.dtype

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-probabilities for hidden states ``[..., H]`` -> ``[..., V]`` (float32)."""
        return torch.log_softmax(self.logits(hidden), dim=-1)

    def prefix_cache(self, prefix_ids: list[int], keep_all: bool = False) -> Any:
        """KV cache of the shared prefix, computed once per distinct prefix (kept for the last one).

        ``keep_all``: every layer keeps every prefix slot, where the model's own cache (the default) keeps
        only the last ``window - 1`` in a sliding-window layer; generation lays rows out from earlier ones.
        """
        key = (tuple(prefix_ids), keep_all)
        if self._cached_prefix is None or self._cached_prefix[0] != key:
            ids = torch.tensor([prefix_ids], device=self.device)
            own = unbounded_cache() if keep_all else None
            with self.precision.scoring():
                cache = cache_of(self._decoder()(input_ids=ids, use_cache=True, **with_cache(own)))
            self._cached_prefix = (key, cache)
        return self._cached_prefix[1]

    @property
    def _window(self) -> int | None:
        """Sliding-window length of the model's windowed layers (None: every layer sees everything)."""
        if "sliding_attention" not in (getattr(self.model.config, "layer_types", None) or ()):
            return None
        return getattr(self.model.config, "sliding_window", None)

    def fits_window(self, tokens: int) -> bool:
        """A sliding-window layer still holds every one of ``tokens`` tokens (nothing evicted)."""
        return not self._window or tokens < self._window

    @torch.inference_mode()
    def _score_batch(
        self,
        prefix_cache: Any,
        prefix_len: int,
        suffixes: Sequence[list[int]],
        choices: Sequence[list[int]],
        tree: LabelTree,
        rows: Sequence[int],
        queue: LogProbQueue,
    ) -> None:
        """Run a batch of rows (suffixes after a cached prefix of ``prefix_len`` tokens) and queue their label
        positions, in one forward pass: each row's suffix, right-padded to the longest, then the label tree.

        Without a tree (every label one token) the pass needs no mask: a causal model never looks ahead, so
        no real token sees the padding. With one, the mask (:meth:`_batch_mask`) keeps every tree node to its
        row's real tokens and its own ancestors. One pass instead of a suffix pass and a tree pass reads the
        weights once: a single request over a 270M model is bound by reading them.
        """
        count = len(suffixes)
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
        extra: dict[str, Any] = {}
        if tree.size:
            ids = torch.cat([ids, tree.tokens.expand(count, tree.size)], dim=1)
            positions = torch.cat([positions, prefix_len + lengths[:, None] + tree.depth], dim=1)
            extra["attention_mask"] = self._batch_masks(prefix_len, lengths, tree)
        hidden = self._decoder()(
            input_ids=ids.to(self.device),
            position_ids=positions.to(self.device),
            **with_cache(cache),
            use_cache=True,
            **extra,
        ).last_hidden_state
        # The first token of every label is predicted at the row's last real position. Its normalizer is
        # the same for every label, so only the labels' own rows of the output layer are needed there.
        row = np.asarray(rows)
        first = torch.tensor([c[0] for c in choices], device=self.device)
        last = hidden[torch.arange(count), lengths - 1]
        queue.scores[row] += self.token_logits(last, first).double().cpu().numpy()
        if tree.size:
            entries, size = len(tree.node), tree.size
            queue.add(
                hidden[:, width:].reshape(count * size, -1),
                position=(np.arange(count)[:, None] * size + tree.node).ravel(),
                target=np.tile(tree.target, count),
                row=np.repeat(row, entries),
                label=np.tile(tree.label, count),
            )

    def _batch_masks(self, prefix_len: int, lengths: torch.Tensor, tree: LabelTree) -> Any:
        """The additive attention masks of :meth:`_score_batch`'s pass with a label tree, one per layer type
        (a sliding-window layer's cache holds only the prefix's last ``window - 1`` slots)."""
        mask: Any = self._batch_mask(prefix_len, lengths, tree, None)
        types = getattr(self.model.config, "layer_types", None)
        if not types:
            return mask
        return {
            kind: self._batch_mask(prefix_len, lengths, tree, self._window)
            if kind == "sliding_attention"
            else mask
            for kind in set(types)
        }

    def _batch_mask(
        self, prefix_len: int, lengths: torch.Tensor, tree: LabelTree, window: int | None
    ) -> torch.Tensor:
        """Additive mask ``[rows, 1, width + nodes, held + width + nodes]``: queries are each row's suffix
        (right-padded to ``width``) then the tree's nodes; keys are the ``held`` prefix slots a layer's cache
        holds (all, or a sliding-window layer's last ``window - 1``), then the same suffix and nodes.

        A suffix token sees the prefix and the suffix up to itself; node ``n`` of row ``r``, at position
        ``prefix + length[r] + depth[n]``, sees the prefix, the row's real suffix tokens (not its padding)
        and its own ancestors. A sliding-window layer also hides what lies ``window`` or more positions back.
        """
        count, width, size = len(lengths), int(lengths.max()), tree.size
        held = prefix_len if window is None else min(prefix_len, window - 1)
        key_pos = torch.cat([torch.arange(prefix_len - held, prefix_len), prefix_len + torch.arange(width)])
        query_suffix = (prefix_len + torch.arange(width)).expand(count, width)
        node_pos = prefix_len + lengths[:, None] + tree.depth  # [rows, nodes]
        query_pos = torch.cat([query_suffix, node_pos], dim=1)  # [rows, width + nodes]
        before = key_pos[None, None, :] <= query_pos[:, :, None]  # [rows, queries, held + width]
        real = (key_pos[None, :] < prefix_len + lengths[:, None])[:, None, :]  # the row's real slots
        is_node = torch.arange(width + size) >= width
        seen = before & (real | ~is_node[None, :, None])  # padding is seen only by padding and suffix
        if window is not None:
            seen &= query_pos[:, :, None] - key_pos[None, None, :] < window
        nodes = torch.zeros(count, width + size, size, dtype=torch.bool)
        nodes[:, width:] = tree.visible
        visible = torch.cat([seen, nodes], dim=-1)
        dtype = self.model.get_input_embeddings().weight.dtype
        mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)
        return mask[:, None].to(self.device)

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
        tree = LabelTree.build(choice_ids)
        prompt_ids = [self.encode_prompt(p) for p in prompts]
        prefix_ids = self.encode_prompt(prefix) if prefix and self.prefix_caching else []
        # Rows that start with the cached prefix, and the rest: a prompt whose tokens merge across the
        # prefix boundary (or any prompt, without a prefix) is scored whole.
        shared: list[int] = []
        whole: list[int] = []
        for i, ids in enumerate(prompt_ids):
            starts = bool(prefix_ids) and len(ids) > len(prefix_ids) and ids[: len(prefix_ids)] == prefix_ids
            (shared if starts else whole).append(i)
        scores = np.zeros((len(prompts), len(choices)))
        queue = LogProbQueue(self.logits, scores)
        for members, cut in ((shared, len(prefix_ids)), (whole, 0)):
            if not members:
                continue
            cache = self.prefix_cache(prefix_ids) if cut else None
            suffixes = [prompt_ids[i][cut:] for i in members]
            lengths = [len(s) for s in suffixes]
            # Rows of any lengths share a right-padded batch, within a sliding window or beyond it: the
            # pass's mask keeps every label token to its own row's real tokens (:meth:`_batch_mask`).
            for batch in length_batches(lengths, batch_size):
                rows = [members[b] for b in batch]
                with self.precision.scoring():
                    self._score_batch(cache, cut, [suffixes[b] for b in batch], choice_ids, tree, rows, queue)
                if progress:
                    progress(len(batch))
        queue.flush()
        return scores

    def schema_constraint(self, schema: Mapping[str, Any]) -> Callable[[], Any]:
        from fewtune.backends.generation import json_schema_constraint

        return json_schema_constraint(self, schema)

    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        prefix: str = "",
        max_new_tokens: int = 64,
        stop: str | None = None,
        output_end: OutputEnd | None = None,
        batch_size: int = 16,
        progress: ProgressFn | None = None,
        constraint: Callable[[], Any] | None = None,
    ) -> list[Generation]:
        from fewtune.backends.generation import generate_batch

        return generate_batch(
            self,
            prompts,
            prefix=prefix,
            max_new_tokens=max_new_tokens,
            stop=stop,
            output_end=output_end,
            batch_size=batch_size,
            progress=progress,
            constraint=constraint,
        )
