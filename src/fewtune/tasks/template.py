"""The guides' prompt pattern for open outputs: the instruction line, the exact output format, then
``---``-separated ``Input:``/``Output:`` demos, ending with ``Output:``::

    Extract the fields mentioned in the input as JSON.
    Answer with one line of JSON holding only the fields the input mentions, ... Fields: artist: text; ...
    ---
    Input: add sabrina salerno to the grime instrumentals playlist
    Output: {"artist":"sabrina salerno","playlist":"grime instrumentals"}
    ---
    Input: <the test input>
    Output:

Every output is followed by the ``---`` line, so a model that learned the pattern (from demos or LoRA)
ends its answer with it: that is the end-of-output marker generation stops at, and what LoRA is trained to
produce after the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fewtune.data.load import Example
from fewtune.prompts.template import QUERY_LEAD, SEPARATOR, one_line
from fewtune.tasks.base import END_MARKER


@dataclass(frozen=True)
class OutputTemplate:
    instruction: str
    output_format: str

    def header(self) -> str:
        """The instruction line and the output format (left out when empty: an adapter's prompt)."""
        return f"{self.instruction}\n" + (f"{self.output_format}\n" if self.output_format else "")

    def prefix(self, demos: Sequence[Example]) -> str:
        parts = [self.header()]
        for demo in demos:
            parts.append(f"{SEPARATOR}\n{QUERY_LEAD} {one_line(demo.text)}\nOutput: {demo.label}\n")
        parts.append(f"{SEPARATOR}\n")
        return "".join(parts)

    def query(self, text: str) -> str:
        return f"{QUERY_LEAD} {one_line(text)}\nOutput:"

    def render(self, text: str, demos: Sequence[Example] = ()) -> str:
        return self.prefix(demos) + self.query(text)

    def continuation(self, output: str) -> str:
        """What LoRA learns after ``Output:``: the target, then the end-of-output marker."""
        return f" {output}{END_MARKER}"
