"""The OpenAI-compatible HTTP backend against real servers on loopback (uvicorn in a thread, no HTTP mocks):
``fewtune serve`` with the tiny model (completions with prompt log-probabilities: loglik mode), and a small
chat-only app that has no ``/v1/completions`` (generate mode, like a hosted chat API)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from servers import free_port, serving
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.endpoint import EndpointError, EndpointSpec, Unauthorized, Unreachable
from fewtune.backends.generated import GenerateAndParse, unanswered
from fewtune.backends.hf import HFBackend
from fewtune.backends.openai_compat import (
    OpenAICompatBackend,
    TokenBoundaryError,
    continuation_logprob,
)
from fewtune.errors import ConfigError
from fewtune.serve.adapters import AdapterSet
from fewtune.serve.app import create_app
from fewtune.serve.engine import Engine

KEY = "sk-test-0123456789abcdef"
KEY_ENV = "FEWTUNE_TEST_ENDPOINT_KEY"
BASE = "tiny-base"
DEMOS = "Classify the input into exactly one label.\nLabels: negative, positive\n---\n"
DEMOS += (
    "Input: the film is great fun\nOutput: positive\n---\nInput: a dull and tired story\nOutput: negative\n"
)
INPUTS = ["great fun", "a dull story", "the film", "tired and dull, a dull film", "ok", "fun fun"]
PROMPTS = [f"{DEMOS}---\nInput: {text}\nOutput:" for text in INPUTS]
CHOICES = [" positive", " negative", " complaint inquiry"]  # the last is several tokens
STOP = "n"  # the tiny model's greedy outputs: some hold it (cut, stopped), some do not


@dataclass
class Served:
    url: str
    reference: HFBackend
    """The same weights as the server's, in this process."""


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    tokenizer = tiny_tokenizer()
    engine = Engine(AdapterSet(tiny_model(tokenizer, sliding_window=512), tokenizer, BASE), batch_wait_ms=5)
    reference = HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer)
    with serving(create_app(engine, api_key=KEY)) as url:
        yield Served(url, reference)


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def _spec(url: str, **kwargs: Any) -> EndpointSpec:
    return EndpointSpec(**{"base_url": f"{url}/v1", "model": BASE, "api_key_env": KEY_ENV, **kwargs})


def _exact_logprob(reference: HFBackend, prompt: str, choice: str) -> float:
    """``log p(choice | prompt)`` from one full forward pass over ``prompt + choice`` tokenized as one text
    (what the server sees), summed over the tokens after the prompt's."""
    tokenizer = reference.tokenizer
    ids = list(tokenizer(prompt + choice).input_ids)
    cut = len(tokenizer(prompt).input_ids)
    assert ids[:cut] == list(tokenizer(prompt).input_ids)  # the prompt's tokens end where the choice starts
    with torch.no_grad():
        table = torch.log_softmax(reference.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return float(sum(table[t - 1, ids[t]] for t in range(cut, len(ids))))


def test_loglik_scores_generations_and_counts_equal_the_in_process_model(
    served: Served, key: None, tmp_path: Path
) -> None:
    backend = OpenAICompatBackend(_spec(served.url), cache_path=tmp_path / "http_cache.sqlite")
    assert backend.scoring_mode == "loglik" and backend.capabilities.loglikelihood
    assert backend.describe()["token_counts"] == "server" and backend.requests_sent == 1  # the probe

    seen: list[int] = []
    scores = backend.score_choices(PROMPTS, CHOICES, progress=seen.append)
    assert scores.shape == (len(PROMPTS), len(CHOICES)) and sum(seen) == len(PROMPTS)
    exact = [[_exact_logprob(served.reference, p, c) for c in CHOICES] for p in PROMPTS]
    np.testing.assert_allclose(scores, exact, atol=1e-4)
    # HFBackend encodes prompt and choice separately (here the same tokens, asserted above) and leaves out
    # the normalizer of the choices' first token, a constant per row: compare within rows.
    local = served.reference.score_choices(PROMPTS, CHOICES, prefix=DEMOS)
    np.testing.assert_allclose(scores - scores[:, :1], local - local[:, :1], atol=1e-4)

    before = backend.usage_totals
    generations = backend.generate_batch(PROMPTS, max_new_tokens=8, stop=STOP)
    expected = served.reference.generate_batch(PROMPTS, max_new_tokens=8, stop=STOP)
    assert generations == expected  # text, prompt and output token counts, stopped
    assert {g.stopped for g in generations} == {True, False}
    after = backend.usage_totals
    assert after["prompt_tokens"] - before["prompt_tokens"] == sum(g.prompt_tokens for g in expected)
    assert after["completion_tokens"] - before["completion_tokens"] == sum(g.output_tokens for g in expected)
    counts = [backend.count_tokens(c) for c in CHOICES]
    assert counts == [served.reference.count_tokens(c) for c in CHOICES]
    sent, totals = backend.requests_sent, backend.usage_totals
    assert sent == 1 + len(PROMPTS) * len(CHOICES) + len(PROMPTS) + len(CHOICES)
    assert backend.count_tokens_batch(CHOICES) == counts and backend.requests_sent == sent  # from the cache
    backend.close()

    # A re-run on the same cache sends nothing and gets the same answers and token totals.
    again = OpenAICompatBackend(_spec(served.url), cache_path=tmp_path / "http_cache.sqlite")
    np.testing.assert_array_equal(again.score_choices(PROMPTS, CHOICES), scores)
    assert again.generate_batch(PROMPTS, max_new_tokens=8, stop=STOP) == generations
    assert [again.count_tokens(c) for c in CHOICES] == counts
    assert again.requests_sent == 0 and again.cache_hits == sent
    assert again.usage_totals == totals

    # Latency samples are sent although their answers are cached, and a later run replays their time.
    # Generate-and-parse's label token counts are not part of a sample: they come from the answer cache.
    def samples(backend: OpenAICompatBackend) -> list[float]:
        parse = GenerateAndParse(backend)
        scored = [backend.timed(partial(backend.score_choices, [p], CHOICES)) for p in PROMPTS[:2]]
        return scored + [parse.timed(partial(parse.score_choices, [p], CHOICES)) for p in PROMPTS[:2]]

    seconds = samples(again)
    assert again.requests_sent == 2 * len(CHOICES) + 2 and all(s > 0 for s in seconds)
    again.close()
    replay = OpenAICompatBackend(_spec(served.url), cache_path=tmp_path / "http_cache.sqlite")
    assert samples(replay) == seconds and replay.requests_sent == 0
    replay.close()


def test_an_interrupted_run_resumes_from_the_cache(served: Served, key: None, tmp_path: Path) -> None:
    cache = tmp_path / "http_cache.sqlite"
    first = OpenAICompatBackend(_spec(served.url, concurrency=2), cache_path=cache)
    part, seconds = first.pass_seconds(partial(first.score_choices, PROMPTS[:2], CHOICES))
    assert seconds is not None and seconds > 0  # every request sent: the pass is timed
    first.close()
    rest = OpenAICompatBackend(_spec(served.url, concurrency=2), cache_path=cache)
    whole, partly = rest.pass_seconds(partial(rest.score_choices, PROMPTS, CHOICES))
    assert partly is None  # partly answered by the cache: no time to report as its throughput
    np.testing.assert_array_equal(whole[:2], part)
    assert rest.requests_sent == (len(PROMPTS) - 2) * len(CHOICES)
    # All answered by the cache: the time measured when the same requests were sent.
    assert rest.pass_seconds(partial(rest.score_choices, PROMPTS[:2], CHOICES))[1] == seconds
    rest.close()


def test_the_key_is_never_stored_and_describe_is_json(served: Served, key: None, tmp_path: Path) -> None:
    cache = tmp_path / "http_cache.sqlite"
    backend = OpenAICompatBackend(_spec(served.url), cache_path=cache)
    backend.generate_batch(PROMPTS[:2], max_new_tokens=2)
    described = json.dumps(backend.describe())
    assert KEY not in described and KEY not in repr(backend) and KEY not in repr(backend.endpoint)
    assert json.loads(described)["api_key_env"] == KEY_ENV
    assert json.loads(described)["scoring_mode"] == "loglik"
    backend.close()
    with sqlite3.connect(cache) as db:
        rows = db.execute("SELECT key, endpoint, response FROM responses").fetchall()
    assert len(rows) == 3 and all(KEY not in "".join(row) for row in rows)
    assert all(KEY.encode() not in path.read_bytes() for path in tmp_path.iterdir())


def test_structured_generation_goes_to_chat_with_a_json_schema(
    served: Served, key: None, tmp_path: Path
) -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
        "required": ["label"],
        "additionalProperties": False,
    }
    backend = OpenAICompatBackend(_spec(served.url), cache_path=None)
    constraint = backend.schema_constraint(schema)
    with pytest.raises(TypeError, match="enforced by the server"):
        constraint()
    (output,) = backend.generate_batch(PROMPTS[:1], max_new_tokens=20, constraint=constraint)
    assert json.loads(output.text)["label"] in ("positive", "negative") and output.output_tokens > 0
    with pytest.raises(ConfigError, match="schema_constraint"):
        backend.generate_batch(PROMPTS[:1], constraint=lambda: None)
    backend.close()


def test_a_token_across_the_prompt_boundary_is_an_error(served: Served, key: None) -> None:
    backend = OpenAICompatBackend(_spec(served.url), cache_path=None)
    # The tiny tokenizer has " fun" as one token: "...great fu" + "n" cannot be split.
    assert backend.count_tokens(" fun") == 2  # BOS and " fun"
    with pytest.raises(TokenBoundaryError, match="spans the end of the prompt"):
        backend.score_choices(["Input: the film is great fu"], ["n"])
    backend.close()


def test_setup_errors_are_one_line(served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError) as missing:
        OpenAICompatBackend(_spec(served.url), cache_path=tmp_path / "c.sqlite")
    assert KEY_ENV in str(missing.value) and "\n" not in str(missing.value)

    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-42")
    with pytest.raises(Unauthorized) as refused:
        OpenAICompatBackend(_spec(served.url), cache_path=tmp_path / "c.sqlite")
    message = str(refused.value)
    assert served.url in message and KEY_ENV in message and "401" in message
    assert "sk-wrong-key-42" not in message and "\n" not in message

    monkeypatch.setenv(KEY_ENV, KEY)
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Unreachable) as unreachable:
        OpenAICompatBackend(_spec(nobody, max_retries=0), cache_path=None)
    assert nobody in str(unreachable.value) and "\n" not in str(unreachable.value)

    with pytest.raises(EndpointError, match="does not exist"):
        OpenAICompatBackend(_spec(served.url, model="no-such-model"), cache_path=None)
    with pytest.raises(ConfigError, match="never put the key"):
        _spec(served.url, api_key_env=KEY)


# -- a chat-only server ---------------------------------------------------------------------------------


@dataclass
class Recorded:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _answer(prompt: str) -> str:
    """The chat app's deterministic answer: the first word of the prompt's last ``Input:`` line, then more."""
    words = prompt.rpartition("Input:")[2].split()
    return f"{words[0] if words else '?'}\nand more"


@pytest.fixture(scope="module")
def chat_only() -> Iterator[Recorded]:
    app = FastAPI()
    state = Recorded("")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "bad key", "code": "invalid_api_key"}}, 401)
        body = await request.json()
        state.bodies.append(body)
        prompt = body["messages"][-1]["content"]
        text = _answer(prompt)
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            text = json.dumps({"label": text.split()[0]})
        stops = [s for s in body.get("stop") or [] if s in text]
        finish = "stop" if stops else "length"
        for stop in stops:
            text = text[: text.index(stop)]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()) + 1}
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return JSONResponse({"id": "c", "object": "chat.completion", "choices": [choice], "usage": usage})

    with serving(app) as url:
        state.url = url
        yield state


def test_a_chat_only_server_is_probed_as_generate_and_parses_labels(
    chat_only: Recorded, key: None, tmp_path: Path
) -> None:
    cache = tmp_path / "http_cache.sqlite"
    backend = OpenAICompatBackend(_spec(chat_only.url), cache_path=cache)
    assert backend.scoring_mode == "generate" and not backend.capabilities.loglikelihood
    described = backend.describe()
    assert not described["completions_endpoint"] and "404" in described["reason"]
    assert described["token_counts"].startswith("estimate")
    assert backend.count_tokens("abcdefghi") == 3  # ceil(9 / 4), an estimate
    with pytest.raises(ConfigError, match="generate-and-parse"):
        backend.score_choices(PROMPTS[:1], CHOICES)

    (generation,) = backend.generate_batch(PROMPTS[:1], max_new_tokens=5, stop="\n")
    assert generation.text == "great" and generation.stopped and generation.output_tokens == 2
    assert generation.prompt_tokens == len(PROMPTS[0].split())
    # A task's output_end cuts the text where the output is complete; the request is the same (cached here).
    (complete,) = backend.generate_batch(
        PROMPTS[:1], max_new_tokens=5, stop="\n", output_end=lambda text: 3 if len(text) >= 3 else None
    )
    assert complete.text == "gre" and complete.stopped and complete.output_tokens == 2
    body = chat_only.bodies[-1]
    assert body["messages"] == [{"role": "user", "content": PROMPTS[0]}]
    assert body["stop"] == ["\n"] and body["max_completion_tokens"] == 5 and body["temperature"] == 0

    prompts = [f"{DEMOS}---\nInput: {text}\nOutput:" for text in ("positive!", "negative one", "meh", "x")]
    parse = GenerateAndParse(backend)
    scores = parse.score_choices(prompts, ["positive", "negative"])
    assert scores.argmax(axis=1)[:2].tolist() == [0, 1]
    assert unanswered(scores).tolist() == [False, False, True, True]  # unparsed rate 0.5
    assert backend.requests_sent == 1 + 1 + len(prompts)  # the probe, one generation, the labels
    backend.close()

    again = OpenAICompatBackend(_spec(chat_only.url), cache_path=cache)  # the probe's 404 is cached too
    repeat = GenerateAndParse(again).score_choices(prompts, ["positive", "negative"])
    np.testing.assert_array_equal(repeat, scores)
    assert again.requests_sent == 0 and again.cache_hits == 1 + len(prompts)
    # Timing through the wrapper times the endpoint's requests: sent, although their answers are cached.
    wrapped = GenerateAndParse(again)
    assert wrapped.timed(partial(wrapped.score_choices, prompts[:1], ["positive", "negative"])) > 0
    assert again.requests_sent == 1
    again.close()


def test_a_chat_only_server_gets_the_schema_as_response_format(chat_only: Recorded, key: None) -> None:
    backend = OpenAICompatBackend(_spec(chat_only.url), cache_path=None)
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    (output,) = backend.generate_batch(PROMPTS[:1], constraint=backend.schema_constraint(schema))
    assert json.loads(output.text) == {"label": "great"}
    sent = chat_only.bodies[-1]["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    backend.close()


# -- a completions server without prompt log-probabilities (as llama.cpp answers echo) ---------------------


@pytest.fixture(scope="module")
def no_logprobs() -> Iterator[Recorded]:
    app = FastAPI()
    state = Recorded("")

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        state.bodies.append(body)
        if body.get("max_tokens") == 0:
            return JSONResponse({"error": {"message": "max_tokens must be at least 1"}}, 400)
        prompt = body["prompt"]
        text = _answer(prompt)
        stops = [s for s in body.get("stop") or [] if s in text]
        for stop in stops:
            text = text[: text.index(stop)]
        choice = {
            "index": 0,
            "text": (prompt if body.get("echo") else "") + text,
            "logprobs": None,
            "finish_reason": "stop" if stops else "length",
        }
        usage = {"prompt_tokens": len(prompt.split()) + 1, "completion_tokens": 1}
        return JSONResponse({"id": "x", "object": "text_completion", "choices": [choice], "usage": usage})

    with serving(app) as url:
        state.url = url
        yield state


def test_completions_without_prompt_logprobs_generate_there_and_count_exactly(
    no_logprobs: Recorded, key: None
) -> None:
    backend = OpenAICompatBackend(_spec(no_logprobs.url), cache_path=None)
    assert backend.scoring_mode == "generate" and not backend.capabilities.loglikelihood
    described = backend.describe()
    assert described["completions_endpoint"] and described["scoring_max_tokens"] == 1  # 0 was refused
    assert "without prompt log-probabilities" in described["reason"] and described["token_counts"] == "server"
    assert backend.count_tokens("one two three") == 4
    (generation,) = backend.generate_batch(PROMPTS[3:4], max_new_tokens=3, stop="\n")
    assert generation.text == "tired" and generation.stopped
    assert no_logprobs.bodies[-1]["prompt"] == PROMPTS[3] and no_logprobs.bodies[-1]["max_tokens"] == 3
    backend.close()


@pytest.mark.parametrize(
    ("prompt", "text", "expected"),
    [
        ("ab", "ab cd", -2.0),  # the token generated after the text (max_tokens 1) is left out
        ("ab", "ab cd!", -6.0),
        ("ab c", "ab cd", TokenBoundaryError),  # " cd" holds the prompt's last character
        ("ab cd!", "ab cd!", TokenBoundaryError),  # nothing after the prompt
    ],
)
def test_continuation_logprob_sums_the_tokens_after_the_prompt(
    prompt: str, text: str, expected: float | type[Exception]
) -> None:
    logprobs = {
        "tokens": ["<bos>", "ab", " cd", "!"],
        "token_logprobs": [None, -1.0, -2.0, -4.0],
        "text_offset": [0, 0, 2, 5],
    }
    response = {"choices": [{"text": "ab cd!", "logprobs": logprobs}]}
    if isinstance(expected, float):
        assert continuation_logprob(response, prompt, text, "here") == expected
    else:
        with pytest.raises(expected):
            continuation_logprob(response, prompt, text, "here")
    with pytest.raises(EndpointError, match="no token_logprobs"):
        continuation_logprob({"choices": [{"text": text, "logprobs": None}]}, prompt, text, "here")
