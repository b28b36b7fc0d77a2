"""How a multi-label target is written and read: the labels in canonical (alphabetical) order joined by
", " (see :mod:`fewtune.tasks.multilabel` for why), and the characters that separate or wrap labels in an
output. Shared by the task and its reference."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

SEPARATOR = ", "
# Characters that separate labels in an output (parse splits on each), so no label may contain them.
SEPARATORS = (",", ";", "\n")
# Wrapping a model may add around a label ("[anger", "joy.", "'love'"), stripped when the item does not match.
STRIP_CHARS = " \t'\"`.[](){}*-"
Embed = Callable[[Sequence[str]], np.ndarray]
"""A sentence embedder's ``embed(texts) -> [len(texts), d]``."""


def normalise(label: str) -> str:
    """The form labels are matched in: case-folded, underscores as spaces, whitespace collapsed."""
    return " ".join(label.casefold().replace("_", " ").split())


def render(labels: Iterable[str]) -> str:
    """The output text of a label set: its labels in canonical (alphabetical) order, joined by ", "."""
    return SEPARATOR.join(sorted(labels))
