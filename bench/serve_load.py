"""The load side of bench/serve.py: the workload, the client, and what is measured against a running server.

``measure`` runs the five phases described in serve.py's docstring against a ``Server`` (the ``fewtune serve``
child that serve.py starts and stops) and returns every figure as one dict; serve.py judges and prints them.
``HOST`` and ``KEY`` live here so that both files share the one per-run key.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.data.load import Example, load_examples
from fewtune.prompts.demos import select_demos
from fewtune.prompts.template import PromptTemplate

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - the openai client pulls in one of them
    import httpx  # type: ignore[no-redef]

HOST = "127.0.0.1"
"""The only address this bench binds and sends to."""
KEY = secrets.token_urlsafe(16)
"""A fresh API key per run (it is on the server's command line, visible to local users)."""
ADAPTER_NAME = "bench-late-adapter"
WARMUPS = 2


@dataclass(frozen=True)
class Workload:
    """The request bodies (``model`` left out: the served base's name is added when sending)."""

    bodies: list[dict[str, Any]]
    prompts_per_request: int
    template: PromptTemplate
    demos: list[Example]


def workload(train: Path, test: Path, shots: int, seed: int, mode: str) -> Workload:
    pool, rows = load_examples(train), load_examples(test)
    labels = tuple(sorted({ex.label for ex in pool}))
    template = PromptTemplate(labels)
    demos = select_demos(pool, shots, "balanced", seed)
    bodies: list[dict[str, Any]] = []
    for row in rows:
        prompt = template.render(row.text, demos)
        if mode == "score":
            options = [prompt + template.continuation(label) for label in labels]
            bodies.append({"prompt": options, "max_tokens": 0, "echo": True, "logprobs": 0, "temperature": 0})
        else:
            bodies.append({"prompt": prompt, "max_tokens": 3, "stop": "\n", "temperature": 0})
    return Workload(bodies, len(labels) if mode == "score" else 1, template, demos)


@dataclass
class Server:
    """A ``fewtune serve`` child process."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    output: Path
    log: Path

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.output.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def owns_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the socket listening on ``HOST:port`` (None: /proc cannot tell)."""
    try:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            if not os.path.exists(table):
                continue
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # 0A: LISTEN
                    inodes.add(cols[9])
        fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except (OSError, IndexError, ValueError):
        return None
    return bool(inodes) and any(f"socket:[{inode}]" in fds for inode in inodes)


@dataclass
class Result:
    status: int | None
    """None: no response (lost)."""
    seconds: float
    body: Any = None
    error: str | None = None


@dataclass
class Client:
    """Counts every ``/v1`` request it sends (the request log and the metrics must count the same)."""

    http: httpx.AsyncClient
    sent: int = 0
    results: list[Result] = field(default_factory=list)

    async def post(self, path: str, body: dict[str, Any], key: str | None = KEY) -> Result:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.sent += path.startswith("/v1/")
        start = time.perf_counter()
        try:
            response = await self.http.post(path, json=body, headers=headers)
        except (httpx.HTTPError, OSError) as err:
            return Result(None, time.perf_counter() - start, error=f"{type(err).__name__}: {err}")
        seconds = time.perf_counter() - start
        try:
            payload: Any = response.json()
        except ValueError:
            payload = response.text
        return Result(response.status_code, seconds, payload)

    async def get(self, path: str) -> Any:
        self.sent += path.startswith("/v1/")
        response = await self.http.get(path, headers={"Authorization": f"Bearer {KEY}"})
        response.raise_for_status()
        return response


def answered(result: Result, prompts: int) -> bool:
    """A 200 whose body holds one choice per prompt, each with a text."""
    if result.status != 200 or not isinstance(result.body, dict):
        return False
    choices = result.body.get("choices")
    return (
        isinstance(choices, list)
        and len(choices) == prompts
        and all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices)
    )


def percentiles_ms(results: list[Result]) -> tuple[float | None, float | None]:
    timings = [r.seconds for r in results if r.status is not None]
    if not timings:
        return None, None
    p50, p95 = np.percentile(timings, [50, 95])
    return float(p50) * 1000, float(p95) * 1000


async def burst(
    client: Client, bodies: list[dict[str, Any]], concurrency: int, timeout: float
) -> tuple[list[Result], float]:
    """Send every body, ``concurrency`` in flight at once; those unanswered after ``timeout`` s are lost."""
    gate = asyncio.Semaphore(concurrency)

    async def one(body: dict[str, Any]) -> Result:
        async with gate:
            return await client.post("/v1/completions", body)

    start = time.perf_counter()
    tasks = [asyncio.create_task(one(body)) for body in bodies]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    wall = time.perf_counter() - start
    for task in pending:
        task.cancel()
    results = []
    for task in tasks:
        if task in done and task.exception() is None:
            results.append(task.result())
        else:
            error = "timed out" if task in pending else repr(task.exception())
            results.append(Result(None, wall, error=error))
    return results, wall


async def counted_lines(path: Path, expected: int, wait: float = 10.0) -> int:
    """Lines in the request log, waiting up to ``wait`` s for ``expected`` (it is written after the reply)."""
    deadline = time.monotonic() + wait
    while True:
        lines = len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0
        if lines >= expected or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.2)


async def metrics_count(client: Client, expected: int, wait: float = 10.0) -> int:
    """``/v1`` requests the server's Prometheus counter has seen (polled ``wait`` s for ``expected``)."""
    deadline = time.monotonic() + wait
    while True:
        text = (await client.http.get("/metrics")).text
        count = sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("fewtune_request_latency_seconds_count{")
        )
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


async def measure(args: argparse.Namespace, server: Server, load: Workload, adapter: Path) -> dict[str, Any]:
    limits = httpx.Limits(
        max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8
    )
    http = httpx.AsyncClient(base_url=server.url, limits=limits, timeout=args.timeout, trust_env=False)
    async with http:
        client = Client(http)
        base = (await client.get("/v1/models")).json()["data"][0]["id"]
        bodies = [{"model": base, **body} for body in load.bodies]
        prompts = load.prompts_per_request
        pid = server.proc.pid

        # 1. one request at a time
        for body in bodies[:WARMUPS]:
            await client.post("/v1/completions", body)
        single = [await client.post("/v1/completions", body) for body in bodies[: args.single]]
        single_bad = sum(not answered(r, prompts) for r in single)

        # 2. the burst
        burst_bodies = [bodies[i % len(bodies)] for i in range(args.requests)]
        results, wall = await burst(client, burst_bodies, args.concurrency, args.timeout)
        lost = sum(r.status is None for r in results)
        errors = sum(r.status is not None and r.status != 200 for r in results)
        bad_bodies = sum(r.status == 200 and not answered(r, prompts) for r in results)
        statuses = sorted({str(r.status) for r in results if r.status != 200})
        first_error = next((r.error or str(r.body)[:200] for r in results if r.status != 200), None)
        prompt_tokens = [r.body["usage"]["prompt_tokens"] / prompts for r in results if answered(r, prompts)]

        # 3. no key, wrong key
        probe = bodies[0]
        no_key = await client.post("/v1/completions", probe, key=None)
        wrong_key = await client.post("/v1/completions", probe, key="not-the-key")

        # 4. an adapter loaded at run time
        alive_before = server.proc.poll() is None
        loaded = await client.post(
            "/v1/load_lora_adapter", {"lora_name": ADAPTER_NAME, "lora_path": str(adapter)}
        )
        compare = {"prompt": probe["prompt"] if prompts == 1 else probe["prompt"][0], "temperature": 0}
        generate = {**compare, "max_tokens": 3, "stop": "\n"}
        score = {**compare, "max_tokens": 0, "echo": True, "logprobs": 0}
        base_gen = await client.post("/v1/completions", {"model": base, **generate})
        lora_gen = await client.post("/v1/completions", {"model": ADAPTER_NAME, **generate})
        base_score = await client.post("/v1/completions", {"model": base, **score})
        lora_score = await client.post("/v1/completions", {"model": ADAPTER_NAME, **score})
        adapter_ok = loaded.status == 200 and answered(lora_gen, 1) and answered(lora_score, 1)
        differs_text = differs_logprobs = None
        if adapter_ok and answered(base_gen, 1) and answered(base_score, 1):
            differs_text = base_gen.body["choices"][0]["text"] != lora_gen.body["choices"][0]["text"]
            base_lp = base_score.body["choices"][0]["logprobs"]["token_logprobs"]
            lora_lp = lora_score.body["choices"][0]["logprobs"]["token_logprobs"]
            differs_logprobs = base_lp != lora_lp

        # 5. same process, counters never reset, one log line per request
        sent = client.sent
        metrics = await metrics_count(client, sent)
        log_lines = await counted_lines(server.log, sent)
        owner = owns_listener(pid, server.port)
        same_pid = (
            alive_before and server.proc.poll() is None and server.proc.pid == pid and owner is not False
        )

    single_p50, single_p95 = percentiles_ms(single)
    burst_p50, burst_p95 = percentiles_ms(results)
    single_mean = float(np.mean([r.seconds for r in single])) if single else None
    throughput = args.requests / wall if wall > 0 else None
    return {
        "model": base,
        "mode": args.mode,
        "shots": len(load.demos),
        "prompts_per_request": prompts,
        "prompt_tokens_mean": float(np.mean(prompt_tokens)) if prompt_tokens else None,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_batch": args.max_batch,
        "single_requests": len(single),
        "single_errors": single_bad,
        "single_p50_ms": single_p50,
        "single_p95_ms": single_p95,
        "single_mean_ms": single_mean * 1000 if single_mean is not None else None,
        "burst_wall_s": wall,
        "throughput_rps": throughput,
        "burst_p50_ms": burst_p50,
        "burst_p95_ms": burst_p95,
        # throughput against one request at a time (1 / mean single latency)
        "speedup_vs_single": throughput * single_mean if throughput and single_mean else None,
        "lost": lost,
        "errors": errors,
        "bad_bodies": bad_bodies,
        "error_statuses": statuses,
        "first_error": first_error,
        "unauthorized_status": no_key.status,
        "wrong_key_status": wrong_key.status,
        "adapter_load_status": loaded.status,
        "adapter_loaded_ok": adapter_ok,
        "adapter_differs_text": differs_text,
        "adapter_differs_logprobs": differs_logprobs,
        "same_pid": same_pid,
        "pid_owns_port": owner,
        "requests_sent": sent,
        "metrics_requests": metrics,
        "log_lines": log_lines,
        "cpu_count": os.cpu_count(),
    }
