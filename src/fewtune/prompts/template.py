"""The few-shot prompt pattern from the practitioners' guides.

A task line, the exact output format (the label set), then ``---``-separated ``Input:``/``Output:`` examples,
all in the same format, ending with ``Output:`` and nothing else::

    Classify the input into exactly one label.
    Labels: negative, positive
    Answer with the label only.
    ---
    Input: a gorgeous , witty , seductive movie .
    Output: positive
    ---
    Input: <the test input>
    Output:

Everything up to the last ``Input:`` is the same for every test row when the demos are fixed, so a backend can
compute it once (prefix caching). The label is scored as the continuation ``" " + label``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fewtune.data.load import Example

DEFAULT_TASK = "Classify the input into exactly one label."
SEPARATOR = "---"


def _one_line(text: str) -> str:
    # Embedded newlines (banking77 has some) would break the Input:/Output: pattern.
    return " ".join(text.split())


@dataclass(frozen=True)
class PromptTemplate:
    """Builds prompts for one label set; ``task`` is the role/task line."""

    labels: tuple[str, ...]
    task: str = DEFAULT_TASK

    def header(self) -> str:
        return f"{self.task}\nLabels: {', '.join(self.labels)}\nAnswer with the label only.\n"

    def prefix(self, demos: Sequence[Example]) -> str:
        """Everything before the test input: header and demos, ending with the separator line."""
        parts = [self.header()]
        for demo in demos:
            parts.append(f"{SEPARATOR}\nInput: {_one_line(demo.text)}\nOutput: {demo.label}\n")
        parts.append(f"{SEPARATOR}\n")
        return "".join(parts)

    def query(self, text: str) -> str:
        return f"Input: {_one_line(text)}\nOutput:"

    def render(self, text: str, demos: Sequence[Example] = ()) -> str:
        return self.prefix(demos) + self.query(text)

    @staticmethod
    def continuation(label: str) -> str:
        """What the model is scored on (and trained to produce) after ``Output:``."""
        return f" {label}"
