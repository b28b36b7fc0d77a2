"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis): no request, valid or not, gets a 5xx.

A real uvicorn server on loopback serves the tiny model with an adapter root; schemathesis generates
request bodies from the app's schema (positive: what the schema allows, which the server may still refuse;
negative: what it does not) for every operation, a bounded number each, and sends them with the operator
key (which the server takes wherever it takes the API key).
The schema is fuzzed as the app states it, and once more narrowed to the served model names and greedy
settings, so that generated requests also get past the model lookup into the engine.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from servers import make_adapter, serving
from tiny import tiny_model, tiny_tokenizer

from fewtune.serve.adapters import AdapterPolicy, AdapterSet
from fewtune.serve.app import create_app
from fewtune.serve.engine import Engine
from fewtune.serve.limits import Limits

KEY = "fuzz-key-0123"
ADMIN = "fuzz-operator-4567"
"""The operator key: accepted wherever the API key is, and needed by routes, feedback and fine-tuning, so the
fuzz sends it to reach every endpoint's handler."""
BASE = "tiny-base"
EXAMPLES = 50
"""Cases per operation and generation mode at most (an operation without input has one)."""


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz-adapters")
    tokenizer = tiny_tokenizer()
    make_adapter(tokenizer, root / "support", seed=1)
    adapters = AdapterSet(
        tiny_model(tokenizer, sliding_window=512), tokenizer, BASE, policy=AdapterPolicy.of([root])
    )
    adapters.load("support", root / "support")
    engine = Engine(adapters, max_batch=4, batch_wait_ms=1)
    # Small limits keep each accepted request short; the limits themselves are what is fuzzed past.
    limits = Limits(max_tokens=8, max_prompts=4, max_body_bytes=65_536, max_queue=8, request_timeout_s=30)
    app = create_app(
        engine,
        api_key=KEY,
        admin_key=ADMIN,
        limits=limits,
        canary=_canary(root),
        finetune=_finetune(root, engine),
    )
    with serving(app) as url:
        yield url, app.openapi()


def _canary(folder: Any) -> Any:
    """Two methods (a prompt with a demo on the base, the adapter) and a route between them."""
    from fewtune.data.load import Example
    from fewtune.decide.cost import load_price_table
    from fewtune.prompts.template import PromptTemplate
    from fewtune.serve.arms import LocalArm, MethodPrompt
    from fewtune.serve.canary import Canary
    from fewtune.serve.routes import Route, RouteTable

    template = PromptTemplate(("negative", "positive"))
    prompt = MethodPrompt("few-shot k=1", template, (Example("great fun", "positive"),), None, None, False)
    tuned = MethodPrompt("lora n=20", template, (), None, "support", True)
    arms = {m.name: LocalArm(m.name, m) for m in (prompt, tuned)}
    routes = RouteTable(folder / "routes.json", [Route("route", prompt.name, tuned.name, 0.5)])
    return Canary(arms, routes, load_price_table("hosted-api"), folder / "feedback.jsonl", timeout_s=30)


def _finetune(folder: Any, engine: Engine) -> Any:
    """The Files and Fine-tuning APIs over the tiny model (a job a fuzzed body creates trains it)."""
    from finetune_server import fresh_base

    from fewtune.decide.cost import load_price_table
    from fewtune.serve.finetune.service import FineTuning
    from fewtune.serve.finetune.state import FineTuneStore

    store = FineTuneStore(folder / "finetune")
    return FineTuning(store, engine, lambda: fresh_base(tiny_tokenizer()), load_price_table(None))


HOSTILE_TEXT = ["\x00", "\uffff", "\U0010ffff", "\u202e", "x" * 5000, "../../etc/passwd", "tiny-base\n"]
"""Strings a hostile client sends: NUL, noncharacters, a direction override, a long one, a path... (lone
surrogates too, but schemathesis cannot encode them: tests/test_hostile_inputs.py sends them as raw text)."""
HOSTILE_NUMBERS = [10**400, -(10**400), 2**63, 1e308, -1e308, -0.0, 0.5]
"""Numbers past every range (JSON has no NaN: tests/test_hostile_inputs.py sends it as raw text)."""


def _hostile(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with each string and number field of the JSON request bodies also taking hostile values."""
    schema = copy.deepcopy(schema)

    def widen(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "string" and node.get("format") != "binary":
                return {"anyOf": [node, {"enum": HOSTILE_TEXT}]}
            if node.get("type") in ("integer", "number"):
                return {"anyOf": [node, {"enum": HOSTILE_NUMBERS}]}
            return {key: widen(value) for key, value in node.items()}
        return [widen(item) for item in node] if isinstance(node, list) else node

    schema["components"]["schemas"] = widen(schema["components"]["schemas"])
    for path in schema["paths"].values():
        for operation in path.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                content["application/json"] = widen(content["application/json"])
    return schema


def _served(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``model`` one of the served names and the settings this server decodes with, so
    that most generated requests reach the engine."""
    schema = copy.deepcopy(schema)
    bodies = schema["components"]["schemas"]
    for name in ("CompletionRequest", "ChatRequest"):
        properties = bodies[name]["properties"]
        properties["model"] = {
            "type": "string",
            "enum": [BASE, "support", "route", "few-shot k=1", "lora n=20"],
        }
        properties["temperature"] = {"enum": [0, None]}
        properties["n"] = {"enum": [1]}
        properties["stream"] = {"enum": [False]}
    bodies["CompletionRequest"]["properties"]["best_of"] = {"enum": [1, None]}
    small = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 8}, {"type": "null"}]}
    for name, fields in (
        ("CompletionRequest", ("max_tokens", "logprobs")),
        ("ChatRequest", ("max_tokens", "max_completion_tokens")),
    ):
        for field in fields:
            bodies[name]["properties"][field] = small
    bodies["LoadAdapterRequest"]["properties"]["lora_path"] = {"enum": ["support", "nope", "../support"]}
    return schema


@pytest.mark.parametrize("variant", ["as-stated", "served-names", "hostile"])
def test_no_request_from_the_schema_gets_a_server_error(fuzzed: tuple[str, Any], variant: str) -> None:
    url, raw = fuzzed
    shaped = {"as-stated": raw, "served-names": _served(raw), "hostile": _hostile(_served(raw))}[variant]
    schema = schemathesis.openapi.from_dict(shaped)
    statuses: collections.Counter[int] = collections.Counter()
    server_errors: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter", "/health", "/metrics", "/v1/routes", "/v1/routes/{name}", "/v1/feedback",
        "/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content", "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{job_id}", "/v1/fine_tuning/jobs/{job_id}/cancel",
        "/v1/fine_tuning/jobs/{job_id}/events", "/v1/fine_tuning/jobs/{job_id}/checkpoints",
    }  # fmt: skip
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same cases on every run
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def send(case: Any) -> None:
                response = case.call(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    server_errors.append(f"{case.method} {case.path} {case.body!r}: {response.text[:300]}")

            try:
                send()
            except Unsatisfiable:  # nothing to get wrong: GET /health takes no input
                assert mode is GenerationMode.NEGATIVE and not operation.body
    total = sum(statuses.values())
    print(f"schemathesis: {total} cases, {len(server_errors)} 5xx, statuses {dict(sorted(statuses.items()))}")
    assert not server_errors, server_errors[:5]
    assert total >= 5 * len(operations)  # each operation was exercised
    assert statuses[200] > 0 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 0
    assert statuses[403] == 0  # the operator key reached every handler: routes, feedback, files, jobs
