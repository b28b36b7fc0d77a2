"""The one check every value a client sends passes at the edge, so nothing it sends reaches a tokenizer, a
log or a JSON answer that cannot take it (which would be a 500, and on a canary route charged to an arm).

- Text is valid Unicode: JSON's ``\\ud800`` escapes decode to lone surrogates, which no UTF-8 encoder (the
  tokenizer's, a log's) accepts.
- Numbers are finite: Python's JSON reader takes ``NaN``, ``Infinity`` and ``1e400`` (infinite), which no
  range check refuses (``nan < 1`` is false) and no strict JSON answer can echo.
- Nesting is bounded: the reader recurses per level, so ``[[[...]]]`` 100,000 deep is a ``RecursionError``.

:func:`parse_json` reads a body with these checks, :func:`check_json` checks a value already read (the
pydantic request models call it before their own field checks). Both raise :class:`BadInput`, a
``ValueError``, whose message names where the value is.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32
"""Deepest nesting of lists and objects taken: a chat request's messages and a JSON schema sit far above."""


class BadInput(ValueError):
    """A value no route can take, with the place it is at (``messages.0.content``)."""


def check_text(text: str, where: str) -> None:
    """``text`` encodes as UTF-8 (no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        shown = f"\\u{code:04x}"
        raise BadInput(f"{where or 'text'}: a lone surrogate ({shown}) is not valid Unicode text") from None


def check_json(value: Any, where: str = "") -> None:
    """Every string, key and number in ``value``, nested lists and objects included, is one a route takes."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, at, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadInput(f"{at or 'the body'}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, str):
            check_text(item, at)
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadInput(f"{at or 'the body'}: numbers must be finite, got {item}")
        elif isinstance(item, dict):
            for key, inner in item.items():
                name = f"{at}.{key}" if at else str(key)
                check_text(str(key), at or "a key")
                stack.append((inner, name, depth + 1))
        elif isinstance(item, list | tuple):
            stack += [(inner, f"{at}.{i}" if at else str(i), depth + 1) for i, inner in enumerate(item)]


def parse_json(raw: bytes | str, what: str | None = "the request body") -> Any:
    """``raw`` read as JSON and checked (:func:`check_json`), or a one-line :class:`BadInput` (``what``
    is the subject of its sentence; None where the caller says where, as a file's line)."""
    subject = f"{what} is " if what else ""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BadInput(f"{subject}nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as err:  # UnicodeDecodeError included
        raise BadInput(f"{subject}not valid JSON ({str(err).split(':')[0]})") from None
    check_json(value)
    return value
