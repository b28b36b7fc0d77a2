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

Everything up to and including the last ``Input:`` is the same for every test row when the demos are fixed,
so a backend can compute it once (prefix caching). The label is scored as the continuation ``" " + name``,
where ``name`` is the label's readable name (``--label-names``, e.g. trec's ``DESC`` shown as
``description``) or the label itself. Results always keep the data's own labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fewtune.data.load import Example
from fewtune.errors import ConfigError

DEFAULT_TASK = "Classify the input into exactly one label."
SEPARATOR = "---"
# What every query starts with; part of the prefix a backend caches when the demos are fixed.
QUERY_LEAD = "Input:"
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


@dataclass(frozen=True)
class PromptTemplate:
    """Builds prompts for one label set; ``task`` is the role/task line.

    ``names`` maps a label to the readable name the model sees and is scored on (missing = the label).
    """

    labels: tuple[str, ...]
    task: str = DEFAULT_TASK
    names: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        unknown = set(self.names) - set(self.labels)
        if unknown:
            raise ValueError(f"names for unknown labels: {sorted(unknown)}")

    def shown(self, label: str) -> str:
        """What the prompt shows for ``label``."""
        return self.names.get(label, label)

    def header(self) -> str:
        shown = ", ".join(self.shown(label) for label in self.labels)
        return f"{self.task}\nLabels: {shown}\nAnswer with the label only.\n"

    def prefix(self, demos: Sequence[Example]) -> str:
        """Everything before the test input: header and demos, ending with the separator line."""
        parts = [self.header()]
        for demo in demos:
            parts.append(f"{SEPARATOR}\nInput: {one_line(demo.text)}\nOutput: {self.shown(demo.label)}\n")
        parts.append(f"{SEPARATOR}\n")
        return "".join(parts)

    def query(self, text: str) -> str:
        return f"{QUERY_LEAD} {one_line(text)}\nOutput:"

    def render(self, text: str, demos: Sequence[Example] = ()) -> str:
        return self.prefix(demos) + self.query(text)

    def continuation(self, label: str) -> str:
        """What the model is scored on (and trained to produce) after ``Output:``."""
        return f" {self.shown(label)}"
