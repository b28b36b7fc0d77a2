"""Canary control under abuse (issue 36): the operator key, feedback only for answered requests, arms only
through their route, arm URLs private, upstream failures as logged 502s, per-arm keys, capped upstream
replies, and failover from a candidate that refuses connections to the baseline, which the monitor then
rolls back.

One real loopback server on the tiny model (no training: the methods are built by hand) and a fake upstream
in front of it that answers each remote arm according to the first segment of its URL path.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from servers import free_port, serving
from tiny import tiny_model, tiny_tokenizer

from fewtune.errors import ConfigError
from fewtune.http_client import httpx

KEY = "guard-api-key"
ADMIN = "guard-admin-key"
ARM_KEY = "guard-arm-key"
BASE = "tiny-base"
HUGE_BYTES = 48 * 1024 * 1024
CHUNK = b" " * (1024 * 1024)


def headers(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upstream_app(state: dict[str, Any]) -> FastAPI:
    """``POST /{mode}/v1/completions``: ``ok`` forwards to the server under test; the others break the
    answer as named."""
    app = FastAPI()

    @app.post("/{mode}/v1/completions")
    async def completions(mode: str, request: Request) -> Response:
        state.setdefault("auth", []).append(request.headers.get("authorization"))
        if mode == "garbage":
            return Response("<html>maintenance</html>", media_type="text/html")
        if mode == "huge":

            async def chunks() -> Any:
                state["huge_sent"] = 0
                while state["huge_sent"] < HUGE_BYTES:
                    state["huge_sent"] += len(CHUNK)
                    yield CHUNK
                    await asyncio.sleep(0)

            return StreamingResponse(chunks(), media_type="application/json")
        async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
            reply = await client.post(
                f"{state['server']}/v1/completions",
                content=await request.body(),
                headers={**headers(), "content-type": "application/json"},
            )
        data = reply.json()
        if mode == "negative":
            data["usage"]["prompt_tokens"] = -5
        if mode == "badcount":
            data["usage"]["prompt_tokens"] = "many"
        return JSONResponse(data, status_code=reply.status_code)

    return app


class StubFineTuning:
    """Enough of :class:`~fewtune.serve.finetune.service.FineTuning` for ``GET /v1/files``."""

    class store:  # the attribute the routes read
        @staticmethod
        def files(purpose: str | None) -> list[Any]:
            return []

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Served:
    url: str
    upstream: str
    state: dict[str, Any]
    work: Path


def remote(upstream: str, mode: str) -> str:
    return f"zero-shot@{upstream}/{mode}/v1#{BASE}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from fewtune.data.load import Example
    from fewtune.decide.cost import load_price_table
    from fewtune.prompts.template import PromptTemplate
    from fewtune.serve.adapters import AdapterSet
    from fewtune.serve.app import create_app
    from fewtune.serve.arms import MethodPrompt, build_arm
    from fewtune.serve.canary import Canary
    from fewtune.serve.engine import Engine
    from fewtune.serve.routes import Route, RouteTable

    work = tmp_path_factory.mktemp("canary-guard")
    tokenizer = tiny_tokenizer()
    engine = Engine(AdapterSet(tiny_model(tokenizer, sliding_window=512), tokenizer, BASE), max_batch=8)
    template = PromptTemplate(("negative", "positive"))
    methods: dict[str, Any] = {
        "zero-shot": MethodPrompt("zero-shot", template, (), None, None, False),
        "few-shot k=1": MethodPrompt(
            "few-shot k=1", template, (Example("great fun", "positive"),), None, None, False
        ),
        "spare": MethodPrompt("spare", template, (), None, None, False),
    }
    state: dict[str, Any] = {}
    with serving(upstream_app(state)) as upstream:
        closed = f"zero-shot@http://127.0.0.1:{free_port()}/v1#{BASE}"  # nothing listens there
        routes = [
            Route("good", "zero-shot", remote(upstream, "ok"), 1.0),
            Route("refused", "few-shot k=1", closed, 1.0),
            Route("change", "zero-shot", "few-shot k=1", 0.5),
            *(Route(mode, remote(upstream, mode), "few-shot k=1", 0.0)
              for mode in ("garbage", "badcount", "negative", "huge")),
        ]  # fmt: skip
        keys = {upstream.removeprefix("http://"): ARM_KEY}
        arms = {name: build_arm(name, methods) for name in methods}
        for route in routes:
            for spec in (route.baseline, route.candidate):
                arms.setdefault(spec, build_arm(spec, methods, keys, timeout_s=15))
        canary = Canary(
            arms, RouteTable(work / "routes.json", routes), load_price_table("hosted-api"),
            work / "feedback.jsonl", timeout_s=30,
        )  # fmt: skip
        app = create_app(
            engine, api_key=KEY, admin_key=ADMIN, request_log=work / "requests.jsonl", canary=canary,
            finetune=StubFineTuning(),  # type: ignore[arg-type]
        )  # fmt: skip
        with serving(app) as url:
            state["server"] = url
            yield Served(url, upstream, state, work)


def ask(url: str, model: str, text: str = "what a great film", user: str = "someone") -> httpx.Response:
    body = {"model": model, "user": user, "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers(), timeout=60, trust_env=False)


def log_lines(served: Served) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (served.work / "requests.jsonl").read_text().splitlines()]


def logged_line(served: Served, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The last request-log line ``wanted`` picks, waited for: the guard writes a request's line after its
    response is sent."""
    deadline = time.monotonic() + 10
    while True:
        found = [x for x in log_lines(served) if wanted(x)]
        if found or time.monotonic() > deadline:
            assert found, "no such line in the request log"
            return found[-1]
        time.sleep(0.05)


def test_route_changes_feedback_and_fine_tuning_need_the_operator_key(served: Served) -> None:
    url = served.url
    answered = ask(url, "good").json()["id"]
    calls = [
        ("PUT", "/v1/routes/change", {"weight": 0.5, "by": "tester"}),
        ("POST", "/v1/feedback", {"request_id": answered, "answer": "positive"}),
        ("GET", "/v1/files", None),
    ]
    for method, path, body in calls:
        refused = httpx.request(method, url + path, json=body, headers=headers(KEY), trust_env=False)
        assert refused.status_code == 403, (path, refused.text)
        assert "operator key" in refused.json()["error"]["message"]
        done = httpx.request(method, url + path, json=body, headers=headers(ADMIN), trust_env=False)
        assert done.status_code == 200, (path, done.text)
    # the operator key also passes the API-key check, so an operator needs one key
    assert httpx.get(f"{url}/v1/models", headers=headers(ADMIN), trust_env=False).status_code == 200


def test_without_an_operator_key_those_endpoints_are_off_when_the_server_has_an_api_key() -> None:
    from fewtune.serve.operator import OperatorKey

    refused = OperatorKey(admin_key=None, api_key=KEY).refusal({"authorization": f"Bearer {KEY}"})
    assert refused is not None and refused.status == 403 and "--admin-key" in refused.message
    assert OperatorKey(admin_key=None, api_key=None).allows({})  # --no-auth: loopback only already
    assert not OperatorKey(admin_key=ADMIN, api_key=None).allows({})


def test_feedback_only_for_answered_requests_once_each(served: Served) -> None:
    url, admin = served.url, headers(ADMIN)
    post = f"{url}/v1/feedback"
    unknown = httpx.post(post, json={"request_id": "chatcmpl-made-up", "answer": "x"}, headers=admin,
                         trust_env=False)  # fmt: skip
    assert unknown.status_code == 404 and "no answered request" in unknown.text
    answered = ask(url, "good").json()["id"]
    first = httpx.post(
        post, json={"request_id": answered, "answer": "positive"}, headers=admin, trust_env=False
    )
    again = httpx.post(
        post, json={"request_id": answered, "answer": "negative"}, headers=admin, trust_env=False
    )
    assert (first.status_code, again.status_code) == (200, 404)
    kept = [json.loads(x) for x in (served.work / "feedback.jsonl").read_text().splitlines()]
    assert "chatcmpl-made-up" not in {x["request_id"] for x in kept}
    assert [x["answer"] for x in kept if x["request_id"] == answered] == ["positive"]


def test_arms_are_reached_only_through_their_route_and_their_urls_stay_private(served: Served) -> None:
    url, where = served.url, served.upstream.removeprefix("http://")
    for model in (remote(served.upstream, "ok"), "zero-shot", "few-shot k=1"):
        bypass = ask(url, model)
        assert bypass.status_code == 404, (model, bypass.text)
        assert where not in bypass.text
    assert ask(url, "spare").status_code == 200  # a method on no route is still served by name
    listed = httpx.get(f"{url}/v1/models", headers=headers(), trust_env=False).text
    assert where not in listed and "zero-shot" not in listed and "spare" in listed
    public = httpx.get(f"{url}/v1/routes", headers=headers(), trust_env=False).json()["routes"]
    assert where not in json.dumps(public)
    assert {r["name"]: r["candidate"] for r in public}["good"] == "zero-shot@remote"
    full = httpx.get(f"{url}/v1/routes", headers=headers(ADMIN), trust_env=False).json()["routes"]
    assert {r["name"]: r["candidate"] for r in full}["good"] == remote(served.upstream, "ok")
    broken = ask(url, "garbage")
    assert broken.status_code == 502 and where not in broken.text
    assert where not in httpx.get(f"{url}/metrics", trust_env=False).text


@pytest.mark.parametrize("mode", ["garbage", "badcount"])
def test_a_broken_upstream_answer_is_a_502_and_logged_with_its_url(
    served: Served, mode: str, capfd: pytest.CaptureFixture[str]
) -> None:
    reply = ask(served.url, mode)
    assert reply.status_code == 502, reply.text
    assert "not a completion" in reply.json()["error"]["message"]
    err = capfd.readouterr().err
    assert f"route {mode}, baseline arm" in err and f"{served.upstream}/{mode}/v1/completions" in err


def test_a_negative_token_count_keeps_the_request_in_the_log(served: Served) -> None:
    reply = ask(served.url, "negative")
    assert reply.status_code == 502, reply.text
    logged_line(served, lambda x: x.get("route") == "negative")  # written after the response
    logged = [x for x in log_lines(served) if x.get("route") == "negative"]
    assert [x["status"] for x in logged] == [502]


def test_the_metrics_and_the_log_survive_a_negative_count(tmp_path: Path) -> None:
    from fewtune.serve.observe import Metrics, RequestLog, RequestRecord

    record = RequestRecord(model="m", served=True, prompt_tokens=-3, completion_tokens=-1)
    log = RequestLog(tmp_path / "requests.jsonl")
    Metrics().observe(record, "/v1/chat/completions", 0.1, 200)
    log.write(record, "/v1/chat/completions", 0.1, 200)
    assert len((tmp_path / "requests.jsonl").read_text().splitlines()) == 1


def test_an_upstream_reply_is_read_to_a_cap(served: Served) -> None:
    from fewtune.serve.arms import MAX_REPLY_BYTES

    reply = ask(served.url, "huge")
    assert reply.status_code == 502 and f"over {MAX_REPLY_BYTES:,} bytes" in reply.text
    assert served.state["huge_sent"] < HUGE_BYTES  # the arm stopped reading; the sender stopped too


def test_a_remote_arm_sends_only_its_own_key(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewtune.serve.arms import build_arm

    served.state["auth"] = []
    assert ask(served.url, "good").status_code == 200
    assert served.state["auth"] == [f"Bearer {ARM_KEY}"]  # the key configured for its host
    monkeypatch.setenv("OPENAI_API_KEY", "sk-general")
    monkeypatch.setenv("FEWTUNE_ARM_API_KEY", "sk-general")
    methods: dict[str, Any] = {"m": object()}
    arm = build_arm("m@https://api.example.com/v1#big", methods)
    assert "authorization" not in arm.client.headers
    keyed = build_arm("m@https://api.example.com/v1#big", methods, {"api.example.com": "sk-arm"})
    assert keyed.client.headers["authorization"] == "Bearer sk-arm"


def test_plain_http_to_another_machine_is_refused_unless_allowed() -> None:
    from fewtune.serve.arms import RemoteArm, build_arm

    methods: dict[str, Any] = {"m": object()}
    with pytest.raises(ConfigError, match="plain http"):
        build_arm("m@http://10.0.0.5:8000/v1#big", methods)
    assert isinstance(build_arm("m@http://10.0.0.5:8000/v1#big", methods, allow_http=True), RemoteArm)
    assert isinstance(build_arm("m@http://localhost:8000/v1#big", methods), RemoteArm)
    assert isinstance(build_arm("m@https://10.0.0.5/v1#big", methods), RemoteArm)


def test_a_route_change_is_logged_as_one(served: Served) -> None:
    put = httpx.put(f"{served.url}/v1/routes/change", json={"weight": 0.25, "by": "alice"},
                    headers=headers(ADMIN), trust_env=False)  # fmt: skip
    assert put.status_code == 200
    line = logged_line(served, lambda x: x.get("changed_by") == "alice")  # written after the response
    assert line["endpoint"] == "/v1/routes/{name}" and line["route"] == "change"
    assert line["weight"] == 0.25


def test_a_refusing_candidate_is_answered_by_the_baseline_and_rolled_back(
    served: Served, tmp_path: Path
) -> None:
    import jsonschema

    from fewtune.release.monitor import MIN_REQUESTS
    from fewtune.release.policy import Policy
    from fewtune.release.watch import MonitorSettings, check_once

    replies = [
        ask(served.url, "refused", f"film {i} was fine", user=f"user-{i}") for i in range(MIN_REQUESTS)
    ]
    assert [r.status_code for r in replies] == [200] * MIN_REQUESTS  # no caller saw the failure
    assert {r.json()["fewtune"]["arm"] for r in replies} == {"baseline"}
    # The guard writes a request's lines after its response is sent: wait for the last one.
    deadline = time.monotonic() + 10
    while True:
        logged = [x for x in log_lines(served) if x.get("route") == "refused"]
        if len(logged) >= 2 * MIN_REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    schema = json.loads(Path("docs/request-log.schema.json").read_text())
    for line in logged:
        jsonschema.validate(line, schema)
    failed = [x for x in logged if x["arm"] == "candidate"]
    assert len(failed) == MIN_REQUESTS and {(x["status"], x["failover"]) for x in failed} == {(502, True)}
    metrics = httpx.get(f"{served.url}/metrics", trust_env=False).text
    assert f'fewtune_route_failovers_total{{route="refused"}} {MIN_REQUESTS}.0' in metrics
    settings = MonitorSettings(
        server=served.url, route="refused", log=served.work / "requests.jsonl", feedback=None,
        window_s=3600, interval_s=1, policy=Policy(), owner="tester", runbook=tmp_path / "runbook",
        api_key=ADMIN,
    )  # fmt: skip
    watch, _, rolled = check_once(settings)
    assert rolled and watch.decision == "fail"
    routes = httpx.get(f"{served.url}/v1/routes", headers=headers(), trust_env=False).json()["routes"]
    assert {r["name"]: r["weight"] for r in routes}["refused"] == 0.0


def test_the_operator_key_comes_from_its_flag_or_variable_and_is_not_the_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fewtune.serve.access import arm_keys, check_admin_key

    monkeypatch.setenv("FEWTUNE_ADMIN_KEY", ADMIN)
    assert check_admin_key(None, KEY) == ADMIN
    with pytest.raises(ConfigError, match="must differ from the API key"):
        check_admin_key(KEY, KEY)
    monkeypatch.setenv("EXAMPLE_KEY", "sk-arm")
    assert arm_keys(["API.example.com=EXAMPLE_KEY"]) == {"api.example.com": "sk-arm"}
    with pytest.raises(ConfigError, match="MISSING_KEY is not set"):
        arm_keys(["api.example.com=MISSING_KEY"])
