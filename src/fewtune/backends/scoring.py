"""Pieces of label scoring that do not depend on the model: the label token tree and the queued projection.

A label of several tokens is scored by feeding its tokens after the prompt and reading, at each one, the
log-probability of the next. Labels often share leading tokens (banking77's ``card arrival`` and
``card linking`` both start with `` card``), so all labels are fed at once as a token tree: one node per
distinct label prefix, each attending to the prompt and to its own ancestors only (tree attention, as in
SpecInfer and Medusa). For banking77's 77 names (``--label-names auto``) the 178 tokens after each name's
first become 131 nodes, one sequence per row instead of 77.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Positions projected onto the vocabulary at once: 256 x 262k float32 logits is about 270 MB.
LOGIT_CHUNK_POSITIONS = 256


@dataclass(frozen=True)
class LabelTree:
    """The proper prefixes of all labels' token sequences, one node each (parents before children).

    Node ``n`` is fed token ``tokens[n]`` at depth ``depth[n]`` after the prompt; ``visible[n, m]`` is true
    when node ``m`` is ``n`` or one of its ancestors. Entry ``e`` reads ``log p(target[e])`` at node
    ``node[e]`` and adds it to the score of label ``label[e]``.
    """

    tokens: torch.Tensor  # [N]
    depth: torch.Tensor  # [N]
    visible: torch.Tensor  # [N, N] bool
    node: np.ndarray  # [E]
    target: np.ndarray  # [E]
    label: np.ndarray  # [E]

    @classmethod
    def build(cls, choices: Sequence[Sequence[int]]) -> LabelTree:
        index: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        parent: list[int] = []
        entries: list[tuple[int, int, int]] = []
        for j, choice in enumerate(choices):
            for t in range(1, len(choice)):
                key = tuple(choice[:t])
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(choice[t - 1])
                    parent.append(index.get(key[:-1], -1))
                entries.append((index[key], choice[t], j))
        size = len(tokens)
        visible = torch.eye(size, dtype=torch.bool)
        depth = torch.zeros(size, dtype=torch.long)
        for n, p in enumerate(parent):
            if p >= 0:  # parents come first, so their rows are complete
                visible[n] |= visible[p]
                depth[n] = depth[p] + 1
        node, target, label = (np.array([e[i] for e in entries], dtype=np.int64) for i in range(3))
        return cls(torch.tensor(tokens, dtype=torch.long), depth, visible, node, target, label)

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def steps(self) -> int:
        """Tokens fed after the prompt along the longest label (its length minus one)."""
        return int(self.depth.max()) + 1 if self.size else 0


class LogProbQueue:
    """Adds ``log p(token)`` at queued hidden states into ``scores``, projected onto the vocabulary in chunks.

    The output layer (262k x 640 for Gemma 3) is read from memory once per chunk of up to
    ``LOGIT_CHUNK_POSITIONS`` positions gathered across batches; projecting each small batch on its own makes
    scoring memory-bound on that one matrix (about 2 of the 10 s that sst2's 200 rows took).
    """

    def __init__(self, logits: Callable[[torch.Tensor], torch.Tensor], scores: np.ndarray) -> None:
        self.logits = logits
        self.scores = scores
        self.hidden: list[torch.Tensor] = []
        # One column per wanted log-probability: position in the queued hidden states, target token, and
        # the cell of ``scores`` (row, label) it is added to.
        self.wanted: list[np.ndarray] = []
        self.queued = 0

    def add(
        self,
        hidden: torch.Tensor,
        position: np.ndarray,
        target: np.ndarray,
        row: np.ndarray,
        label: np.ndarray,
    ) -> None:
        """Queue ``hidden [N, H]``; ``log p(target[e])`` at ``hidden[position[e]]`` goes to
        ``scores[row[e], label[e]]``."""
        if not len(position):
            return
        self.wanted.append(np.stack([self.queued + position, target, row, label]).astype(np.int64))
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
            pick = (position >= start) & (position < stop)
            if not pick.any():
                continue
            logits = self.logits(hidden[start:stop])
            at = torch.from_numpy(position[pick] - start).to(logits.device)
            # log p = logit - logsumexp: no [positions, vocabulary] log-softmax is written out.
            values = logits[at, torch.from_numpy(target[pick]).to(logits.device)] - logits.logsumexp(-1)[at]
            np.add.at(self.scores, (row[pick], label[pick]), values.double().cpu().numpy())
        self.hidden, self.wanted, self.queued = [], [], 0
