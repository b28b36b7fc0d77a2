"""Serving bench: a burst of concurrent requests to ``fewtune serve``, against one request at a time.

Starts a real ``fewtune serve`` (``python -m fewtune serve``) as a child process on 127.0.0.1 and a free
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
   built for the served model's shapes (or ``--adapter-path``; its folder is the server's
   ``--adapter-root``), ``POST /v1/load_lora_adapter``, then the same request to the base and to the
   adapter: the adapter must answer 200, and whether its answer (text, prompt log-probabilities) differs
   from the base's is reported;
5. no restart: the child's PID is alive and still owns the listening socket, and the server's Prometheus
   request counter (reset by a restart) equals the ``/v1`` requests sent; its request log has one line per
   ``/v1`` request sent.

    python bench/serve.py                         # the default model, ../shared/datasets/sst2, 200 requests
    python bench/serve.py --model FOLDER --requests 50

Prints tables and, as its last line, one JSON object with every figure; exits 1 if a check fails.

This file holds the command line, the inputs (data files, adapter), the server's start and stop, the
checks and the tables; the workload, the client and the measurements are in ``serve_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table
from serve_load import HOST, KEY, Server, measure, workload

from fewtune.backends.models import DEFAULT_MODEL
from fewtune.errors import FewtuneError
from fewtune.run.plan import builtin_dataset_files
from fewtune.serve.adapters import check_adapter_folder

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - the openai client pulls in one of them
    import httpx  # type: ignore[no-redef]

console = Console(stderr=True)

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


@contextmanager
def serving(args: argparse.Namespace, work: Path, adapter_root: Path) -> Iterator[Server]:
    """Start ``fewtune serve``, wait for ``/health``, and SIGTERM it on the way out, whatever happened.
    ``adapter_root``: where the adapter loaded at run time lies (the server loads only from its roots)."""
    port = args.port or free_port()
    url = loopback_url(HOST, port)
    log, output = work / "requests.jsonl", work / "server.out"
    command = [sys.executable, "-m", "fewtune", "serve", "--api-key", KEY, "--host", HOST]
    command += ["--port", str(port), "--request-log", str(log), "--max-batch", str(args.max_batch)]
    command += ["--model", args.model, "--adapter-root", str(adapter_root)]
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
        adapter = args.adapter_path or make_adapter(args.model, work / "adapter", args.seed)
        console.print(
            f"workload: {len(load.bodies)} rows of {test}, {len(load.demos)} demos; adapter {adapter}"
        )
        with serving(args, work, Path(adapter).resolve().parent) as server:
            console.print(f"fewtune serve (pid {server.proc.pid}) healthy at {server.url}")
            return asyncio.run(measure(args, server, load, adapter))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model spec for fewtune serve")
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
