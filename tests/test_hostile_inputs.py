"""Input no route can take is a one-line 400 at the edge, never a 500 from deeper in: lone surrogates in any
text (a completion's prompt, a chat message, a stop string, a route's ``user`` field, a training row), numbers
that are not finite (``NaN``, ``Infinity``, ``1e400``), hyperparameters of the wrong type, deep nesting
(:mod:`fewtune.serve.inputs`). Bodies are sent as raw JSON text, as a hostile client would write them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from finetune_server import BASE, KEY, Server, chat_file, running
from pydantic import ValidationError

from fewtune.http_client import httpx
from fewtune.serve.inputs import BadInput, check_json
from fewtune.serve.protocol import ChatRequest

HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
CHAT = '"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("hostile")) as served:
        yield served


def _refused(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert fragment in message and "\n" not in message, message


INFERENCE = [
    ("/v1/completions", '{"model": "%s", "prompt": "a\\ud800", "max_tokens": 2}', "prompt: a lone surrogate"),
    ("/v1/completions", '{"model": "%s", "prompt": ["ok", "\\udfff"], "max_tokens": 2}', "prompt.1: a lone"),
    (
        "/v1/chat/completions",
        '{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800"}], "max_tokens": 2}',
        "messages.0.content: a lone surrogate (\\ud800)",
    ),
    ("/v1/chat/completions", '{"model": "%s", ' + CHAT + ', "stop": "\\udc00"}', "stop: a lone surrogate"),
    ("/v1/chat/completions", '{"model": "%s", ' + CHAT + ', "stop": ["\\udc00"]}', "stop.0: a lone"),
    ("/v1/chat/completions", '{"model": "%s", ' + CHAT + ', "user": "\\ud83d"}', "user: a lone surrogate"),
    ("/v1/chat/completions", '{"model": "%s", ' + CHAT + ', "\\ud83d": 1}', "a lone surrogate"),
    ("/v1/chat/completions", '{"model": "%s", ' + CHAT + ', "top_p": 1e400}', "top_p: numbers must be"),
]


@pytest.mark.parametrize(("path", "body", "fragment"), INFERENCE)
def test_text_that_is_not_unicode_is_a_400_on_inference(
    server: Server, path: str, body: str, fragment: str
) -> None:
    response = httpx.post(f"{server.url}{path}", content=(body % BASE).encode(), headers=HEADERS, timeout=60)
    _refused(response, fragment)


def test_a_routes_user_field_is_checked_before_the_route_reads_it() -> None:
    """A canary route hashes ``user`` to pick the arm: a lone surrogate there was a 500 charged to the arm."""
    body = json.loads('{"model": "route", ' + CHAT + ', "user": "\\ud800"}')
    with pytest.raises(ValidationError, match="user: a lone surrogate"):
        ChatRequest.model_validate(body)


JOBS = [
    ('"hyperparameters": NaN', "hyperparameters: numbers must be finite, got nan"),
    ('"hyperparameters": {"n_epochs": NaN}', "hyperparameters.n_epochs: numbers must be finite"),
    ('"hyperparameters": {"n_epochs": Infinity}', "hyperparameters.n_epochs: numbers must be finite"),
    ('"hyperparameters": {"batch_size": 1e400}', "hyperparameters.batch_size: numbers must be finite"),
    ('"hyperparameters": {"learning_rate_multiplier": -Infinity}', "numbers must be finite, got -inf"),
    ('"hyperparameters": [1, "a"]', "hyperparameters must be an object"),
    ('"hyperparameters": "abc"', "hyperparameters must be an object"),
    ('"method": {"supervised": {"hyperparameters": [["n_epochs", 2]]}}', "must be an object"),
    ('"method": {"type": "supervised", "supervised": "x"}', "method.supervised must be an object"),
    ('"suffix": "\\ud800"', "suffix: a lone surrogate"),
    ('"metadata": ' + "[" * 40 + "]" * 40, "nested more than 32 levels deep"),
    ('"metadata": ' + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize(("field", "fragment"), JOBS)
def test_hostile_job_bodies_are_a_400(server: Server, field: str, fragment: str) -> None:
    file_id = server.upload(chat_file(4))
    body = f'{{"model": "{BASE}", "training_file": "{file_id}", {field}}}'
    response = httpx.post(f"{server.url}/v1/fine_tuning/jobs", content=body.encode(), headers=HEADERS)
    _refused(response, fragment)


UPLOADS = [
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "up.jsonl:1: nested too deeply"),
    (
        b'{"messages": [{"role": "user", "content": "x\\ud800"}, {"role": "assistant", "content": "y"}]}',
        "up.jsonl:1: messages.0.content: a lone surrogate",
    ),
    (
        chat_file(1)
        + b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],'
        + b' "weight": NaN}',
        "up.jsonl:2: weight: numbers must be finite",
    ),
]


@pytest.mark.parametrize(("content", "fragment"), UPLOADS)
def test_hostile_training_files_are_a_one_line_400(server: Server, content: bytes, fragment: str) -> None:
    response = httpx.post(
        f"{server.url}/v1/files",
        files={"file": ("up.jsonl", content)},
        data={"purpose": "fine-tune"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    _refused(response, fragment)


def test_check_json_walks_every_level_without_recursing() -> None:
    deep: list[object] = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(BadInput, match="nested more than 32"):
        check_json(deep)
    check_json({"a": [1, 2.5, "text", {"b": None, "c": True}]})  # what a route takes passes
