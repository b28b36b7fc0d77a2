"""A backend for any OpenAI-compatible HTTP endpoint: OpenAI, vLLM, llama.cpp, Ollama, ``fewtune serve``.

What a server can do decides how labels are scored, so the backend probes it once, on construction (through
the response cache, so a re-run sends nothing), with a ``/completions`` request for ``echo``,
``logprobs: 1`` and ``max_tokens: 0`` (``1`` if 0 is refused):

- prompt-token log-probabilities come back (vLLM, ``fewtune serve``): ``scoring_mode`` is ``"loglik"``,
  and :meth:`~OpenAICompatBackend.score_choices` sends each ``prompt + choice`` and sums the log-probabilities
  of the tokens after the prompt;
- none come back (llama.cpp answers ``echo`` without them), or there is no ``/completions`` (hosted chat
  APIs): ``scoring_mode`` is ``"generate"``, ``capabilities.loglikelihood`` is False, and labels are scored
  by :class:`~fewtune.backends.generated.GenerateAndParse` over :meth:`~OpenAICompatBackend.generate_batch`.

Which endpoint gets what:

- ``/completions``: scoring (``echo``, ``logprobs``, ``max_tokens`` 0), exact token counts (the same
  request's ``usage.prompt_tokens``), and greedy generation (``temperature`` 0, ``stop``) when the probe
  found the endpoint;
- ``/chat/completions``: generation when there is no ``/completions`` (the prompt as one user message), and
  every generation with a ``constraint``, sent as ``response_format`` ``json_schema`` (the server, not
  fewtune, enforces it; OpenAI, vLLM and ``fewtune serve`` do). A chat server wraps the prompt in its chat
  template, so its answers are those of a chat turn, not of a raw continuation.

Every request goes through the response cache and a pool of ``concurrency`` threads; ``batch_size`` and
``prefix`` are accepted and unused (requests are independent; the server does its own batching and prefix
caching).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from fewtune.backends.base import Backend, Capabilities, Generation, OutputEnd, ProgressFn
from fewtune.backends.endpoint import Endpoint, EndpointSpec, Refused, Route, ServerFailed
from fewtune.backends.openai_answers import (
    JsonSchemaConstraint,
    TokenBoundaryError,
    continuation_logprob,
    estimate_tokens,
)
from fewtune.backends.response_cache import ResponseCache
from fewtune.errors import ConfigError

__all__ = [
    "JsonSchemaConstraint",
    "OpenAICompatBackend",
    "Probe",
    "TokenBoundaryError",
    "continuation_logprob",
]

T = TypeVar("T")

PROBE_TEXT = "Hello world"
"""The probe's prompt: two words, a few tokens in any tokenizer."""


@dataclass(frozen=True)
class Probe:
    """What the server showed when probed."""

    scoring_mode: Literal["loglik", "generate"]
    completions: bool
    """``/completions`` answers (used for generation and, with ``exact_token_counts``, token counts)."""
    scoring_max_tokens: int
    """``max_tokens`` of scoring requests: 0, or 1 when the server refuses 0."""
    exact_token_counts: bool
    """An echo request's ``usage.prompt_tokens`` gives token counts (else they are estimated)."""
    reason: str


class OpenAICompatBackend(Backend):
    """An OpenAI-compatible endpoint as a :class:`~fewtune.backends.base.Backend`: greedy, cached, concurrent.

    Args:
        spec: where the model is and how to reach it; the API key is read from ``spec.api_key_env`` now
            (a :class:`~fewtune.errors.ConfigError` if unset) and kept only by the ``openai`` client.
        cache_path: the SQLite response cache (e.g. ``RUN_DIR/http_cache.sqlite``); None caches nothing.

    Attributes:
        scoring_mode: ``"loglik"`` or ``"generate"``, from the probe (see the module docstring).
        capabilities: ``loglikelihood`` in loglik mode; ``constrained_decoding`` (asked of the server).
        requests_sent, cache_hits: requests that went to the network / were answered from the cache.
        usage_totals: ``{"prompt_tokens", "completion_tokens"}`` of every answer, cached ones included.

    Construction probes the server and raises :class:`~fewtune.backends.endpoint.EndpointError` (one line,
    naming the URL) if it cannot be reached or refuses the key.
    """

    def __init__(self, spec: EndpointSpec, cache_path: str | Path | None = None) -> None:
        self.spec = spec
        self.name = f"{spec.model} @ {spec.url}"
        cache = ResponseCache(cache_path) if cache_path is not None else None
        try:
            self.endpoint = Endpoint(spec, cache)
        except BaseException:
            if cache is not None:
                cache.close()
            raise
        try:
            self.probe = self._probe()
        except BaseException:
            self.close()
            raise
        self.scoring_mode = self.probe.scoring_mode
        self.capabilities = Capabilities(
            loglikelihood=self.scoring_mode == "loglik",
            prefix_cache=False,
            trainable=False,
            constrained_decoding=True,
            remote=True,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAICompatBackend(base_url={self.spec.url!r}, model={self.spec.model!r}, "
            f"api_key_env={self.spec.api_key_env!r}, scoring_mode={self.scoring_mode!r})"
        )

    # -- counters -------------------------------------------------------------------------------------
    @property
    def requests_sent(self) -> int:
        return self.endpoint.requests_sent

    @property
    def cache_hits(self) -> int:
        return self.endpoint.cache_hits

    @property
    def usage_totals(self) -> dict[str, int]:
        return dict(self.endpoint.usage_totals)

    def describe(self) -> dict[str, Any]:
        """The endpoint and what its probe found, for ``results.json`` (no key, only its variable's name)."""
        return {
            "backend": "openai-compatible",
            **self.spec.to_dict(),
            "base_url": self.spec.url,
            "scoring_mode": self.scoring_mode,
            "reason": self.probe.reason,
            "completions_endpoint": self.probe.completions,
            "scoring_max_tokens": self.probe.scoring_max_tokens,
            "token_counts": "server" if self.probe.exact_token_counts else "estimate: ceil(characters / 4)",
            "cache": str(self.endpoint.cache.path) if self.endpoint.cache is not None else None,
        }

    def timed(self, call: Callable[[], object]) -> float:
        """The longest request that ``call`` makes (they are sent at once, so this is its wall time up to
        the few milliseconds between their starts). Its requests are timing requests
        (:meth:`Endpoint.timing`): sent the first time even when the same request was already answered,
        and replayed with their measured seconds after, so a re-run reports the same latency."""
        with self.endpoint.timing() as seconds:
            call()
        return max(seconds, default=0.0)

    def pass_seconds(self, call: Callable[[], T]) -> tuple[T, float | None]:
        """See :meth:`Endpoint.measure`: a re-run answered by the cache reports the pass's measured time."""
        return self.endpoint.measure(call)

    def close(self) -> None:
        self.endpoint.close()
        if self.endpoint.cache is not None:
            self.endpoint.cache.close()

    # -- probe ----------------------------------------------------------------------------------------
    def _echo_body(self, text: str, max_tokens: int) -> dict[str, Any]:
        return {
            "model": self.spec.model,
            "prompt": text,
            "echo": True,
            "logprobs": 1,
            "max_tokens": max_tokens,
            "temperature": 0,
        }

    def _probe(self) -> Probe:
        """Which scoring mode the server supports (module docstring); refusals are cached as answers."""
        refusal: Refused | None = None
        for max_tokens in (0, 1):
            try:
                response = self.endpoint.request(
                    "completions", self._echo_body(PROBE_TEXT, max_tokens), cache_refusals=True
                )
            except Refused as err:
                if err.code == "model_not_found":
                    raise
                refusal = err
                if err.status == 400:
                    continue  # max_tokens 0, or echo with logprobs, not taken
                return Probe("generate", False, 0, False, f"/completions refused: {err}")
            except ServerFailed as err:  # unreachable or unauthorized: raised as they are
                return Probe("generate", False, 0, False, f"/completions failed: {err}")
            choice = (response.get("choices") or [{}])[0]
            values = (choice.get("logprobs") or {}).get("token_logprobs") or []
            counted = isinstance((response.get("usage") or {}).get("prompt_tokens"), int)
            if any(v is not None for v in values[1:]) and (choice.get("logprobs") or {}).get("text_offset"):
                reason = f"/completions returns prompt log-probabilities with echo (max_tokens {max_tokens})"
                return Probe("loglik", True, max_tokens, counted, reason)
            reason = "/completions answers echo requests without prompt log-probabilities"
            return Probe("generate", True, max_tokens, counted, reason)
        # Both echo probes refused with 400: does a plain completion work?
        plain = {"model": self.spec.model, "prompt": PROBE_TEXT, "max_tokens": 1, "temperature": 0}
        try:
            self.endpoint.request("completions", plain, cache_refusals=True)
        except Refused:
            return Probe("generate", False, 0, False, f"/completions refused: {refusal}")
        return Probe("generate", True, 0, False, f"/completions refused echo with logprobs: {refusal}")

    # -- pool -----------------------------------------------------------------------------------------
    def _run(self, tasks: Sequence[Callable[[], T]], done: Callable[[int], None] | None = None) -> list[T]:
        """Results of ``tasks`` in order, at most ``concurrency`` at once; ``done(i)`` in this thread as each
        finishes. The first failure cancels the tasks not started (finished answers stay cached)."""
        results: list[Any] = [None] * len(tasks)
        with ThreadPoolExecutor(max_workers=self.spec.concurrency, thread_name_prefix="fewtune-http") as pool:
            futures = {pool.submit(task): i for i, task in enumerate(tasks)}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    if done is not None:
                        done(i)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return results

    # -- Backend --------------------------------------------------------------------------------------
    def score_choices(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        batch_size: int = 16,
        progress: ProgressFn | None = None,
        prefix: str = "",
    ) -> np.ndarray:
        """Exact log-likelihoods ``[n, m]`` (no constant left out): one ``/completions`` request per prompt
        and choice, ``echo`` with ``max_tokens`` 0, summing the choice's tokens
        (:func:`continuation_logprob`).

        The server tokenizes ``prompt + choice`` as one text, where :class:`~fewtune.backends.hf.HFBackend`
        encodes the two separately and leaves out the first choice token's normalizer (a constant per row).
        Where the prompt ends on a token boundary (``Output:`` then `` label``) the tokens are the same and
        the two backends' scores differ by that constant only; where it does not, this raises
        :class:`TokenBoundaryError` rather than score different tokens."""
        if self.scoring_mode != "loglik":
            raise ConfigError(
                f"{self.spec.url} ({self.spec.model}) cannot score labels by log-likelihood "
                f"({self.probe.reason}); use generate-and-parse (--label-scoring generate)"
            )
        if any(not choice for choice in choices):
            raise ValueError("every choice must be non-empty")
        where = f"{self.spec.url}/completions"
        pairs = [(i, j) for i in range(len(prompts)) for j in range(len(choices))]

        def score(i: int, j: int) -> float:
            text = prompts[i] + choices[j]
            body = self._echo_body(text, self.probe.scoring_max_tokens)
            return continuation_logprob(self.endpoint.request("completions", body), prompts[i], text, where)

        left = [len(choices)] * len(prompts)

        def finished(k: int) -> None:
            i = pairs[k][0]
            left[i] -= 1
            if progress is not None and left[i] == 0:
                progress(1)

        values = self._run([partial(score, i, j) for i, j in pairs], finished)
        return np.asarray(values, dtype=np.float64).reshape(len(prompts), len(choices))

    def schema_constraint(self, schema: Mapping[str, Any]) -> Callable[[], Any]:
        """A :class:`JsonSchemaConstraint`: generation with it goes to ``/chat/completions`` with
        ``response_format`` ``json_schema`` (its answer is the JSON alone, without a leading space)."""
        return JsonSchemaConstraint(dict(schema))

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
        """Greedy (``temperature`` 0) continuations: ``/completions`` when the server has it and there is no
        ``constraint``, else ``/chat/completions`` with the prompt as one user message. Token counts come
        from each answer's ``usage``; ``stopped`` from ``finish_reason == "stop"`` (the stop string or the
        end of the answer). The text is cut at ``stop`` here too, for servers that return it, and where
        ``output_end`` finds it complete (a server has no such stop: it writes on, and is paid for it)."""
        if constraint is not None and not isinstance(constraint, JsonSchemaConstraint):
            raise ConfigError("an HTTP backend takes only constraints from its own schema_constraint()")
        chat = constraint is not None or not self.probe.completions
        route: Route = "chat/completions" if chat else "completions"

        def body(prompt: str) -> dict[str, Any]:
            request: dict[str, Any] = {"model": self.spec.model, "temperature": 0}
            if chat:
                request["messages"] = [{"role": "user", "content": prompt}]
                request[self.spec.chat_token_limit] = max_new_tokens
            else:
                request.update(prompt=prompt, max_tokens=max_new_tokens)
            if stop:
                request["stop"] = [stop]
            if isinstance(constraint, JsonSchemaConstraint):
                request["response_format"] = constraint.response_format()
            return request

        def generate(prompt: str) -> Generation:
            response = self.endpoint.request(route, body(prompt))
            return self._generation(response, prompt, chat, stop, output_end)

        done = (lambda i: progress(1)) if progress is not None else None
        return self._run([partial(generate, p) for p in prompts], done)

    def _generation(
        self,
        response: Mapping[str, Any],
        prompt: str,
        chat: bool,
        stop: str | None,
        output_end: OutputEnd | None,
    ) -> Generation:
        choice = (response.get("choices") or [{}])[0]
        raw = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        text = str(raw or "")
        cut = bool(stop) and stop is not None and stop in text
        if stop and cut:
            text = text[: text.index(stop)]
        complete = output_end(text) if output_end else None
        if complete is not None:
            text, cut = text[:complete], True
        usage = response.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        output_tokens = usage.get("completion_tokens")
        return Generation(
            text,
            int(prompt_tokens) if isinstance(prompt_tokens, int) else estimate_tokens(prompt),
            int(output_tokens) if isinstance(output_tokens, int) else estimate_tokens(text),
            stopped=cut or choice.get("finish_reason") == "stop",
        )

    def count_tokens(self, text: str) -> int:
        """The server's prompt token count for ``text`` (``usage.prompt_tokens`` of a cached ``echo``
        request without log-probabilities, so that the server computes nothing; BOS included where the
        server adds one) when ``/completions`` reports it; otherwise an ESTIMATE, ``ceil(characters / 4)``
        (:data:`CHARS_PER_TOKEN`), as ``describe()["token_counts"]`` records."""
        if not self.probe.exact_token_counts:
            return estimate_tokens(text)
        body = {
            "model": self.spec.model,
            "prompt": text,
            "echo": True,
            "max_tokens": self.probe.scoring_max_tokens,
            "temperature": 0,
        }
        response = self.endpoint.request("completions", body, work=False)
        return int((response.get("usage") or {}).get("prompt_tokens") or 0)

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        """:meth:`count_tokens` of each text, ``concurrency`` requests at a time."""
        return self._run([partial(self.count_tokens, text) for text in texts])
