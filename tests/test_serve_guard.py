"""One request cannot take ``fewtune serve`` down: a bounded queue (429), a per-request timeout (504), a
disconnected client's work stopped, and a Host allowlist without an API key; over real uvicorn servers on
loopback with the tiny model."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import serving
from tiny import tiny_model, tiny_tokenizer

from fewtune.serve.adapters import AdapterSet
from fewtune.serve.app import create_app
from fewtune.serve.engine import Engine
from fewtune.serve.guard import allowed_hosts, host_name
from fewtune.serve.limits import Limits

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - the openai client pulls in one of them
    import httpx  # type: ignore[no-redef]

KEY = "guard-key-0123"
BASE = "tiny-base"
LONG = 1000
"""New tokens of a long generation: 5 s or more, since every forward pass of the tiny model is slowed to
take at least STEP_S (its speed alone varies too much with the machine's load to time against)."""
STEP_S = 0.005


@dataclass
class Served:
    url: str
    engine: Engine
    log: Path
    forwards: list[int]
    """One entry per forward pass of the model (a decoding step is one)."""
    releases: list[threading.Event]

    def post(self, body: dict[str, Any], timeout: float = 60) -> Any:
        headers = {"Authorization": f"Bearer {KEY}"}
        return httpx.post(f"{self.url}/v1/completions", json=body, headers=headers, timeout=timeout)

    def block(self) -> threading.Event:
        """Hold the worker (between batches) until the returned event is set."""
        release = threading.Event()
        self.releases.append(release)
        self.engine._control(release.wait)
        return release

    def idle(self) -> None:
        """Wait until the worker has passed everything queued before this call."""
        self.engine._control(lambda: None).result(timeout=60)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]


@contextmanager
def served(tmp_path: Path, **limits: Any) -> Iterator[Served]:
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, sliding_window=512)
    forwards: list[int] = []

    def step(_module: Any, _args: Any) -> None:
        forwards.append(1)
        time.sleep(STEP_S)

    model.get_decoder().register_forward_pre_hook(step)
    engine = Engine(AdapterSet(model, tokenizer, BASE), max_batch=8, batch_wait_ms=5)
    log = tmp_path / "requests.jsonl"
    app = create_app(engine, api_key=KEY, request_log=log, limits=Limits(**limits))
    releases: list[threading.Event] = []
    with serving(app) as url:
        try:
            yield Served(url, engine, log, forwards, releases)
        finally:  # a failed test must not leave the worker held (the server could not stop)
            for release in releases:
                release.set()


def _wait_for(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_a_full_queue_is_a_429_with_retry_after_and_the_queued_requests_are_answered(tmp_path: Path) -> None:
    with served(tmp_path, max_queue=2) as server, ThreadPoolExecutor(2) as pool:
        release = server.block()
        body = {"model": BASE, "prompt": "x", "max_tokens": 1}
        queued = [pool.submit(server.post, body) for _ in range(2)]
        _wait_for(lambda: server.engine.held == 2)
        refused = server.post(body)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and "2 requests are already queued" in error["message"]
        release.set()
        assert [f.result().status_code for f in queued] == [200, 200]
        assert server.post(body).status_code == 200  # room again
        assert server.engine.held == 0


def test_a_request_past_the_timeout_is_a_504_and_its_queued_work_is_dropped(tmp_path: Path) -> None:
    with served(tmp_path, request_timeout_s=1.0) as server:
        release = server.block()
        start = time.monotonic()
        late = server.post({"model": BASE, "prompt": "x", "max_tokens": LONG})
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
        assert 1.0 <= time.monotonic() - start < 10
        assert server.engine.held == 0  # the queue slot is free at once
        release.set()
        server.idle()
        assert server.forwards == []  # the worker dropped it without running the model
        assert server.post({"model": BASE, "prompt": "x", "max_tokens": 2}).status_code == 200


def test_a_running_request_past_the_timeout_is_stopped_mid_generation(tmp_path: Path) -> None:
    with served(tmp_path, request_timeout_s=1.0) as server:
        late = server.post({"model": BASE, "prompt": "x", "max_tokens": LONG})
        assert late.status_code == 504
        server.idle()  # would wait for the rest of the generation had it not stopped
        assert 0 < len(server.forwards) < LONG // 2
        assert server.engine.abandoned_runs == 1 and server.engine.held == 0
        # Scored generations (logprobs) stop the same way.
        scored = server.post({"model": BASE, "prompt": "x", "max_tokens": LONG, "logprobs": 2})
        assert scored.status_code == 504
        server.idle()
        assert server.engine.abandoned_runs == 2 and len(server.forwards) < LONG
        assert server.post({"model": BASE, "prompt": "x", "max_tokens": 2}).status_code == 200


def _send_and_hang_up(url: str, body: dict[str, Any], after: float) -> None:
    """POST ``body`` over a raw socket and close the connection ``after`` seconds, without reading."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + payload)
        time.sleep(after)


def test_a_client_that_disconnects_has_its_running_and_queued_work_cancelled(tmp_path: Path) -> None:
    with served(tmp_path, request_timeout_s=120) as server, ThreadPoolExecutor(2) as pool:
        # Two requests that cannot share a batch (their max_tokens differ): one runs, one waits behind it.
        running = pool.submit(
            _send_and_hang_up, server.url, {"model": BASE, "prompt": "x", "max_tokens": LONG}, 1
        )
        _wait_for(lambda: len(server.forwards) > 0)
        waiting = pool.submit(
            _send_and_hang_up, server.url, {"model": BASE, "prompt": "ok", "max_tokens": 999}, 0.5
        )
        running.result(), waiting.result()
        start = time.monotonic()
        server.idle()  # without the cancel: the rest of both generations, 9 s or more
        assert time.monotonic() - start < 5
        assert len(server.forwards) < LONG // 2 and server.engine.abandoned_runs == 1
        _wait_for(lambda: server.engine.held == 0)
        _wait_for(lambda: len(server.log_lines()) == 2)
        assert [line["status"] for line in server.log_lines()] == [499, 499]
        assert server.post({"model": BASE, "prompt": "x", "max_tokens": 2}).status_code == 200


def test_host_names_read_from_the_header() -> None:
    assert host_name("LocalHost:8000") == "localhost" and host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("[::1]:8000") == "::1" and host_name("[::1]") == "::1"
    assert host_name("evil.example:80") == "evil.example"
    for bad in ("", "localhost:80x", "[::1]x", "localhost:"):
        assert host_name(bad) not in allowed_hosts()
    assert allowed_hosts(["Box.LAN"]) == {"localhost", "127.0.0.1", "::1", "box.lan"}


def test_without_a_key_only_allowed_host_names_are_answered(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    engine = Engine(AdapterSet(tiny_model(tokenizer, sliding_window=512), tokenizer, BASE))
    with serving(create_app(engine, hosts=["box.lan"])) as url:
        port = url.rsplit(":", 1)[1]

        def status(host: str, path: str = "/v1/models") -> int:
            return int(httpx.get(f"{url}{path}", headers={"Host": host}, timeout=30).status_code)

        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "box.lan"):
            assert status(host) == 200, host
        # What a page on a rebinding domain sends: its own name.
        refused = httpx.get(f"{url}/v1/models", headers={"Host": f"evil.example:{port}"}, timeout=30)
        assert refused.status_code == 400 and "Host not allowed" in refused.json()["error"]["message"]
        assert status(f"localhost.evil.example:{port}") == 400
        assert status("evil.example", "/health") == 400 and status("evil.example", "/metrics") == 400
    # With a key, the key is the check (a rebinding page cannot know it).
    with serving(create_app(engine, api_key=KEY)) as url:
        headers = {"Host": "evil.example", "Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{url}/v1/models", headers=headers, timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("max_queue", 0, "--max-queue must be at least 1"),
        ("request_timeout_s", 0.0, "--request-timeout-s must be more than 0"),
        ("allowed_host", ["http://x/"], "--allowed-host takes a host name"),
    ],
)
def test_guard_flags_are_checked(flag: str, value: Any, message: str) -> None:
    from fewtune.errors import ConfigError
    from fewtune.serve.launch import settings_from_cli

    common: dict[str, Any] = dict(
        model="m", adapter=[], host="127.0.0.1", port=8000, api_key="k", no_auth=False, request_log=None,
        served_model_name=None, max_batch=4, batch_wait_ms=5,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        settings_from_cli(None, **common, **{flag: value})
    settings = settings_from_cli(None, **common, max_queue=3, request_timeout_s=9, allowed_host=["box.lan"])
    assert (settings.limits.max_queue, settings.limits.request_timeout_s) == (3, 9)
    assert settings.allowed_hosts == ["box.lan", "127.0.0.1"]


def test_defaults_stay_within_the_limit_and_every_refusal_is_openai_shaped(tmp_path: Path) -> None:
    with served(tmp_path, max_tokens=4) as server:
        headers = {"Authorization": f"Bearer {KEY}"}
        chat = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}  # no max_tokens: 256 > 4
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers=headers, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 4
        completion = server.post({"model": BASE, "prompt": "x"})  # OpenAI's default 16 > 4
        assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] <= 4
        for content, kind in ((b'{"model": ', "application/json"), (b"model=x", "text/plain")):
            bad = httpx.post(
                f"{server.url}/v1/completions",
                content=content,
                headers={**headers, "Content-Type": kind},
                timeout=60,
            )
            assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
        missing = httpx.get(f"{server.url}/v1/nowhere", headers=headers, timeout=60)
        assert missing.status_code == 404 and "message" in missing.json()["error"]
