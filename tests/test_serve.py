"""``fewtune serve`` over a real uvicorn server on loopback: a tiny model, two tiny LoRA adapters, and HTTP
clients (the ``openai`` client and raw httpx)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from servers import make_adapter, serving
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.generation import generate_batch
from fewtune.backends.hf import HFBackend
from fewtune.serve.adapters import NOT_LOADABLE, AdapterPolicy, AdapterSet
from fewtune.serve.app import create_app
from fewtune.serve.engine import Engine
from fewtune.serve.tokens import shared_prefix

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - the openai client pulls in one of them
    import httpx  # type: ignore[no-redef]

KEY = "test-key-0123"
BASE = "tiny-base"
DEMOS = "Classify the input into exactly one label.\nLabels: negative, positive\n---\n"
DEMOS += (
    "Input: the film is great fun\nOutput: positive\n---\nInput: a dull and tired story\nOutput: negative\n"
)
INPUTS = [
    "great fun",
    "a dull story",
    "the film",
    "tired and dull, a dull film",
    "ok",
    "fun fun",
    "story",
    "x",
]
PROMPTS = [f"{DEMOS}---\nInput: {text}\nOutput:" for text in INPUTS]


@dataclass
class Served:
    url: str
    log: Path
    tokenizer: Any
    references: dict[str | None, HFBackend]
    """Same weights as the server's, run in this thread: None = the base, else an adapter name."""
    late: Path
    """An adapter folder the server has not loaded."""

    def client(self) -> Any:
        return openai.OpenAI(api_key=KEY, base_url=f"{self.url}/v1", max_retries=0, timeout=60)

    def post(self, path: str, body: dict[str, Any], key: str | None = KEY) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from peft import PeftModel

    folder = tmp_path_factory.mktemp("serve")
    tokenizer = tiny_tokenizer()
    support = make_adapter(tokenizer, folder / "support", seed=1)
    late = make_adapter(tokenizer, folder / "late", seed=2)
    policy = AdapterPolicy.of([folder])  # the adapter root /v1/load_lora_adapter reads from
    adapters = AdapterSet(tiny_model(tokenizer, sliding_window=512), tokenizer, BASE, policy=policy)
    adapters.load("support", support)
    engine = Engine(adapters, max_batch=8, batch_wait_ms=20)
    log = folder / "requests.jsonl"
    app = create_app(engine, api_key=KEY, request_log=log)
    references: dict[str | None, HFBackend] = {
        None: HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer)
    }
    for name, path in (("support", support), ("late", late)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(tiny_model(tokenizer, sliding_window=512), str(path))
        references[name] = HFBackend(model, tokenizer)
    with serving(app) as url:
        yield Served(url, log, tokenizer, references, late)


def _alone(served: Served, adapter: str | None, prompt: str, max_tokens: int, **kwargs: Any) -> Any:
    """What generate_batch gives for ``prompt`` alone, in this thread, without a cached prefix."""
    return generate_batch(served.references[adapter], [prompt], max_new_tokens=max_tokens, **kwargs)[0]


def test_v1_needs_the_api_key_and_health_does_not(served: Served) -> None:
    body = {"model": BASE, "prompt": "x", "max_tokens": 1}
    for key in (None, "wrong-key"):
        response = served.post("/v1/completions", body, key=key)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="nope", base_url=f"{served.url}/v1", max_retries=0).models.list()
    # A key that is not ASCII is a wrong key (401), not a server error.
    odd = httpx.post(
        f"{served.url}/v1/completions",
        json=body,
        headers={"Authorization": "Bearer clé".encode()},
        timeout=60,
    )
    assert odd.status_code == 401
    assert httpx.get(f"{served.url}/health").status_code == 200


def test_models_lists_the_base_and_its_adapters(served: Served) -> None:
    models = {m.id: m for m in served.client().models.list().data}
    assert BASE in models and "support" in models
    assert getattr(models["support"], "parent", None) == BASE
    listed = httpx.get(f"{served.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).text
    assert "/" not in "".join(m.get("root", "") for m in json.loads(listed)["data"])  # no server paths shown


def _log_probs(model: Any, ids: list[int]) -> torch.Tensor:
    """In-process log-probabilities ``[len(ids), vocab]`` (row ``i`` predicts token ``i + 1``)."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def _token_log_probs(model: Any, ids: list[int]) -> list[float]:
    table = _log_probs(model, ids)
    return table[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()


def test_echo_logprobs_equal_in_process_log_probabilities(served: Served) -> None:
    prompts = [PROMPTS[0] + " positive", PROMPTS[3] + " negative"]
    for adapter in (None, "support"):
        response = served.client().completions.create(
            model=adapter or BASE, prompt=prompts, max_tokens=0, echo=True, logprobs=2, temperature=0
        )
        model = served.references[adapter].model
        for prompt, choice in zip(prompts, response.choices, strict=True):
            ids = served.tokenizer(prompt).input_ids
            expected = _token_log_probs(model, ids)
            logprobs = choice.logprobs
            assert choice.text == prompt
            assert len(logprobs.tokens) == len(ids) and logprobs.token_logprobs[0] is None
            assert logprobs.top_logprobs[0] is None and len(logprobs.top_logprobs[1]) >= 2
            assert logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
            assert "".join(logprobs.tokens[1:]) == prompt
            assert logprobs.text_offset[1] == 0 and logprobs.text_offset[-1] == len(prompt) - len(
                logprobs.tokens[-1]
            )
        assert response.usage.prompt_tokens == sum(len(served.tokenizer(p).input_ids) for p in prompts)
        assert response.usage.completion_tokens == 0


def test_logprobs_of_generated_tokens_are_those_of_the_greedy_tokens(served: Served) -> None:
    model = served.references["support"].model
    ids = served.tokenizer(PROMPTS[2]).input_ids
    for _ in range(4):  # greedy, one full forward per token
        ids.append(int(_log_probs(model, ids)[-1].argmax()))
    prompt_tokens = len(ids) - 4
    for echo in (True, False):
        response = served.client().completions.create(
            model="support", prompt=PROMPTS[2], max_tokens=4, echo=echo, logprobs=3
        )
        choice, logprobs = response.choices[0], response.choices[0].logprobs
        assert choice.text == (PROMPTS[2] if echo else "") + _alone(served, "support", PROMPTS[2], 4).text
        expected = _token_log_probs(model, ids)[prompt_tokens - 1 :]
        assert logprobs.token_logprobs[-4:] == pytest.approx(expected, abs=1e-4)
        assert len(logprobs.tokens) == (len(ids) if echo else 4)  # the generated tokens, not re-tokenized
        for chosen, top in zip(logprobs.token_logprobs[-4:], logprobs.top_logprobs[-4:], strict=True):
            assert chosen == pytest.approx(max(top.values()))  # greedy: the most likely token
        assert response.usage.completion_tokens == 4


def test_generation_over_http_equals_generate_batch_alone(served: Served) -> None:
    response = served.client().completions.create(model=BASE, prompt=PROMPTS, max_tokens=8, temperature=0)
    for prompt, choice in zip(PROMPTS, response.choices, strict=True):
        alone = _alone(served, None, prompt, 8)
        assert choice.text == alone.text
        assert choice.finish_reason == ("stop" if alone.stopped else "length")
    assert response.usage.completion_tokens == sum(_alone(served, None, p, 8).output_tokens for p in PROMPTS)
    # A stop string cuts the text as generate_batch does.
    full = _alone(served, None, PROMPTS[1], 8).text
    stop = full[3:5]
    cut = served.client().completions.create(model=BASE, prompt=PROMPTS[1], max_tokens=8, stop=[stop])
    assert cut.choices[0].text == _alone(served, None, PROMPTS[1], 8, stop=stop).text
    assert len(cut.choices[0].text) < len(full) and cut.choices[0].finish_reason == "stop"


def test_the_model_field_picks_the_adapter(served: Served) -> None:
    client = served.client()
    base = client.completions.create(model=BASE, prompt=PROMPTS[1], max_tokens=8)
    tuned = client.completions.create(model="support", prompt=PROMPTS[1], max_tokens=8)
    assert base.choices[0].text == _alone(served, None, PROMPTS[1], 8).text
    assert tuned.choices[0].text == _alone(served, "support", PROMPTS[1], 8).text
    assert tuned.choices[0].text != base.choices[0].text
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-adapter", prompt="x", max_tokens=1)
    assert missing.value.response.json()["error"]["code"] == "model_not_found"


def test_concurrent_requests_are_batched_and_answer_as_one_at_a_time(served: Served) -> None:
    cases = [(None if i % 2 else "support", PROMPTS[i % len(PROMPTS)]) for i in range(16)]
    expected = [_alone(served, adapter, prompt, 6).text for adapter, prompt in cases]

    def ask(case: tuple[str | None, str]) -> str:
        adapter, prompt = case
        response = served.client().completions.create(model=adapter or BASE, prompt=prompt, max_tokens=6)
        return str(response.choices[0].text)

    before = _metric(served, "fewtune_batch_prompts_count")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, cases))
    assert answers == expected
    batches = _metric(served, "fewtune_batch_prompts_count") - before
    assert batches < len(cases)  # requests that arrived together ran together


def _metric(served: Served, name: str) -> float:
    text = httpx.get(f"{served.url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_adapters_load_and_unload_at_run_time(served: Served) -> None:
    client = served.client()
    loaded = served.post("/v1/load_lora_adapter", {"lora_name": "late", "lora_path": str(served.late)})
    assert loaded.status_code == 200, loaded.text
    assert "late" in {m.id for m in client.models.list().data}
    late = client.completions.create(model="late", prompt=PROMPTS[2], max_tokens=8)
    assert late.choices[0].text == _alone(served, "late", PROMPTS[2], 8).text
    again = served.post("/v1/load_lora_adapter", {"lora_name": "late", "lora_path": str(served.late)})
    assert again.status_code == 400 and "already loaded" in again.json()["error"]["message"]
    assert served.post("/v1/unload_lora_adapter", {"lora_name": "late"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="late", prompt=PROMPTS[2], max_tokens=8)
    assert served.post("/v1/unload_lora_adapter", {"lora_name": "late"}).status_code == 404
    missing = served.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(served.late / "nope")})
    assert missing.status_code == 400 and missing.json()["error"]["message"] == NOT_LOADABLE
    clash = served.post("/v1/load_lora_adapter", {"lora_name": BASE, "lora_path": str(served.late)})
    assert clash.status_code == 400
    # The adapters still loaded are untouched.
    tuned = client.completions.create(model="support", prompt=PROMPTS[1], max_tokens=8)
    assert tuned.choices[0].text == _alone(served, "support", PROMPTS[1], 8).text


def test_chat_with_a_json_schema_returns_matching_json(served: Served) -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
        "required": ["label"],
        "additionalProperties": False,
    }
    for model in (BASE, "support"):
        response = served.client().chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": "Label it."}, {"role": "user", "content": "great fun"}],
            max_tokens=20,
            response_format={"type": "json_schema", "json_schema": {"name": "label", "schema": schema}},
        )
        answer = json.loads(response.choices[0].message.content or "")
        assert answer["label"] in ("positive", "negative") and set(answer) == {"label"}
        assert response.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": BASE, "prompt": "x", "temperature": 0.7}, "greedily"),
        ({"model": BASE, "prompt": "x", "n": 2}, "n must be 1"),
        ({"model": BASE, "prompt": "x", "stop": ["a", "b"]}, "one stop string"),
        ({"model": BASE, "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": BASE}, "prompt"),
    ],
)
def test_bad_requests_are_400_in_openai_shape(served: Served, body: dict[str, Any], fragment: str) -> None:
    response = served.post("/v1/completions", body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]


def test_metrics_and_request_log(served: Served) -> None:
    served.client().completions.create(model="support", prompt=PROMPTS[0], max_tokens=3)
    text = httpx.get(f"{served.url}/metrics").text
    assert (
        'fewtune_request_latency_seconds_bucket{endpoint="/v1/completions",le="0.01",model="support"}' in text
    )
    assert 'fewtune_prompt_tokens_total{endpoint="/v1/completions",model="support"}' in text
    assert 'fewtune_request_errors_total{endpoint="/v1/completions",model="<unknown>",status="401"}' in text
    raw = served.log.read_text(encoding="utf-8")
    assert KEY not in raw and "great fun" not in raw  # never the key or a prompt
    lines = [json.loads(line) for line in raw.splitlines()]
    last = lines[-1]
    assert set(last) == {
        "time", "model", "adapter", "endpoint", "latency_ms", "prompt_tokens", "completion_tokens", "status"
    }  # fmt: skip
    assert (last["model"], last["adapter"], last["endpoint"], last["status"]) == (
        "support", "support", "/v1/completions", 200
    )  # fmt: skip
    assert last["prompt_tokens"] > 0 and 0 < last["completion_tokens"] <= 3
    assert any(line["status"] == 401 and line["model"] is None for line in lines)


def test_shared_prefix_ends_after_the_demo_block() -> None:
    assert shared_prefix(PROMPTS) == DEMOS + "---\nInput:"
    assert shared_prefix(PROMPTS[:1]) == DEMOS + "---\nInput:"  # one request still reuses the demos
    assert shared_prefix(["a\nb c", "a\nb d"]) == "a\n"
    assert shared_prefix(["ab", "ac"]) == "" and shared_prefix(["same", "same"]) == ""


def test_chat_uses_the_template_when_the_tokenizer_has_one() -> None:
    tokenizer = tiny_tokenizer()
    engine = Engine(AdapterSet(tiny_model(tokenizer, sliding_window=512), tokenizer, BASE))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert engine.render_chat(messages) == "hi\nyo"
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    )
    assert engine.render_chat(messages) == "<user>hi\n<assistant>yo\n<assistant>"  # BOS comes from encoding


def test_one_request_cannot_ask_for_more_than_the_server_allows(served: Served) -> None:
    from fewtune.serve.limits import Limits

    limits = Limits()
    too_long = served.post(
        "/v1/completions", {"model": BASE, "prompt": "x", "max_tokens": limits.max_tokens + 1}
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
    chat = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}
    assert served.post("/v1/chat/completions", chat).status_code == 400
    many = served.post(
        "/v1/completions", {"model": BASE, "prompt": ["x"] * (limits.max_prompts + 1), "max_tokens": 1}
    )
    assert many.status_code == 400 and "prompts per request" in many.json()["error"]["message"]
    huge = served.post(
        "/v1/completions", {"model": BASE, "prompt": "x" * (limits.max_body_bytes + 1), "max_tokens": 1}
    )
    assert huge.status_code == 413 and "request body" in huge.json()["error"]["message"]
    # The server still answers after each of them.
    ok = served.post("/v1/completions", {"model": BASE, "prompt": "x", "max_tokens": 1})
    assert ok.status_code == 200
