"""A deterministic stand-in model for fast tests (after lm-evaluation-harness's ``models/dummy.py``).

It scores a choice by how often the choice's words occur in the prompt's last ``Input:`` line, plus a small
bonus for choices shown as demo outputs, so it behaves like a keyword classifier that few-shot demos help.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fewtune.backends.base import Backend, Generation, OutputEnd, ProgressFn


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, demo_bonus: float = 0.1) -> None:
        self.demo_bonus = demo_bonus
        self.calls = 0

    def score_choices(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        batch_size: int = 16,
        progress: ProgressFn | None = None,
        prefix: str = "",
    ) -> np.ndarray:
        scores = np.zeros((len(prompts), len(choices)))
        for i, prompt in enumerate(prompts):
            self.calls += 1
            head, _, query = prompt.rpartition("Input:")
            words = query.lower().split()
            for j, choice in enumerate(choices):
                name = choice.strip().lower()
                scores[i, j] = sum(w.strip(".,!?") == name for w in words) - 0.01 * j
                scores[i, j] += self.demo_bonus * head.count(f"Output:{choice}")
            if progress:
                progress(1)
        return scores

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
        """The first word of the last ``Input:`` line (cut where ``output_end`` says)."""
        outputs = []
        for p in prompts:
            text = " " + (p.rpartition("Input:")[2].split() or ["?"])[0]
            end = output_end(text) if output_end else None
            text = text if end is None else text[:end]
            outputs.append(Generation(text, self.count_tokens(p), self.count_tokens(text) - 1, True))
            if progress:
                progress(1)
        return outputs

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1
