"""The one model interface every strategy talks to (after lm-evaluation-harness's ``LM``)."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

ProgressFn = Callable[[int], None]
OutputEnd = Callable[[str], int | None]
"""Where an output is complete in the text generated so far (the length to keep), None while it is not."""
T = TypeVar("T")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, so callers ask instead of reaching into its internals."""

    loglikelihood: bool = True
    """``score_choices`` works (a chat API without prompt log-probabilities cannot)."""
    prefix_cache: bool = False
    """Reuses the KV cache of a shared prompt prefix; ``prefix_caching`` switches it off for timing."""
    trainable: bool = False
    """A LoRA adapter can be trained on it (a local model)."""
    constrained_decoding: bool = False
    """``generate_batch`` takes a ``constraint`` (a logits-processor factory)."""
    remote: bool = False
    """Requests go to a server (an API priced per token): token counts are the server's, and checks that
    would send a request per prompt are left out."""


@dataclass(frozen=True)
class Generation:
    """One generated output: its text (cut at the stop marker), token counts, and whether it ended on its own
    (the stop marker or EOS) rather than at ``max_new_tokens``."""

    text: str
    prompt_tokens: int
    output_tokens: int
    stopped: bool


class Backend(abc.ABC):
    """A language model that scores continuations and generates text; ``capabilities`` says which."""

    name: str = "backend"
    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    def score_choices(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        batch_size: int = 16,
        progress: ProgressFn | None = None,
        prefix: str = "",
    ) -> np.ndarray:
        """Log-likelihood of each choice as the continuation of each prompt.

        Args:
            prompts: ``n`` contexts.
            choices: ``m`` continuations (e.g. ``" positive"``), the same for every prompt.
            batch_size: prompts per forward pass.
            progress: called with the number of prompts finished after each batch.
            prefix: text every prompt starts with (the demo block); a backend may compute it once and reuse
                it. Scores are the same with or without it.

        Returns:
            float array of shape ``[n, m]``: ``sum_t log p(choice_t | prompt, choice_<t)``, up to a constant
            per prompt (a backend may leave out the normalizer of the choices' first token, the same for
            every choice). Compare scores within a row; a row's log-softmax is the log-probability of
            each choice among the choices.
        """

    @abc.abstractmethod
    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        prefix: str = "",
        max_new_tokens: int = 64,
        stop: str | None = None,
        output_end: OutputEnd | None = None,
        batch_size: int = 16,
        progress: ProgressFn | None = None,
        constraint: Callable[[], Any] | None = None,
    ) -> list[Generation]:
        """Greedy continuation of each prompt (without the prompt), cut at ``stop``.

        ``prefix``: text every prompt starts with, which the backend may compute once; ``output_end``: where
        an output is complete before ``stop`` (the task's, e.g. a closed JSON object): the text is cut there
        too, and a backend that can stops generating it there; ``progress`` is called with the prompts
        finished after each batch; ``constraint`` (with ``capabilities.constrained_decoding``) makes a fresh
        logits processor per batch.
        """

    def describe(self) -> dict[str, Any]:
        """What results.json's ``hardware`` (or ``prompt_model``) block records about this backend."""
        return {"backend": self.name}

    @property
    def context_length(self) -> int | None:
        """Tokens the model can attend to, when known."""
        return None

    @property
    def on_cpu(self) -> bool:
        """Runs on a CPU here (long prompts are slow): every backend that does not say otherwise."""
        return True

    @property
    def requests_sent(self) -> int | None:
        """Requests sent over the network (a remote backend); None for an in-process model."""
        return None

    @property
    def usage_totals(self) -> dict[str, int] | None:
        """Token usage a server reported (a remote backend); None for an in-process model."""
        return None

    def timed(self, call: Callable[[], object]) -> float:
        """Seconds that ``call`` (one request's work on this backend) takes: wall-clock time here. A remote
        backend answers with its requests' own time, kept with its cached responses, so that a re-run
        replays the latency it measured rather than timing cache lookups."""
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    def pass_seconds(self, call: Callable[[], T]) -> tuple[T, float | None]:
        """``call()``'s result and the seconds it took (a pass over the test rows, for throughput): wall-clock
        time here. A remote backend gives None for a pass partly answered from its cache and never measured
        whole, rather than the time of cache lookups."""
        start = time.perf_counter()
        result = call()
        return result, time.perf_counter() - start

    def schema_constraint(self, schema: Mapping[str, Any]) -> Callable[[], Any]:
        """A ``constraint`` for :meth:`generate_batch` that allows only JSON matching ``schema``."""
        raise NotImplementedError(f"backend '{self.name}' cannot constrain decoding")

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 10) -> list[str]:
        """Greedy continuation of each prompt, ``n`` strings (without the prompt)."""
        return [g.text for g in self.generate_batch(prompts, max_new_tokens=max_new_tokens)]

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens the model would see for ``text`` as a prompt (including any BOS token)."""

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        """:meth:`count_tokens` of each text (a remote backend asks for them concurrently)."""
        return [self.count_tokens(text) for text in texts]
