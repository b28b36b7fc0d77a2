"""The few-shot prompt pattern from the practitioners' guides, one for every task.

A task line, the exact output format (classification: the label set), then ``---``-separated
``Input:``/``Output:`` examples, all in the same format, ending with ``Output:`` and nothing else::

    Classify the input into exactly one label.
    Labels: negative, positive
    Answer with the label only.
    ---
    Input: a gorgeous , witty , seductive movie .
    Output: positive
    ---
    Input: <the test input>
    Output:

Everything up to and including the last ``Input:`` is the same for every test row when the demos are fixed,
so a backend can compute it once (prefix caching). A classification label is scored as the continuation
``" " + name``, where ``name`` is the label's readable name (``--label-names``, e.g. trec's ``DESC`` shown
as ``description``) or the label itself; results always keep the data's own labels. An open output
(:class:`OutputTemplate`) is followed by the ``---`` line in demos and in what LoRA learns, so a model
that learned the pattern ends its answer with it: the end-of-output marker generation stops at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from fewtune.data.load import Example
from fewtune.errors import ConfigError

DEFAULT_TASK = "Classify the input into exactly one label."
SEPARATOR = "---"
# What every query starts with; part of the prefix a backend caches when the demos are fixed.
QUERY_LEAD = "Input:"
# The end of an output block: every demo's output is followed by a line holding the separator.
END_MARKER = "\n" + SEPARATOR
# ``--label-names auto``: underscores and hyphens become spaces (banking77's ``card_arrival``).
AUTO_LABEL_NAMES = "auto"


def one_line(text: str) -> str:
    # Embedded newlines (banking77 has some) would break the Input:/Output: pattern.
    return " ".join(text.split())


def readable_name(label: str) -> str:
    """``card_arrival`` -> ``card arrival`` (what ``--label-names auto`` does)."""
    return " ".join(label.replace("_", " ").replace("-", " ").split()) or label


def resolve_label_names(labels: Sequence[str], names: Mapping[str, str] | str | None) -> dict[str, str]:
    """The name shown for each label: ``names`` (a mapping, ``"auto"`` or None), checked against ``labels``.

    Labels without a name keep their own text. Names must be non-empty, on one line, and distinct.
    """
    if names is None:
        return {}
    if isinstance(names, str):
        if names != AUTO_LABEL_NAMES:
            raise ConfigError(f"--label-names takes CODE=name pairs or 'auto', got {names!r}")
        return {label: readable_name(label) for label in labels if readable_name(label) != label}
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise ConfigError(
            f"--label-names: {', '.join(unknown)} is not a label of the data (labels: {', '.join(labels)})"
        )
    resolved = {label: one_line(name) for label, name in names.items() if one_line(name) != label}
    shown = [resolved.get(label, label) for label in labels]
    if any(not name for name in shown):
        raise ConfigError("--label-names: a label name is empty")
    if len(set(shown)) != len(shown):
        twice = sorted({name for name in shown if shown.count(name) > 1})
        raise ConfigError(f"--label-names: two labels would be shown as {twice[0]!r}")
    return resolved


class PromptPattern:
    """The pattern itself: ``instruction`` and ``output_format`` lines, demos, the query; what an output
    shows (``shown``) and what follows it (``end``) are the task's."""

    end: ClassVar[str] = ""
    """What follows an output in what the model learns (open outputs: the end-of-output marker)."""

    instruction: str
    """The role/task line."""
    output_format: str
    """The line(s) stating the exact output format; empty for an adapter's prompts."""

    def shown(self, output: str) -> str:
        """What the prompt shows for a demo's output (classification: the label's readable name)."""
        return output

    def header(self) -> str:
        """The instruction line and the output format (left out when empty: an adapter's prompt)."""
        return f"{self.instruction}\n" + (f"{self.output_format}\n" if self.output_format else "")

    def prefix(self, demos: Sequence[Example]) -> str:
        """Everything before the test input: header and demos, ending with the separator line."""
        parts = [self.header()]
        for demo in demos:
            parts.append(
                f"{SEPARATOR}\n{QUERY_LEAD} {one_line(demo.text)}\nOutput: {self.shown(demo.label)}\n"
            )
        parts.append(f"{SEPARATOR}\n")
        return "".join(parts)

    def query(self, text: str) -> str:
        return f"{QUERY_LEAD} {one_line(text)}\nOutput:"

    def render(self, text: str, demos: Sequence[Example] = ()) -> str:
        return self.prefix(demos) + self.query(text)

    def continuation(self, output: str) -> str:
        """What the model is scored on (and trained to produce) after ``Output:``."""
        return f" {self.shown(output)}{self.end}"


@dataclass(frozen=True)
class PromptTemplate(PromptPattern):
    """Classification's prompts for one label set; ``task`` is the role/task line.

    ``names`` maps a label to the readable name the model sees and is scored on (missing = the label).
    """

    labels: tuple[str, ...]
    task: str = DEFAULT_TASK
    names: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        unknown = set(self.names) - set(self.labels)
        if unknown:
            raise ValueError(f"names for unknown labels: {sorted(unknown)}")

    @property
    def instruction(self) -> str:  # type: ignore[override]
        return self.task

    @property
    def output_format(self) -> str:  # type: ignore[override]
        shown = ", ".join(self.shown(label) for label in self.labels)
        return f"Labels: {shown}\nAnswer with the label only."

    def shown(self, output: str) -> str:
        """What the prompt shows for the label ``output``."""
        return self.names.get(output, output)


@dataclass(frozen=True)
class OutputTemplate(PromptPattern):
    """An open-output task's prompts: its instruction and output-format lines (an adapter's prompts leave
    the format out: it learned it from its targets)."""

    instruction: str
    output_format: str
    end: ClassVar[str] = END_MARKER
