"""What the engine's queue holds: requests (:class:`Job`), adapter changes, and how a job is stopped early.

A job ends early when its client has gone (:meth:`Job.cancel`, called by the app on a disconnect) or when
its deadline (the server's ``--request-timeout-s``) has passed. A job still queued is then dropped when the
worker reaches it; a running one stops at the next forward pass of the model (each decoding step is one)
once every job it runs with has ended early (:func:`stop_when_abandoned`), which frees its KV cache.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fewtune.errors import FewtuneError

if TYPE_CHECKING:
    from fewtune.serve.tokens import LegacyLogprobs


class UnknownModel(FewtuneError):
    """A request named a model that is neither the base nor a loaded adapter (HTTP 404)."""


class BadRequest(FewtuneError):
    """A request the server cannot run as asked: too long, a broken schema, a bad adapter (HTTP 400)."""


class QueueFull(FewtuneError):
    """The server already holds as many requests as it queues (HTTP 429)."""


class Abandoned(FewtuneError):
    """A job stopped before its end because its client closed the request."""


class TimedOut(Abandoned):
    """A job stopped because it ran past the server's request timeout (HTTP 504)."""


@dataclass(frozen=True)
class Output:
    """One prompt's result: the completion (without the prompt), counts, and the legacy logprobs object."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """``stop`` (the stop string or EOS) or ``length`` (``max_tokens`` reached)."""
    logprobs: LegacyLogprobs | None = None


@dataclass
class Job:
    """One request's prompts and how to continue them (greedy)."""

    adapter: str | None
    """Adapter name, or None for the bare base model."""
    prompts: list[str]
    max_tokens: int
    """New tokens at most; 0 scores the prompt without generating."""
    stop: str | None = None
    schema: dict[str, Any] | None = None
    """Constrain the output to JSON matching this schema (xgrammar)."""
    logprobs: int | None = None
    """Alternatives per token to return with its log-probability; None = no log-probabilities."""
    echo: bool = False
    """Log-probabilities cover the prompt tokens too (the text itself is echoed by the caller)."""
    deadline: float | None = None
    """``time.monotonic()`` by which the job must be done; past it the worker stops it."""
    group: str | None = None
    """Jobs of different groups never share a batch: a served method's jobs (its own demo block as their
    shared prefix, whose KV cache is reused) are not mixed with another method's, whose prompts would share
    only the task line."""
    future: Future[list[Output]] = field(default_factory=Future)
    _gone: threading.Event = field(default_factory=threading.Event, repr=False)

    def key(self) -> tuple[Any, ...]:
        """Jobs with equal keys run together (one generate_batch call, or one scoring pass)."""
        schema = json.dumps(self.schema, sort_keys=True) if self.schema is not None else None
        scored = self.logprobs is not None and self.max_tokens > 0  # generated one at a time
        return (self.adapter, self.max_tokens, self.stop, schema, scored, self.group)

    def cancel(self) -> None:
        """Nobody waits for this job any more: drop it if it is queued, stop it if it runs."""
        self._gone.set()
        self.future.cancel()  # succeeds only while it is queued

    def abandoned(self) -> Abandoned | None:
        """Why this job should stop now (None: it should go on)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            return TimedOut("the request ran past the server's time limit")
        if self._gone.is_set():
            return Abandoned("the client closed the request")
        return None


@dataclass
class Control:
    """A change to the model (adapter load or unload), run by the worker between batches."""

    action: Callable[[], None]
    future: Future[None] = field(default_factory=Future)


@contextmanager
def stop_when_abandoned(module: Any, jobs: Sequence[Job]) -> Iterator[None]:
    """Within the block, every forward pass of ``module`` first checks ``jobs``: once all of them are
    abandoned, it raises their :class:`Abandoned` (a :class:`TimedOut` if any timed out), which ends the
    generation or scoring pass under way and frees what it held."""

    def check(_module: Any, _args: Any) -> None:
        reasons = [job.abandoned() for job in jobs]
        if jobs and all(reasons):
            raise next((r for r in reasons if isinstance(r, TimedOut)), reasons[0])  # type: ignore[misc]

    handle = module.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()
