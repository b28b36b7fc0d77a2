"""What fewtune reads from an OpenAI-compatible server's answers, and the one thing it sends that is not a
plain field: a JSON schema as ``response_format``.

Scoring reads the legacy completions ``logprobs`` object (``tokens``, ``token_logprobs``, ``text_offset``)
of an ``echo`` request: ``text_offset[i]`` is where token ``i`` starts in the echoed text, so the tokens of a
choice are those that start at or after the end of the prompt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fewtune.backends.endpoint import EndpointError
from fewtune.errors import FewtuneError

CHARS_PER_TOKEN = 4
"""Token count estimate for servers that report none before generating: OpenAI's rule of thumb of about
4 characters of English per token (help.openai.com, "What are tokens and how to count them?")."""


class TokenBoundaryError(FewtuneError):
    """The server's tokens do not split where the prompt ends and the choice begins."""


@dataclass(frozen=True, eq=False)
class JsonSchemaConstraint:
    """A ``constraint`` for :meth:`OpenAICompatBackend.generate_batch`: the schema, sent to the server as
    ``response_format``. Calling it (what a local backend does with a constraint) is an error."""

    schema: Mapping[str, Any]

    def __call__(self) -> Any:
        raise TypeError("this constraint is enforced by the server (response_format), not by a local model")

    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": self.schema}}


def continuation_logprob(response: Mapping[str, Any], prompt: str, text: str, where: str) -> float:
    """Sum of the log-probabilities of the tokens of ``text`` (``prompt + choice``, echoed) that start at
    or after the end of ``prompt`` and before the end of ``text`` (a token generated after it is left out).

    The first of them must start exactly where the prompt ends: a token that straddles the boundary holds
    part of the prompt and part of the choice, and its log-probability cannot be split, so that is a
    :class:`TokenBoundaryError`, never a guess.
    """
    choice = (response.get("choices") or [{}])[0]
    logprobs = choice.get("logprobs") or {}
    offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
    if not offsets or not values or len(offsets) != len(values):
        raise EndpointError(f"{where}: the answer has no token_logprobs and text_offset for the prompt")
    if not str(choice.get("text", "")).startswith(text):
        raise EndpointError(f"{where}: the answer does not echo the prompt (echo=true)")
    total, counted = 0.0, 0
    for start, value in zip(offsets, values, strict=True):
        if start < len(prompt):
            continue
        if start >= len(text):
            break
        if counted == 0 and start != len(prompt):
            break  # the token before this one runs past the prompt
        if value is None:
            raise EndpointError(f"{where}: no log-probability for a token of {text[len(prompt) :]!r}")
        total += float(value)
        counted += 1
    if counted == 0:
        raise TokenBoundaryError(
            f"{where}: a token spans the end of the prompt (...{prompt[-20:]!r}) and the start of the "
            f"choice {text[len(prompt) :]!r}, so the choice's log-likelihood cannot be split off; end the "
            "prompt where a token ends (e.g. 'Output:' followed by choices that start with a space)"
        )
    return total


def estimate_tokens(text: str) -> int:
    """An ESTIMATE of ``text``'s tokens, ``ceil(characters / CHARS_PER_TOKEN)``."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)
