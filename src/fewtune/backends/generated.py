"""Label scoring by generate-and-parse, for models that return no log-probabilities (chat APIs) or when
asked (``--label-scoring generate``): the model writes its answer after ``Output:``, and the answer's first
line is read as one of the labels.

Parsing: the first line, stripped of surrounding whitespace and punctuation and case-folded, must equal a
label's shown name, or start with one followed by a non-word character (the longest such name wins:
"positive." and "positive review" both read as "positive"). Anything else is unparsed: the row counts as
wrong, and the results record the unparsed share as the method's error rate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fewtune.backends.base import Backend, Generation, OutputEnd, ProgressFn, T

# The score of every label that was not the parsed answer (and of every label on an unparsed row).
NOT_ANSWERED = -1e9
# New tokens allowed beyond the longest label: room for a trailing full stop or newline.
EXTRA_TOKENS = 2
_EDGE = re.compile(r"^[\s\"'`*.:,;!?()\[\]-]+|[\s\"'`*.:,;!?()\[\]-]+$")


def parse_choice(output: str, choices: Sequence[str]) -> int | None:
    """Index of the choice the output names, or None."""
    line = output.strip().split("\n", 1)[0].strip().casefold() if output.strip() else ""
    raw = [c.strip().casefold() for c in choices]
    if line in raw:  # exact, punctuation included ("-1", "etc.")
        return raw.index(line)
    text = _EDGE.sub("", line)
    names = [_EDGE.sub("", name) for name in raw]
    if text and text in names:
        return names.index(text)
    starts = [i for i, name in enumerate(names) if name and re.match(re.escape(name) + r"(\W|$)", text)]
    return max(starts, key=lambda i: len(names[i])) if starts else None


def unanswered(scores: np.ndarray) -> np.ndarray:
    """Rows of a score matrix where no label was parsed."""
    return np.asarray(scores.max(axis=1) <= NOT_ANSWERED / 2)


class GenerateAndParse(Backend):
    """Wraps a backend; ``score_choices`` generates the answer and scores the parsed label 0, others -1e9."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = f"{inner.name} (generate-and-parse)"
        self.capabilities = replace(inner.capabilities, loglikelihood=False, prefix_cache=False)

    def score_choices(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        batch_size: int = 16,
        progress: ProgressFn | None = None,
        prefix: str = "",
    ) -> np.ndarray:
        cap = max(self.inner.count_tokens(c) for c in choices) + EXTRA_TOKENS
        outputs = self.inner.generate_batch(
            prompts, prefix=prefix, max_new_tokens=cap, stop="\n", batch_size=batch_size, progress=progress
        )
        scores = np.full((len(prompts), len(choices)), NOT_ANSWERED)
        for i, generation in enumerate(outputs):
            j = parse_choice(generation.text, choices)
            if j is not None:
                scores[i, j] = 0.0
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
        return self.inner.generate_batch(
            prompts,
            prefix=prefix,
            max_new_tokens=max_new_tokens,
            stop=stop,
            output_end=output_end,
            batch_size=batch_size,
            progress=progress,
            constraint=constraint,
        )

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens_batch(texts)

    def timed(self, call: Callable[[], object]) -> float:
        return self.inner.timed(call)

    def pass_seconds(self, call: Callable[[], T]) -> tuple[T, float | None]:
        return self.inner.pass_seconds(call)
