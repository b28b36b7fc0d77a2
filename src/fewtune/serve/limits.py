"""What one request may ask of ``fewtune serve``, so that no single request can take the server down."""

from __future__ import annotations

from dataclasses import dataclass

from fewtune.errors import ConfigError


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


@dataclass(frozen=True)
class FineTuneLimits:
    """What the fine-tuning API takes, so that no upload or job can take inference down with it: checked
    when a file is uploaded and when a job is created (one-line 400s), each a ``fewtune serve`` flag."""

    max_train_tokens: int = 4096
    """Most tokens of one training or validation row, prompt and answer (never more than the model's
    context): training memory grows with the square of a row's length."""
    max_files: int = 100
    """Most fine-tuning files kept at once (``DELETE /v1/files/{id}`` frees one)."""
    max_upload_bytes: int = 64 * 1024 * 1024
    """Most bytes of fine-tuning files kept at once."""
    max_jobs: int = 4
    """Most jobs waiting or training at once (validating_files, queued, running)."""
    max_steps: int = 2000
    """Most optimizer steps one job may take: epochs x training rows / batch size, rounded up."""
    max_validation_rows: int = 500
    """Most rows a job's held-out comparison scores (each on both models)."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                flag = "--" + name.replace("_", "-").replace("max-steps", "max-train-steps")
                raise ConfigError(f"{flag} must be a whole number of at least 1, got {value!r}")
