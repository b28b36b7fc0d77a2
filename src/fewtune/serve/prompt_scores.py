"""Prompt log-probabilities (``echo``): the demo block run once, then a batch's prompts as one token tree.

A client scoring labels sends one prompt per label: the same demos, the same test input, then each label.
Every prompt token's log-probability needs its position projected onto the whole vocabulary (Gemma's
262k x 640 output layer, more work than the rest of a 270M model). That is compute, not memory: batching
requests saves only what small matrix products waste, and the rest is saved only by not doing work twice.

- The shared prefix (a method's demo block, :class:`PrefixState`) is run once and kept; prompts that start
  with it run only their own tokens after a copy of its KV cache and reuse its tokens' scores.
- The rest of the prompts is one token trie (:class:`TokenTree`): prompts that share leading tokens (the
  label prompts of one request share the whole test input) share its nodes, so the test input runs through
  the model, and is projected onto the vocabulary, once per request instead of once per label. A node
  attends to the prefix and to its own ancestors only (tree attention, as :mod:`fewtune.backends.scoring`
  feeds labels), at the position it has in its prompt, so each prompt's scores are those of its own pass.
- Each distinct hidden state is projected once, however many tokens it predicts (the last input token
  predicts every label's first token), and the ``top`` alternatives are taken only when asked for.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fewtune.backends.hf import HFBackend
from fewtune.backends.kvcache import cache_of, with_cache
from fewtune.serve.tokens import TokenScores

POSITIONS_PER_SOFTMAX = 256
"""Positions projected onto the vocabulary at once (256 x 262k float32 logits is 268 MB)."""
ROW_TOKENS = 128
"""Tree nodes packed into one row of a forward pass (a prompt's whole subtree stays in one row, so a longer
one gets a row of its own). Every node of a row attends over the row's whole width, masked, so wider rows
waste attention; narrower ones copy the prefix's KV cache once more per row."""


@dataclass(frozen=True)
class PrefixState:
    """A shared prefix run once: its tokens' scores, the hidden state of its last token (which predicts the
    first token after it) and its KV cache, for :func:`score_tokens` to continue from."""

    ids: tuple[int, ...]
    top: int
    scores: TokenScores
    last: torch.Tensor
    cache: Any


@torch.inference_mode()
def prefix_state(backend: HFBackend, prefix_ids: Sequence[int], top: int = 0) -> PrefixState:
    """Run ``prefix_ids`` once under ``backend``'s model (with its adapter switched on)."""
    ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=backend.device)
    with backend.precision.scoring():
        out = backend.model.get_decoder()(input_ids=ids, use_cache=True)
    hidden = out.last_hidden_state[0]
    logprobs, tops = predictions(backend, hidden[:-1], [[t] for t in prefix_ids[1:]], top)
    scores = TokenScores(list(prefix_ids), [None, *(lp for (lp,) in logprobs)], [None, *tops])
    return PrefixState(tuple(prefix_ids), top, scores, hidden[-1], cache_of(out))


def predictions(
    backend: HFBackend, hidden: torch.Tensor, targets: Sequence[Sequence[int]], top: int
) -> tuple[list[list[float]], list[list[tuple[int, float]]]]:
    """For each hidden state ``hidden[i]``: the log-probabilities of the tokens ``targets[i]`` after it, and
    its ``top`` most likely next tokens with theirs ([] for ``top`` 0), a chunk of positions at a time.

    The full-vocabulary logits are needed for the normaliser whatever is read. A log-softmax and a gather
    is the fastest way found to read a few tokens off them: torch's fused log-softmax kernel took 158 ms for
    256 x 262k logits on one core where ``logsumexp`` took 219 ms.
    """
    logprobs: list[list[float]] = []
    tops: list[list[tuple[int, float]]] = []
    for start in range(0, len(targets), POSITIONS_PER_SOFTMAX):
        stop = min(start + POSITIONS_PER_SOFTMAX, len(targets))
        table = torch.log_softmax(backend.logits(hidden[start:stop]), dim=-1)
        wanted = targets[start:stop]
        rows = torch.tensor([r for r, tokens in enumerate(wanted) for _ in tokens], dtype=torch.long)
        tokens = torch.tensor([t for ts in wanted for t in ts], dtype=torch.long)
        read = table[rows, tokens].tolist()
        at = 0
        for ts in wanted:
            logprobs.append(read[at : at + len(ts)])
            at += len(ts)
        if top:
            values, indices = table.topk(top, dim=-1)
            tops.extend(
                list(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)
            )
        else:
            tops.extend([] for _ in wanted)
    return logprobs, tops


@dataclass(frozen=True)
class TokenTree:
    """Token sequences as one trie: sequences that start with the same tokens share those nodes.

    Node ``n`` holds token ``tokens[n]`` at ``depth[n]`` below its root (a root is a sequence's first
    token); ``parent[n]`` is -1 for a root, and parents come before their children. ``paths[s]`` lists
    sequence ``s``'s nodes in order.
    """

    tokens: list[int]
    parent: list[int]
    depth: list[int]
    paths: list[list[int]]

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> TokenTree:
        index: dict[tuple[int, int], int] = {}
        tokens: list[int] = []
        parent: list[int] = []
        depth: list[int] = []
        paths: list[list[int]] = []
        for sequence in sequences:
            at, path = -1, []
            for token in sequence:
                node = index.get((at, token))
                if node is None:
                    node = index[(at, token)] = len(tokens)
                    tokens.append(token)
                    parent.append(at)
                    depth.append(depth[at] + 1 if at >= 0 else 0)
                path.append(node)
                at = node
            paths.append(path)
        return cls(tokens, parent, depth, paths)

    def rows(self, nodes: Sequence[int], width: int) -> list[list[int]]:
        """``nodes`` (with every ancestor of each) packed into rows of about ``width``: the nodes under one
        root in one row (first fit, largest first; more than ``width`` of them get a row of their own),
        parents before children."""
        root = list(range(len(self.parent)))
        for n, p in enumerate(self.parent):
            if p >= 0:
                root[n] = root[p]
        subtrees: dict[int, list[int]] = {}
        for n in sorted(nodes):
            subtrees.setdefault(root[n], []).append(n)
        rows: list[list[int]] = []
        for members in sorted(subtrees.values(), key=len, reverse=True):
            row = next((r for r in rows if len(r) + len(members) <= width), None)
            if row is None:
                rows.append(list(members))
            else:
                row.extend(members)
        return rows

    def children(self) -> list[list[int]]:
        """Each node's children (the tokens its hidden state predicts)."""
        out: list[list[int]] = [[] for _ in self.tokens]
        for n, p in enumerate(self.parent):
            if p >= 0:
                out[p].append(n)
        return out


@torch.inference_mode()
def score_tokens(
    backend: HFBackend,
    sequences: Sequence[list[int]],
    top: int = 0,
    batch_size: int = 16,
    prefix: PrefixState | None = None,
) -> list[TokenScores]:
    """Per-token log-probabilities of ``sequences`` under ``backend``'s model (with its adapter switched on).

    Sequences that start with ``prefix`` continue from a copy of its KV cache and reuse its scores; their
    tokens after it, and the whole of the others, run as token trees (:class:`TokenTree`), ``batch_size``
    rows of trie nodes per forward pass. A sequence that a sliding-window layer does not hold whole runs
    whole on its own, right-padded, under the model's own masks. The result keeps the input order.
    """
    cut = len(prefix.ids) if prefix is not None else 0
    if prefix is not None and prefix.top != top:
        raise ValueError(f"the prefix was scored with top={prefix.top}, not {top}")
    results: list[TokenScores | None] = [None] * len(sequences)
    fits = [_in_window(backend, len(s)) for s in sequences]
    after = [
        prefix is not None and fits[i] and len(s) > cut and tuple(s[:cut]) == prefix.ids
        for i, s in enumerate(sequences)
    ]
    for state in (prefix, None) if cut else (None,):
        members = [i for i, s in enumerate(sequences) if fits[i] and after[i] == (state is not None) and s]
        if members:
            _score_tree(backend, sequences, members, state, top, batch_size, results)
    long = sorted((i for i, s in enumerate(sequences) if not fits[i]), key=lambda i: len(sequences[i]))
    for start in range(0, len(long), batch_size):
        _score_whole(backend, sequences, long[start : start + batch_size], top, results)
    return [r if r is not None else TokenScores([], [], []) for r in results]


def _in_window(backend: HFBackend, tokens: int) -> bool:
    """Whether a sliding-window layer sees all of ``tokens`` tokens from the last (the tree's masks then
    need no window: every node sees every token before it)."""
    window = getattr(backend.model.config, "sliding_window", None)
    return backend.fits_window(tokens) and not (window and tokens >= window)


def _score_tree(
    backend: HFBackend,
    sequences: Sequence[list[int]],
    members: list[int],
    prefix: PrefixState | None,
    top: int,
    batch_size: int,
    results: list[TokenScores | None],
) -> None:
    """Score ``members`` as one token trie of their tokens after ``prefix`` (all of them without one)."""
    cut = len(prefix.ids) if prefix is not None else 0
    tree = TokenTree.build([sequences[i][cut:] for i in members])
    children = tree.children()
    # Only nodes with children run: a prompt's last token predicts nothing, so its hidden state is not needed.
    inner = [n for n, c in enumerate(children) if c]
    groups = [children[n] for n in inner]  # the tokens each inner node's hidden state predicts
    predictors = _run_tree(backend, tree, inner, prefix, batch_size)
    if prefix is not None:  # the roots' predictor: the prefix's last hidden state
        groups.insert(0, [n for n, p in enumerate(tree.parent) if p < 0])
        predictors = torch.cat([prefix.last[None].to(predictors.dtype), predictors])
    targets = [[tree.tokens[c] for c in group] for group in groups]
    logprobs, tops = predictions(backend, predictors, targets, top)
    node_logprob: list[float | None] = [None] * len(tree.tokens)
    node_top: list[list[tuple[int, float]] | None] = [None] * len(tree.tokens)
    for group, read, best in zip(groups, logprobs, tops, strict=True):
        for node, logprob in zip(group, read, strict=True):
            node_logprob[node], node_top[node] = logprob, best
    head = prefix.scores if prefix is not None else TokenScores([], [], [])
    for i, path in zip(members, tree.paths, strict=True):
        results[i] = TokenScores(
            list(sequences[i]),
            head.logprobs + [node_logprob[n] for n in path],
            head.top + [node_top[n] for n in path],
        )


def _run_tree(
    backend: HFBackend, tree: TokenTree, nodes: list[int], prefix: PrefixState | None, batch_size: int
) -> torch.Tensor:
    """The hidden states of ``nodes`` of ``tree`` (``[len(nodes), hidden]``, in that order), run as rows of
    nodes, ``batch_size`` rows a forward pass."""
    decoder = backend.model.get_decoder()
    rows = sorted(tree.rows(nodes, ROW_TOKENS), key=len)
    parts: list[torch.Tensor] = []
    order: list[int] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        hidden = _tree_pass(backend, decoder, tree, batch, prefix)
        parts.extend(hidden[b, : len(members)] for b, members in enumerate(batch))
        order.extend(n for members in batch for n in members)
    if not parts:
        size = backend.model.get_input_embeddings().weight.shape[1]
        return torch.empty((0, size), device=backend.device)
    where = {n: i for i, n in enumerate(order)}
    return torch.cat(parts)[torch.tensor([where[n] for n in nodes], dtype=torch.long)]


def _tree_pass(
    backend: HFBackend, decoder: Any, tree: TokenTree, rows: list[list[int]], prefix: PrefixState | None
) -> torch.Tensor:
    """One forward pass over ``rows`` of trie nodes (``[rows, width, hidden]``), after a copy of the
    prefix's KV cache. Node ``n`` sits at position ``prefix + depth[n]`` and sees the prefix and its own
    ancestors (an additive mask, the same for every layer: every sequence fits the sliding window)."""
    held = len(prefix.ids) if prefix is not None else 0
    count, width = len(rows), max(len(r) for r in rows)
    ids = torch.full((count, width), backend.pad_id, dtype=torch.long)
    depth = torch.zeros((count, width), dtype=torch.long)
    visible = torch.zeros((count, width, held + width), dtype=torch.bool)
    visible[:, :, :held] = True
    for b, nodes in enumerate(rows):
        ids[b, : len(nodes)] = torch.tensor([tree.tokens[n] for n in nodes])
        depth[b, : len(nodes)] = torch.tensor([tree.depth[n] for n in nodes])
        local = {n: j for j, n in enumerate(nodes)}
        own = visible[b, :, held:]
        own.fill_diagonal_(True)  # the padding sees itself only, so its softmax stays finite
        for j, n in enumerate(nodes):
            if tree.parent[n] >= 0:  # parents come first, so their rows are complete
                own[j] |= own[local[tree.parent[n]]]
    dtype = backend.model.get_input_embeddings().weight.dtype
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)
    mask = mask[:, None].to(backend.device)
    types = getattr(backend.model.config, "layer_types", None)
    kwargs: dict[str, Any] = {
        "attention_mask": {kind: mask for kind in set(types)} if types else mask,
        "position_ids": (held + depth).to(backend.device),
        "use_cache": False,
    }
    if prefix is not None:
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(count)
        kwargs.update(with_cache(cache), use_cache=True)
    with backend.precision.scoring():
        return decoder(input_ids=ids.to(backend.device), **kwargs).last_hidden_state


def _score_whole(
    backend: HFBackend,
    sequences: Sequence[list[int]],
    rows: list[int],
    top: int,
    results: list[TokenScores | None],
) -> None:
    """One right-padded forward pass over whole sequences ``rows``, under the model's own (sliding-window)
    masks: a causal model never looks ahead, so no real token sees the padding and the pass needs no mask."""
    rows = [r for r in rows if sequences[r]]
    if not rows:
        return
    width = max(len(sequences[r]) for r in rows)
    ids = torch.full((len(rows), width), backend.pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(sequences[r])] = torch.tensor(sequences[r], dtype=torch.long)
    with backend.precision.scoring():
        hidden = backend.model.get_decoder()(
            input_ids=ids.to(backend.device), use_cache=False
        ).last_hidden_state
    predictors = torch.cat([hidden[b, : len(sequences[r]) - 1] for b, r in enumerate(rows)])
    targets = [[t] for r in rows for t in sequences[r][1:]]
    logprobs, tops = predictions(backend, predictors, targets, top)
    at = 0
    for r in rows:
        n = len(sequences[r]) - 1
        read = [lp for (lp,) in logprobs[at : at + n]]
        best: list[list[tuple[int, float]] | None] = [None, *tops[at : at + n]]
        results[r] = TokenScores(list(sequences[r]), [None, *read], best)
        at += n
