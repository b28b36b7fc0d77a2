"""Serving a run's methods by name, canary routes, feedback, and the monitor's rollback, on a real loopback
server with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from servers import serving

from fewtune.cli import commands as cli
from fewtune.http_client import httpx
from fewtune.release.policy import Policy
from fewtune.release.watch import MonitorSettings, check_once

KEY = "canary-test-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
ADMIN = "canary-test-operator-key"
OPERATOR = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished classification run on the tiny model: zero-shot, few-shot, LoRA and LoRA with demos."""
    from fewtune.cli.runner import run
    from fewtune.config import build_config

    folder = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = build_config(
        None,
        {
            "run": {"model": str(tiny_model_dir), "out": str(folder)},
            "data": {"max_test": 12},
            "prompt": {"shots": [0, 5]},
            "lora": {"epochs": 1, "train_sizes": [20]},
            "eval": {"methods": ["zero-shot", "few-shot", "lora", "lora+few-shot"], "latency_requests": 2},
        },
    )  # fmt: skip
    run(cfg)
    return folder


def app_for(run_dir: Path, work: Path, routes: list[str], arm_key_env: list[str] | None = None) -> Any:
    from fewtune.serve.app import create_app
    from fewtune.serve.launch import build_engine, settings_from_cli

    settings = settings_from_cli(
        run_dir, model=None, adapter=[], host="127.0.0.1", port=8000, api_key=KEY, no_auth=False,
        request_log=work / "requests.jsonl", served_model_name=None, max_batch=16, batch_wait_ms=2.0,
        route=routes, routes_file=work / "routes.json", feedback_log=work / "feedback.jsonl",
        costs="hosted-api", admin_key=ADMIN, arm_key_env=arm_key_env,
    )  # fmt: skip
    engine = build_engine(settings)
    return create_app(
        engine, api_key=KEY, admin_key=ADMIN, request_log=settings.request_log, limits=settings.limits,
        canary=settings.canary,
    )  # fmt: skip


def ask(url: str, model: str, text: str, user: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if user:
        body["user"] = user
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=60, trust_env=False)


def test_each_served_method_answers_as_the_run_measured_it(tiny_run: Path, tmp_path: Path) -> None:
    lines = [json.loads(x) for x in (tiny_run / "predictions.jsonl").read_text().splitlines()]
    names = [m["name"] for m in json.loads((tiny_run / "results.json").read_text())["methods"]]
    assert "lora n=20" in names and "few-shot k=5 balanced" in names
    with serving(app_for(tiny_run, tmp_path, [])) as url:
        listed = {
            m["id"] for m in httpx.get(f"{url}/v1/models", headers=HEADERS, trust_env=False).json()["data"]
        }
        assert set(names) <= listed
        differ = []
        for line in lines:
            reply = ask(url, line["name"], line["text"])
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            assert answer["fewtune"]["method"] == line["name"]
            if answer["choices"][0]["message"]["content"] != line["predicted"]:
                differ.append((line["name"], line["row"]))
    assert differ == []  # every row of every method: the run's own prediction


def test_a_route_is_sticky_logged_persisted_and_rolled_back_by_the_monitor(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jsonschema

    route = "support=few-shot k=5 balanced,lora n=20:0.5"
    with serving(app_for(tiny_run, tmp_path, [route])) as url:
        arms = {}
        for i in range(150):
            reply = ask(url, "support", f"the film number {i} is great fun", user=f"user-{i % 40}")
            assert reply.status_code == 200, reply.text
            arm = reply.json()["fewtune"]["arm"]
            assert arms.setdefault(f"user-{i % 40}", arm) == arm  # sticky per caller
        assert set(arms.values()) == {"baseline", "candidate"}
        request_id = reply.json()["id"]
        feedback = httpx.post(f"{url}/v1/feedback", json={"request_id": request_id, "answer": "positive"},
                              headers=OPERATOR, trust_env=False)  # fmt: skip
        assert feedback.status_code == 200
        schema = json.loads(Path("docs/request-log.schema.json").read_text())
        logged = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
        for line in logged:
            jsonschema.validate(line, schema)
        routed = [x for x in logged if x.get("route") == "support"]
        assert len(routed) == 150 and all(x["cost_usd"] > 0 and x["answer"] for x in routed)
        settings = MonitorSettings(
            server=url, route="support", log=tmp_path / "requests.jsonl",
            feedback=tmp_path / "feedback.jsonl", window_s=3600, interval_s=1,
            policy=Policy(cost_ratio=0.5), owner="tester", runbook=tmp_path / "runbook", api_key=ADMIN,
        )  # fmt: skip
        # lora n=20 has no demos: its prompts are far shorter, so under a 0.5x cost ceiling (a policy that
        # demands a much cheaper candidate) it passes, and the cost check cannot fail; a 0.01x ceiling on
        # the p95 ratio then makes it fail and roll back.
        watch, _, rolled = check_once(settings)
        assert not rolled and watch.requests["candidate"] >= 60 and watch.requests["baseline"] >= 60
        strict = MonitorSettings(**{**settings.__dict__, "policy": Policy(p95_ratio=0.01)})
        watch, entry, rolled = check_once(strict)
        assert rolled and watch.decision == "fail"
        assert entry is not None and "rolled back" in entry.read_text()
        after = [
            ask(url, "support", "one more", user=f"user-{i}").json()["fewtune"]["arm"] for i in range(40)
        ]
        assert set(after) == {"baseline"}
    saved = json.loads((tmp_path / "routes.json").read_text())["routes"][0]
    assert saved["weight"] == 0.0 and saved["changed_by"] == "tester"
    from fewtune.serve.routes import RouteTable, parse_route

    assert RouteTable(tmp_path / "routes.json", [parse_route(route)]).get("support").weight == 0.0


def test_a_remote_arm_sends_the_methods_prompt_to_another_server(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTE_KEY", KEY)  # the remote server's key, sent to its host only
    line = json.loads((tiny_run / "predictions.jsonl").read_text().splitlines()[0])
    with serving(app_for(tiny_run, tmp_path / "a", [])) as remote:
        base = httpx.get(f"{remote}/v1/models", headers=HEADERS, trust_env=False).json()["data"][0]["id"]
        route = f"big={line['name']},{line['name']}@{remote}/v1#{base}:1.0"
        keys = [f"{remote.removeprefix('http://')}=REMOTE_KEY"]
        with serving(app_for(tiny_run, tmp_path / "b", [route], keys)) as url:
            reply = ask(url, "big", line["text"], user="anyone")
    assert reply.status_code == 200, reply.text
    assert reply.json()["fewtune"]["arm"] == "candidate"
    if line["name"] == "zero-shot":
        assert reply.json()["choices"][0]["message"]["content"] == line["predicted"]


def test_routes_need_servable_methods_and_bad_calls_are_4xx(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "sys.argv", ["fewtune", "serve", str(tiny_run), "--api-key", KEY, "--route", "x=zero-shot,nope:0.5"]
    )
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2 and "no servable method 'nope'" in capsys.readouterr().err
    with serving(app_for(tiny_run, tmp_path, ["r=zero-shot,few-shot k=5 balanced:0.1"])) as url:
        put = httpx.put(f"{url}/v1/routes/r", json={"weight": 2}, headers=OPERATOR, trust_env=False)
        assert put.status_code == 400
        put = httpx.put(f"{url}/v1/routes/none", json={"weight": 0.5}, headers=OPERATOR, trust_env=False)
        assert put.status_code == 404
        put = httpx.put(f"{url}/v1/routes/r", json={"weight": 0.5}, headers=HEADERS, trust_env=False)
        assert put.status_code == 403  # the inference key may not move a route
        unauthorized = httpx.put(f"{url}/v1/routes/r", json={"weight": 0.5}, trust_env=False)
        assert unauthorized.status_code == 401
        empty = httpx.post(f"{url}/v1/chat/completions", json={"model": "r", "messages": [{"role": "system",
                           "content": "hi"}]}, headers=HEADERS, trust_env=False)  # fmt: skip
        assert empty.status_code == 400 and "last user message" in empty.text


def test_an_extraction_runs_methods_are_served_with_their_outputs(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from conftest import write_jsonl
    from task_helpers import extraction_rows

    from fewtune.cli.runner import run
    from fewtune.config import build_config
    from fewtune.serve.methods import methods_of_run

    pool = write_jsonl(tmp_path / "pool.jsonl", extraction_rows(8))
    test = write_jsonl(tmp_path / "test.jsonl", extraction_rows(3, start=50))
    folder = tmp_path / "run"
    cfg = build_config(
        None,
        {
            "run": {"model": str(tiny_model_dir), "out": str(folder)},
            "data": {"data": str(pool), "test": str(test)},
            "prompt": {"shots": [0, 1], "demo_selection": ["random"]},
            "lora": {"train_sizes": [4], "epochs": 1, "batch_size": 4},
            "eval": {"methods": ["zero-shot", "few-shot", "lora"], "latency_requests": 1},
        },
    )
    run(cfg)
    lines = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    lines = [x for x in lines if x["name"] != "floor"]
    methods = methods_of_run(folder, {p.name: p for p in (folder / "adapters").iterdir()})
    assert set(methods) == {"zero-shot", "few-shot k=1 random", "lora n=4"}
    with serving(app_for(folder, tmp_path / "serve", [])) as url:
        for line in lines:
            reply = ask(url, line["name"], line["text"])
            assert reply.status_code == 200, reply.text
            served = reply.json()["choices"][0]["message"]["content"]
            assert served == methods[line["name"]].answer_of(line["output"]), (line["name"], line["row"])
    logged = [json.loads(x) for x in (tmp_path / "serve" / "requests.jsonl").read_text().splitlines()]
    assert all(x["answer"] is None for x in logged)  # outputs are free text: never in the log
