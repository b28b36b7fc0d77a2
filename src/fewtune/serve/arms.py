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
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.backends.openai_answers import continuation_logprob
from fewtune.cost import PriceTable, token_prices
from fewtune.data.load import Example
from fewtune.errors import ConfigError, FewtuneError
from fewtune.prompts.template import DEFAULT_TASK, PromptTemplate
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


def _config(run_dir: Path) -> dict[str, Any]:
    import yaml

    try:
        values = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def methods_of_run(run_dir: Path, adapters: dict[str, Path]) -> dict[str, MethodPrompt]:
    """Every servable method of a classification run, by its name; ``adapters`` maps the server's adapter
    names to their folders (a LoRA row is matched to its adapter by path)."""
    from fewtune.report.run_folder import read_run

    results, _ = read_run(run_dir)
    task = (results.get("task") or {}).get("name", "classification")
    if task != "classification":
        raise ConfigError(f"{run_dir}: serving methods by name covers classification runs; this is {task}")
    labels = tuple(results.get("labels") or ())
    names = dict(results.get("label_names") or {})
    instruction = ((_config(run_dir).get("prompt") or {}).get("instruction")) or DEFAULT_TASK
    template = PromptTemplate(labels, instruction, names)
    by_path = {str(path.resolve()): name for name, path in adapters.items()}
    methods = {}
    for row in results["methods"]:
        if row.get("method") == "reference":
            continue  # no LLM: its classifier is not saved with the run
        if row.get("demo_selection") == "nearest":
            continue  # per-input demos need the demo pool and the embedder: not served
        adapter = None
        if row.get("adapter_path"):
            saved = Path(row["adapter_path"])
            # by path, else by folder name (a run folder copied or moved keeps its adapters/ names)
            adapter = by_path.get(str(saved.resolve())) or (saved.name if saved.name in adapters else None)
            if adapter is None:
                continue  # its adapter is not loaded on this server
        bias = row.get("label_bias")
        methods[row["name"]] = MethodPrompt(
            name=row["name"],
            template=template,
            demos=tuple(Example(d["text"], d["label"]) for d in row.get("demos") or ()),
            label_bias=tuple(float(bias[label]) for label in labels) if bias else None,
            adapter=adapter,
            trained=bool(row.get("train_examples")),
        )
    return methods


@dataclass(frozen=True)
class Answer:
    label: str
    prompt_tokens: int
    completion_tokens: int


def _score(method: MethodPrompt, prompt: str, responses: list[dict[str, Any]], where: str) -> np.ndarray:
    texts = [prompt + choice for choice in method.choices()]
    return np.array(
        [continuation_logprob(r, prompt, text, where) for r, text in zip(responses, texts, strict=True)]
    )


class Arm(abc.ABC):
    """One way of answering a route's requests: a method on a model."""

    def __init__(self, name: str, method: MethodPrompt) -> None:
        self.name = name
        self.method = method

    async def answer(self, text: str, run_job: RunJob) -> Answer:
        """The label for ``text``: every label's continuation scored, in chunks; ``run_job`` runs a job on
        this server's engine."""
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


class RemoteArm(Arm):
    """The method's prompt on an OpenAI-compatible endpoint's model (``URL#MODEL``)."""

    def __init__(
        self, name: str, method: MethodPrompt, base_url: str, model: str, timeout_s: float = 60
    ) -> None:
        super().__init__(name, method)
        from fewtune.http_client import httpx

        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        key = os.environ.get("FEWTUNE_ARM_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        self.client = httpx.AsyncClient(timeout=timeout_s, headers={"Authorization": f"Bearer {key}"})

    async def echo(self, texts: list[str], run_job: RunJob) -> tuple[list[dict[str, Any]], int]:
        from fewtune.http_client import httpx

        body = {"model": self.model, "prompt": texts, "echo": True, "logprobs": 0, "max_tokens": 0}
        try:
            reply = await self.client.post(self.url, json=body)
        except httpx.HTTPError as err:
            raise ArmError(f"{self.name}: {type(err).__name__} from {self.url}") from None
        if reply.status_code != 200:
            raise ArmError(f"{self.name}: {self.url} answered HTTP {reply.status_code}")
        try:
            data = reply.json()
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ArmError(f"{self.name}: {self.url} sent an answer that is not a completion") from None
        return [{"choices": [c]} for c in choices], int((data.get("usage") or {}).get("prompt_tokens") or 0)

    async def close(self) -> None:
        await self.client.aclose()


def build_arm(spec: str, methods: dict[str, MethodPrompt]) -> Arm:
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
    return RemoteArm(spec, methods[name], url, model)
