"""What one request may ask of ``fewtune serve``, so that no single request can take the server down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """New tokens per request (a server limit far below the context length: each generated token costs
    time), prompts in one request, the request body's bytes (413 above), requests waiting or running at
    once (429 above) and seconds a request may take, queueing included (504 past it)."""

    max_tokens: int = 1024
    max_prompts: int = 64
    max_body_bytes: int = 1_048_576
    max_queue: int = 256
    request_timeout_s: float = 300.0
