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
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fewtune.backends.openai_answers import continuation_logprob
from fewtune.data.load import Example
from fewtune.decide.cost import PriceTable, token_prices
from fewtune.errors import ConfigError, FewtuneError
from fewtune.prompts.template import OutputTemplate, PromptTemplate
from fewtune.strategies.base import log_softmax

RunJob = Callable[[Any], Awaitable[list[Any]]]
"""Runs one engine :class:`~fewtune.serve.jobs.Job` for the request being answered (the app's queue,
deadline and disconnect handling) and returns its outputs."""
PROMPTS_PER_CALL = 32
"""Label continuations sent in one scoring request (a server's per-request prompt limit is larger)."""


class ArmError(FewtuneError):
    """The arm's model failed to answer (a remote error, a timeout): HTTP 502 to the caller."""


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


class RemoteArm(Arm):
    """The method's prompt on an OpenAI-compatible endpoint's model (``URL#MODEL``)."""

    def __init__(
        self, name: str, method: MethodPrompt | OutputMethod, base_url: str, model: str, timeout_s: float = 60
    ) -> None:
        super().__init__(name, method)
        from fewtune.http_client import httpx

        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        key = os.environ.get("FEWTUNE_ARM_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        self.client = httpx.AsyncClient(timeout=timeout_s, headers={"Authorization": f"Bearer {key}"})

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        from fewtune.http_client import httpx

        try:
            reply = await self.client.post(self.url, json=body)
        except httpx.HTTPError as err:
            raise ArmError(f"{self.name}: {type(err).__name__} from {self.url}") from None
        if reply.status_code != 200:
            raise ArmError(f"{self.name}: {self.url} answered HTTP {reply.status_code}")
        try:
            data = reply.json()
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise ArmError(f"{self.name}: {self.url} sent an answer that is not a completion")
        return data

    async def echo(self, texts: list[str], run_job: RunJob) -> tuple[list[dict[str, Any]], int]:
        data = await self._post(
            {"model": self.model, "prompt": texts, "echo": True, "logprobs": 0, "max_tokens": 0}
        )
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        except (KeyError, TypeError, AttributeError):
            raise ArmError(f"{self.name}: {self.url} sent an answer that is not a completion") from None
        return [{"choices": [c]} for c in choices], int((data.get("usage") or {}).get("prompt_tokens") or 0)

    async def generate(self, method: OutputMethod, prompt: str, run_job: RunJob) -> tuple[str, int, int]:
        body = {"model": self.model, "prompt": prompt, "max_tokens": method.max_tokens, "temperature": 0,
                "stop": [method.task.stop]}  # fmt: skip
        data = await self._post(body)
        try:
            text = str(data["choices"][0]["text"])
        except (KeyError, IndexError, TypeError):
            raise ArmError(f"{self.name}: {self.url} sent an answer that is not a completion") from None
        usage = data.get("usage") or {}
        return text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)

    async def close(self) -> None:
        await self.client.aclose()


def build_arm(spec: str, methods: dict[str, MethodPrompt | OutputMethod]) -> Arm:
    """``METHOD`` (a method of the served run, on this server) or ``METHOD@URL#MODEL`` (its prompt on a
    remote OpenAI-compatible model)."""
    name, at, remote = spec.partition("@")
    name = name.strip()
    if name not in methods:
        known = ", ".join(methods) or "none (serve a classification run folder)"
        raise ConfigError(f"arm {spec!r}: no servable method {name!r}; methods: {known}")
    if not at:
        return LocalArm(spec, methods[name])
    url, hash_, model = remote.rpartition("#")
    if not hash_ or not url.startswith(("http://", "https://")) or not model:
        raise ConfigError(
            f"arm {spec!r}: a remote arm is METHOD@URL#MODEL, e.g. 'few-shot k=8 balanced@http://host:8000/v1#gemma'"
        )
    method = methods[name]
    if isinstance(method, OutputMethod) and method.schema is not None:
        raise ConfigError(f"arm {spec!r}: a constrained method's schema is enforced here: serve it locally")
    return RemoteArm(spec, method, url, model)
