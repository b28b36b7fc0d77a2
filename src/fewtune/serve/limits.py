"""What one request may ask of ``fewtune serve``, so that no single request can take the server down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """New tokens per request (a server limit far below the context length: each generated token costs
    time and, with logprobs, memory), prompts in one request, and the request body's bytes (413 above)."""

    max_tokens: int = 1024
    max_prompts: int = 64
    max_body_bytes: int = 1_048_576
