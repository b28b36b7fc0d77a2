"""Serving a measured method, not only weights: an *arm* answers one input the way a run's method did.

A classification method of a run is rebuilt from its results row: the run's prompt template (task line,
labels and their readable names), the method's fixed demos, its calibration (``label_bias``) and its adapter.
The application sends only its input; the arm renders the method's prompt, scores every label's continuation
by log-likelihood (the ``echo`` scoring requests the run's endpoint backend sends,
:func:`fewtune.backends.openai_answers.continuation_logprob`) and answers with the best label, as the run
scored it.

Where the model runs: a :class:`LocalArm` submits the scoring job to this server's engine (its base model or
one of its adapters); a :class:`RemoteArm` sends the same prompts to an OpenAI-compatible endpoint
(``METHOD@URL#MODEL``: the method's prompt on another server's model, e.g. a large hosted model), so a
canary can put "a large model with a prompt" against "a small model with an adapter".

A remote arm is an outside server, so what it sends back is checked like client input: its reply is read
to at most :data:`MAX_REPLY_BYTES`, must parse as a completion (token counts whole and not negative,
log-probabilities finite), and every failure is an :class:`ArmError` whose message names no URL (the URL
goes only to the server's log). It gets a key only when one is configured for its host (``--arm-key-env``),
never the general ``OPENAI_API_KEY``, and plain ``http://`` only to a loopback host unless allowed.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, Field, FiniteFloat, NonNegativeInt, ValidationError

from fewtune.backends.openai_answers import continuation_logprob
from fewtune.data.load import Example
from fewtune.decide.cost import PriceTable, token_prices
from fewtune.errors import ConfigError, FewtuneError
from fewtune.prompts.template import OutputTemplate, PromptTemplate
from fewtune.serve.access import is_loopback
from fewtune.strategies.base import log_softmax

RunJob = Callable[[Any], Awaitable[list[Any]]]
"""Runs one engine :class:`~fewtune.serve.jobs.Job` for the request being answered (the app's queue,
deadline and disconnect handling) and returns its outputs."""
PROMPTS_PER_CALL = 32
"""Label continuations sent in one scoring request (a server's per-request prompt limit is larger)."""
MAX_REPLY_BYTES = 32 * 1024 * 1024
"""Most bytes read of one remote reply. An echo reply for :data:`PROMPTS_PER_CALL` prompts of a few
thousand tokens each is a few MiB (about 60 bytes of JSON per token); without a cap a 400 MB reply from a
broken or hostile endpoint cost the server 1.2 GB while it was parsed."""
CONNECT_TIMEOUT_S = 5.0
"""Seconds to open a connection to a remote arm: a candidate that does not accept connections is given up
on quickly, so its callers are answered by the baseline (:mod:`fewtune.serve.canary`)."""


class ArmError(FewtuneError):
    """The arm's model failed to answer (unreachable, an HTTP error, a broken answer): HTTP 502 to the caller.

    ``str(err)`` is what a caller may see (it never names the endpoint's URL); ``detail`` adds the URL and
    the cause, for the server's log."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.detail = detail or reason


@dataclass(frozen=True)
class MethodPrompt:
    """What a classification method sends for one input, and how it picks the label."""

    name: str
    template: PromptTemplate
    demos: tuple[Example, ...]
    label_bias: tuple[float, ...] | None
    adapter: str | None
    """The adapter folder's name (as the server loads it), or None for the base model."""
    trained: bool

    def prompt(self, text: str) -> str:
        return self.template.render(text, self.demos)

    def choices(self) -> list[str]:
        return [self.template.continuation(label) for label in self.template.labels]

    def label(self, scores: np.ndarray) -> str:
        """The best label for one row of label log-likelihoods (calibrated as the run calibrated it)."""
        if self.label_bias is not None:
            scores = log_softmax(scores) - np.asarray(self.label_bias)
        return self.template.labels[int(np.argmax(scores))]


@dataclass(frozen=True)
class OutputMethod:
    """What an open-output method (extraction, generation, multi-label) sends for one input and how its
    answer is read: the run's output template, demos, new-token cap, stop marker and, for a constrained
    row, the output schema."""

    name: str
    template: OutputTemplate
    demos: tuple[Example, ...]
    adapter: str | None
    trained: bool
    task: Any
    """The run's :class:`~fewtune.tasks.base.Task` (it parses the output)."""
    max_tokens: int
    schema: dict[str, Any] | None = None

    def prompt(self, text: str) -> str:
        return self.template.render(text, self.demos)

    def answer_of(self, output: str) -> str:
        """The answer as the application gets it: the parsed JSON (compact), or the text."""
        parsed = self.task.parse(output)
        if parsed.ok and not isinstance(parsed.value, str):
            return json.dumps(parsed.value, ensure_ascii=False)
        return str(parsed.value) if parsed.ok else output.strip()


@dataclass(frozen=True)
class Answer:
    text: str
    """The label, or the output (JSON or text)."""
    prompt_tokens: int
    completion_tokens: int
    is_label: bool = True
    """A label from the run's set (the request log keeps labels, never free text)."""


def _score(method: MethodPrompt, prompt: str, responses: list[dict[str, Any]], where: str) -> np.ndarray:
    texts = [prompt + choice for choice in method.choices()]
    return np.array(
        [continuation_logprob(r, prompt, text, where) for r, text in zip(responses, texts, strict=True)]
    )


class Arm(abc.ABC):
    """One way of answering a route's requests: a method on a model."""

    def __init__(self, name: str, method: MethodPrompt | OutputMethod) -> None:
        self.name = name
        self.method = method

    async def answer(self, text: str, run_job: RunJob) -> Answer:
        """The answer for ``text``: a label (every label's continuation scored, in chunks) or a generated
        output read back by the task; ``run_job`` runs a job on this server's engine."""
        if isinstance(self.method, OutputMethod):
            output, used, made = await self.generate(self.method, self.method.prompt(text), run_job)
            return Answer(self.method.answer_of(output), used, made, is_label=False)
        prompt = self.method.prompt(text)
        texts = [prompt + choice for choice in self.method.choices()]
        responses: list[dict[str, Any]] = []
        tokens = 0
        for start in range(0, len(texts), PROMPTS_PER_CALL):
            chunk, used = await self.echo(texts[start : start + PROMPTS_PER_CALL], run_job)
            responses += chunk
            tokens += used
        return Answer(self.method.label(_score(self.method, prompt, responses, self.name)), tokens, 0)

    @abc.abstractmethod
    async def generate(self, method: OutputMethod, prompt: str, run_job: RunJob) -> tuple[str, int, int]:
        """The output for ``prompt`` (greedy, to the method's stop marker or cap), its prompt and output
        tokens."""

    @abc.abstractmethod
    async def echo(self, texts: list[str], run_job: RunJob) -> tuple[list[dict[str, Any]], int]:
        """One completion response per text (``echo``, prompt log-probabilities, nothing generated), and
        the prompt tokens they took."""

    def cost(self, answer: Answer, seconds: float, prices: PriceTable) -> float:
        """Dollars for one answered request: tokens at the table's (fine-tuned) token prices when it prices
        a hosted API, else the request's seconds of the serving machine."""
        if prices.pricing == "self-hosted":
            return seconds * prices.serving_dollars_per_hour / 3600 / prices.serving_utilization
        price_in, price_out = token_prices(prices, self.method.trained)
        return (answer.prompt_tokens * price_in + answer.completion_tokens * price_out) / 1e6


class LocalArm(Arm):
    """The method on this server's engine."""

    async def echo(self, texts: list[str], run_job: RunJob) -> tuple[list[dict[str, Any]], int]:
        from fewtune.serve.jobs import Job

        job = Job(self.method.adapter, texts, max_tokens=0, logprobs=0, echo=True, group=self.method.name)
        outputs = await run_job(job)
        responses = [
            {"choices": [{"text": t, "logprobs": o.logprobs}]} for t, o in zip(texts, outputs, strict=True)
        ]
        return responses, sum(o.prompt_tokens for o in outputs)

    async def generate(self, method: OutputMethod, prompt: str, run_job: RunJob) -> tuple[str, int, int]:
        from fewtune.serve.jobs import Job

        job = Job(method.adapter, [prompt], max_tokens=method.max_tokens, stop=method.task.stop,
                  schema=method.schema, group=method.name)  # fmt: skip
        (output,) = await run_job(job)
        return output.text, output.prompt_tokens, output.completion_tokens


class _Logprobs(BaseModel):
    text_offset: list[NonNegativeInt] = []
    token_logprobs: list[FiniteFloat | None] = []


class _Choice(BaseModel):
    index: NonNegativeInt = 0
    text: str
    logprobs: _Logprobs | None = None


class _Usage(BaseModel):
    prompt_tokens: NonNegativeInt | None = None
    completion_tokens: NonNegativeInt | None = None


class _Reply(BaseModel):
    """A ``/v1/completions`` reply as a remote arm reads it (anything else in it is ignored)."""

    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage | None = None

    def tokens(self) -> tuple[int, int]:
        usage = self.usage or _Usage()
        return usage.prompt_tokens or 0, usage.completion_tokens or 0


def public_spec(spec: str) -> str:
    """An arm spec as a caller may see it: ``METHOD@URL#MODEL`` -> ``METHOD@remote`` (the URL and the
    remote model are the operator's business)."""
    name, at, _ = spec.partition("@")
    return f"{name.strip()}@remote" if at else spec


class RemoteArm(Arm):
    """The method's prompt on an OpenAI-compatible endpoint's model (``URL#MODEL``)."""

    def __init__(
        self,
        name: str,
        method: MethodPrompt | OutputMethod,
        base_url: str,
        model: str,
        timeout_s: float = 60,
        api_key: str | None = None,
    ) -> None:
        super().__init__(name, method)
        from fewtune.http_client import httpx

        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.public = public_spec(name)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        self.client = httpx.AsyncClient(timeout=timeout, headers=headers, follow_redirects=False)

    def _error(self, reason: str, cause: str = "") -> ArmError:
        return ArmError(f"{self.public}: {reason}", f"{self.name} ({self.url}): {cause or reason}")

    async def _read(self, body: dict[str, Any]) -> bytes:
        """The reply's bytes, at most :data:`MAX_REPLY_BYTES` of them."""
        from fewtune.http_client import httpx

        try:
            async with self.client.stream("POST", self.url, json=body) as reply:
                if reply.status_code != 200:
                    raise self._error(f"its endpoint answered HTTP {reply.status_code}")
                declared = reply.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
                    raise self._error(f"its endpoint's reply is over {MAX_REPLY_BYTES:,} bytes")
                content = bytearray()
                async for chunk in reply.aiter_bytes():
                    content += chunk
                    if len(content) > MAX_REPLY_BYTES:
                        raise self._error(f"its endpoint's reply is over {MAX_REPLY_BYTES:,} bytes")
                return bytes(content)
        except httpx.HTTPError as err:
            raise self._error(
                f"its endpoint could not be reached ({type(err).__name__})", repr(err)
            ) from None

    async def _post(self, body: dict[str, Any]) -> _Reply:
        content = await self._read(body)
        try:
            return _Reply.model_validate_json(content)
        except ValidationError as err:
            first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid"}
            where = ".".join(str(part) for part in first["loc"])
            cause = f"not a completion ({where}: {first['msg']})"
            raise self._error("its endpoint sent an answer that is not a completion", cause) from None

    async def answer(self, text: str, run_job: RunJob) -> Answer:
        """As :meth:`Arm.answer`; an answer the method cannot read (no echoed log-probabilities, a token
        across the prompt's end) is an :class:`ArmError` too."""
        try:
            return await super().answer(text, run_job)
        except ArmError:
            raise
        except (FewtuneError, ValueError, TypeError, IndexError, KeyError) as err:
            raise self._error("its endpoint's answer cannot be scored", str(err)) from None

    async def echo(self, texts: list[str], run_job: RunJob) -> tuple[list[dict[str, Any]], int]:
        reply = await self._post(
            {"model": self.model, "prompt": texts, "echo": True, "logprobs": 0, "max_tokens": 0}
        )
        choices = sorted(reply.choices, key=lambda c: c.index)
        if len(choices) != len(texts):
            raise self._error(f"its endpoint answered {len(choices)} of {len(texts)} prompts")
        return [{"choices": [c.model_dump()]} for c in choices], reply.tokens()[0]

    async def generate(self, method: OutputMethod, prompt: str, run_job: RunJob) -> tuple[str, int, int]:
        body = {"model": self.model, "prompt": prompt, "max_tokens": method.max_tokens, "temperature": 0,
                "stop": [method.task.stop]}  # fmt: skip
        reply = await self._post(body)
        return reply.choices[0].text, *reply.tokens()

    async def close(self) -> None:
        await self.client.aclose()


def arm_key(url: str, keys: Mapping[str, str]) -> str | None:
    """The key configured for ``url``'s host (``--arm-key-env HOST=VAR``: its ``host:port`` or its host
    name), else None: a remote arm gets no key of the server's own."""
    parts = urlsplit(url)
    return keys.get(parts.netloc.lower()) or keys.get((parts.hostname or "").lower())


def build_arm(
    spec: str,
    methods: dict[str, MethodPrompt | OutputMethod],
    keys: Mapping[str, str] | None = None,
    allow_http: bool = False,
    timeout_s: float = 60,
) -> Arm:
    """``METHOD`` (a method of the served run, on this server) or ``METHOD@URL#MODEL`` (its prompt on a
    remote OpenAI-compatible model, with the key ``keys`` holds for its host). Plain ``http://`` to a
    host other than this machine is refused unless ``allow_http``: the prompts, and any key, would cross
    the network in clear."""
    name, at, remote = spec.partition("@")
    name = name.strip()
    if name not in methods:
        known = ", ".join(methods) or "none (serve a classification run folder)"
        raise ConfigError(f"arm {spec!r}: no servable method {name!r}; methods: {known}")
    if not at:
        return LocalArm(spec, methods[name])
    url, hash_, model = remote.rpartition("#")
    if not hash_ or not url.startswith(("http://", "https://")) or not model or not urlsplit(url).hostname:
        raise ConfigError(
            f"arm {spec!r}: a remote arm is METHOD@URL#MODEL, e.g. 'few-shot k=8 balanced@http://host:8000/v1#gemma'"
        )
    host = urlsplit(url).hostname or ""
    if url.startswith("http://") and not is_loopback(host) and not allow_http:
        raise ConfigError(
            f"arm {spec!r}: plain http:// to {host}, another machine, would send the prompts (and a key) "
            "in clear; use https://, or pass --allow-http-arm for a trusted network"
        )
    method = methods[name]
    if isinstance(method, OutputMethod) and method.schema is not None:
        raise ConfigError(f"arm {spec!r}: a constrained method's schema is enforced here: serve it locally")
    return RemoteArm(spec, method, url, model, timeout_s, arm_key(url, keys or {}))
