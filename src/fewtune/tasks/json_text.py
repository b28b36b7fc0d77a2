"""JSON objects in a model's output: reading the first one (extraction's parse), and where it ends
(generation stops there).

The two agree by construction: :func:`object_end` lexes strings as JSON does (a quote opens and closes one,
a backslash escapes the next character) and counts braces outside them, so wherever a JSON object starts the
output (after whitespace) and closes on the first line, it closes where :func:`first_object`'s decoder ends
it; and if the text up to that brace is not a valid object, no longer one starting there is either. An output
cut at :func:`object_end` therefore reads as the same object, or as none, as the whole output did.
"""

from __future__ import annotations

import json
from typing import Any


def first_object(text: str) -> dict[str, Any] | None:
    """The JSON object ``text`` is (whitespace around it aside), else the one its first line starts with (a
    model may run on after a complete object); None when it is neither."""
    candidate = text.strip()
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError:
        try:
            value, _ = json.JSONDecoder().raw_decode(candidate.split("\n", 1)[0])
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


def object_end(text: str) -> int | None:
    """Where the JSON object that ``text`` starts with (after whitespace) closes: the index after its closing
    brace. None while it is open, when it spans lines (:func:`first_object` reads the first line), or when
    ``text`` starts with something else."""
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] != "{":
        return None
    depth, in_string, escaped = 0, False, False
    for at in range(start, len(text)):
        char = text[at]
        if char == "\n":
            return None
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return at + 1
    return None


def json_object(text: Any) -> dict[str, Any] | None:
    """A prediction line's field (an object, or JSON text of one) as an object, or None."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
