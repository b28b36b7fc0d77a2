"""Serving bench: a burst of concurrent requests to ``fewtune serve``, against one request at a time.

Starts a real ``fewtune serve`` (``python -m fewtune.cli serve``) as a child process on 127.0.0.1 and a free
port, with an API key and a request log in a temporary folder, waits for ``/health``, and always stops it
with SIGTERM at the end (errors and Ctrl-C included). Nothing leaves the machine: the only target is
127.0.0.1, and the client ignores proxy settings.

The workload is fewtune's own traffic: k-shot classification prompts (``PromptTemplate``, the same balanced
demos from the pool's ``train.jsonl`` in every prompt, so the server's prefix cache applies) for the rows of
``test.jsonl``, sent to ``/v1/completions``, greedy:

- ``--mode generate`` (default): the prompt, ``max_tokens`` 3, stop at the newline (the label as an answer);
- ``--mode score``: one prompt per label (prompt + `` label``), ``echo`` + ``logprobs`` with
  ``max_tokens`` 0 (how a client scores labels by log-likelihood).

Measured and checked, in this order:

1. one request at a time: ``--single`` requests after 2 warm-ups, latency p50/p95;
2. the burst: ``--requests`` requests, ``--concurrency`` of them in flight at once (default: all), within
   ``--timeout`` seconds: wall time, throughput, per-request latency p50/p95 (from the moment a request is
   sent), responses that are not 200 (errors), requests with no response (lost: connection errors,
   timeouts), and 200 answers without one choice per prompt (bad bodies);
3. a request without the key (and one with a wrong key): expect 401;
4. an adapter loaded at run time: a random LoRA adapter (r=8 on q_proj/v_proj, ``init_lora_weights=False``)
   built for the served model's shapes (or ``--adapter-path``), ``POST /v1/load_lora_adapter``, then the
   same request to the base and to the adapter: the adapter must answer 200, and whether its answer (text,
   prompt log-probabilities) differs from the base's is reported;
5. no restart: the child's PID is alive and still owns the listening socket, and the server's Prometheus
   request counter (reset by a restart) equals the ``/v1`` requests sent; its request log has one line per
   ``/v1`` request sent.

    python bench/serve.py                         # the default model, ../shared/datasets/sst2, 200 requests
    python bench/serve.py --model FOLDER --requests 50

Prints tables and, as its last line, one JSON object with every figure; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fewtune.backends.models import DEFAULT_MODEL
from fewtune.data.load import Example, load_examples
from fewtune.errors import FewtuneError
from fewtune.plan import builtin_dataset_files
from fewtune.prompts.demos import select_demos
from fewtune.prompts.template import PromptTemplate
from fewtune.serve.adapters import check_adapter_folder

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - the openai client pulls in one of them
    import httpx  # type: ignore[no-redef]

console = Console(stderr=True)

HOST = "127.0.0.1"
"""The only address this bench binds and sends to."""
KEY = secrets.token_urlsafe(16)
"""A fresh API key per run (it is on the server's command line, visible to local users)."""
ADAPTER_NAME = "bench-late-adapter"
WARMUPS = 2
DEFAULT_DATA = Path("../shared/datasets/sst2")


def loopback_url(host: str, port: int) -> str:
    """``http://127.0.0.1:PORT``; any other host is refused (this bench never leaves the machine)."""
    if host != HOST:
        raise SystemExit(f"refusing {host}: bench/serve.py only talks to {HOST}")
    return f"http://{host}:{port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def data_files(data: Path | None) -> tuple[Path, Path]:
    """``train.jsonl`` and ``test.jsonl`` of ``data``; by default sst2 when present, else the built-in set."""
    if data is None:
        data = DEFAULT_DATA if (DEFAULT_DATA / "test.jsonl").is_file() else None
    if data is None:
        train, test = builtin_dataset_files()
        return Path(train), Path(test)
    return data / "train.jsonl", data / "test.jsonl"


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


def make_adapter(model_spec: str, folder: Path, seed: int) -> Path:
    """A random LoRA adapter (r=8 on q_proj/v_proj, ``init_lora_weights=False``) for ``model_spec``'s shapes.

    The base is built on the meta device (no weights read, nothing allocated); only the LoRA matrices are
    materialised, with the init peft gives them under ``init_lora_weights=False`` (nn.Linear's own).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoConfig, AutoModelForCausalLM

    from fewtune.backends.models import resolve_model

    config = AutoConfig.from_pretrained(str(resolve_model(model_spec)))
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft calls transformers APIs deprecated in v5
        warnings.simplefilter("ignore")
        model = get_peft_model(base, lora)
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for linear in (*module.lora_A.values(), *module.lora_B.values()):
                    assert isinstance(linear, torch.nn.Linear)
                    linear.to_empty(device="cpu")
                    linear.reset_parameters()
        model.save_pretrained(str(folder))
    return folder


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


@contextmanager
def serving(args: argparse.Namespace, work: Path) -> Iterator[Server]:
    """Start ``fewtune serve``, wait for ``/health``, and SIGTERM it on the way out, whatever happened."""
    port = args.port or free_port()
    url = loopback_url(HOST, port)
    log, output = work / "requests.jsonl", work / "server.out"
    command = [sys.executable, "-m", "fewtune.cli", "serve", "--api-key", KEY, "--host", HOST]
    command += ["--port", str(port), "--request-log", str(log), "--max-batch", str(args.max_batch)]
    if args.model is not None:
        command += ["--model", args.model]
    with output.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(proc, url, port, output, log)
    try:
        deadline = time.monotonic() + args.startup_timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"fewtune serve exited with {proc.returncode}:\n{server.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"fewtune serve not healthy after {args.startup_timeout} s:\n{server.tail()}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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


def failures(figures: dict[str, Any]) -> list[str]:
    checks = {
        "requests lost": figures["lost"] == 0,
        "error responses": figures["errors"] == 0 and figures["single_errors"] == 0,
        "answers without one choice per prompt": figures["bad_bodies"] == 0,
        "no 401 without the key": figures["unauthorized_status"] == 401,
        "no 401 with a wrong key": figures["wrong_key_status"] == 401,
        "adapter loaded at run time did not answer": figures["adapter_loaded_ok"],
        "server restarted or gone": figures["same_pid"]
        and figures["metrics_requests"] == figures["requests_sent"],
        "request log lines != requests sent": figures["log_lines"] == figures["requests_sent"],
    }
    return [name for name, ok in checks.items() if not ok]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def show(figures: dict[str, Any], failed: list[str]) -> None:
    table = Table(
        title=f"fewtune serve on {HOST}: {figures['model']}, {figures['mode']}, {figures['shots']}-shot"
    )
    for column in ("phase", "requests", "wall s", "req/s", "p50 ms", "p95 ms", "lost", "errors"):
        table.add_column(column)
    single_rps = 1000 / figures["single_mean_ms"] if figures["single_mean_ms"] else None
    table.add_row(
        "one at a time",
        str(figures["single_requests"]),
        "-",
        "-" if single_rps is None else f"{single_rps:.2f}",
        ms(figures["single_p50_ms"]),
        ms(figures["single_p95_ms"]),
        "-",
        str(figures["single_errors"]),
    )
    table.add_row(
        f"burst ({figures['concurrency']} in flight)",
        str(figures["requests"]),
        f"{figures['burst_wall_s']:.1f}",
        "-" if figures["throughput_rps"] is None else f"{figures['throughput_rps']:.2f}",
        ms(figures["burst_p50_ms"]),
        ms(figures["burst_p95_ms"]),
        str(figures["lost"]),
        str(figures["errors"] + figures["bad_bodies"]),
    )
    console.print(table)
    checks = Table(title="checks")
    checks.add_column("check")
    checks.add_column("result")
    speedup = figures["speedup_vs_single"]
    checks.add_row("throughput vs one at a time", "-" if speedup is None else f"{speedup:.1f}x")
    checks.add_row(
        "without key / wrong key", f"{figures['unauthorized_status']} / {figures['wrong_key_status']}"
    )
    checks.add_row(
        "adapter loaded at run time",
        f"load {figures['adapter_load_status']}, answers {figures['adapter_loaded_ok']}, differs from base: "
        f"text {figures['adapter_differs_text']}, log-probs {figures['adapter_differs_logprobs']}",
    )
    checks.add_row(
        "same server process", f"{figures['same_pid']} (owns the port: {figures['pid_owns_port']})"
    )
    checks.add_row(
        "requests sent / metrics / log lines",
        f"{figures['requests_sent']} / {figures['metrics_requests']} / {figures['log_lines']}",
    )
    checks.add_row("failed", ", ".join(failed) or "none")
    console.print(checks)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so that the server is stopped on the way out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check the inputs, build the workload and the adapter, then serve and measure."""
    if args.adapter_path is not None:
        check_adapter_folder(args.adapter_path)
    train, test = data_files(args.data)
    load = workload(train, test, args.shots, args.seed, args.mode)
    with tempfile.TemporaryDirectory(prefix="fewtune-bench-serve-") as tmp:
        work = Path(tmp)
        adapter = args.adapter_path or make_adapter(args.model or DEFAULT_MODEL, work / "adapter", args.seed)
        console.print(
            f"workload: {len(load.bodies)} rows of {test}, {len(load.demos)} demos; adapter {adapter}"
        )
        with serving(args, work) as server:
            console.print(f"fewtune serve (pid {server.proc.pid}) healthy at {server.url}")
            return asyncio.run(measure(args, server, load, adapter))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model spec for fewtune serve (default: its default)")
    parser.add_argument("--data", type=Path, default=None, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--mode", choices=("generate", "score"), default="generate")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=None, help="in flight at once (default: all)")
    parser.add_argument("--single", type=int, default=10, help="requests timed one at a time")
    parser.add_argument("--max-batch", type=int, default=16, help="fewtune serve --max-batch")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole burst")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    parser.add_argument("--adapter-path", type=Path, default=None, help="default: a random adapter")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.concurrency = args.concurrency or args.requests
    if args.requests < 1 or args.concurrency < 1 or args.single < 1:
        parser.error("--requests, --concurrency and --single must be at least 1")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        figures = run(args)
    except FewtuneError as err:  # a bad --model, --data or --adapter-path: one line, before the server
        parser.exit(2, f"error: {err}\n")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the server was stopped on the way out
        parser.exit(130, "interrupted: fewtune serve stopped\n")
    failed = failures(figures)
    figures["ok"] = not failed
    show(figures, failed)
    print(json.dumps(figures))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
