"""Canary bench: a loopback canary with faults in the candidate, detected and rolled back by the monitor.

Starts a real ``fewtune serve`` on a run folder (child process, 127.0.0.1, API key, request log and runbook
in a temporary folder) with one route per scenario, each at candidate weight ``--weight``, and a fault
proxy (:mod:`fault_proxy`) through which the candidate arms reach the same server's model. Then, one
scenario at a time: steady load on the route (``--clients`` callers in flight, each request from one of
``--users`` sticky callers, inputs from the run's test rows), and ``fewtune monitor`` as a child process
with ``--window`` / ``--interval`` until it rolls back or ``--checks`` windows pass; the load runs on
``--after`` seconds past the end to show that nothing was lost in the switch.

Scenarios (``METHOD`` is ``--method``, the run's prompt method; candidates reach the model through the
proxy's ``ok`` / ``slow`` / ``fail`` hop):

- ``equal-0`` .. ``equal-N``: the same method, candidate through the fault-free hop; must not be rolled back
  (``--seeds`` runs, each with its own caller ids and inputs);
- ``slower``: +``--delay-s`` on each candidate request; ``failing``: ``--error-share`` of candidate requests
  fail; ``costlier``: the candidate is ``--costlier-method`` (the same model with demos in every prompt);
- ``refused``: the candidate's URL is a loopback port nothing listens on (every connection refused): the
  baseline must answer every request (no 5xx, nothing lost) and the monitor roll the candidate back.

Reported per scenario: requests sent and answered per arm, lost (no HTTP answer), 5xx per arm, whether and
at which check it was rolled back, candidate answers to requests sent after the rollback, and the monitor's
verdict table. Prints a table and, last, one JSON object; exits 1 when an expectation fails.

    python bench/canary.py --run runs/sst2    # a classification run with few-shot and LoRA methods
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fault_proxy
from rich.console import Console
from rich.table import Table
from serve import free_port

from fewtune.http_client import httpx
from fewtune.results.run_folder import read_run

console = Console(stderr=True)
KEY = "canary-bench-key"
ADMIN = "canary-bench-operator-key"
PY = sys.executable


def scenarios(args: argparse.Namespace, proxy: str, base: str) -> dict[str, tuple[str, str]]:
    hop = f"{args.method}@{proxy}/{{}}/v1#{base}"
    found = {f"equal-{i}": (args.method, hop.format("ok")) for i in range(args.seeds)}
    found["slower"] = (args.method, hop.format("slow"))
    found["failing"] = (args.method, hop.format("fail"))
    found["costlier"] = (args.costly_baseline, args.costlier_method)
    found["refused"] = (args.method, f"{args.method}@http://127.0.0.1:{free_port()}/v1#{base}")
    return found


async def load(
    url: str,
    route: str,
    texts: list[str],
    args: argparse.Namespace,
    seed: int,
    stop: asyncio.Event,
    sent: list[dict[str, Any]],
) -> None:
    """``--clients`` callers sending until ``stop``; every request's outcome appended to ``sent``."""
    rng = random.Random(seed)
    users = [f"user-{seed}-{i}" for i in range(args.users)]
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=120, trust_env=False, headers=headers) as client:

        async def caller() -> None:
            while not stop.is_set():
                body = {"model": route, "user": rng.choice(users),
                        "messages": [{"role": "user", "content": rng.choice(texts)}]}  # fmt: skip
                start = time.time()
                entry: dict[str, Any] = {"sent": start}
                try:
                    reply = await client.post(f"{url}/v1/chat/completions", json=body)
                    entry["status"] = reply.status_code
                    if reply.status_code == 200:
                        entry["arm"] = reply.json()["fewtune"]["arm"]
                except httpx.HTTPError as err:
                    entry["lost"] = type(err).__name__
                entry["done"] = time.time()
                sent.append(entry)

        await asyncio.gather(*(caller() for _ in range(args.clients)))


async def scenario(
    url: str, route: str, texts: list[str], args: argparse.Namespace, seed: int, work: Path
) -> dict[str, Any]:
    stop, sent = asyncio.Event(), []
    traffic = asyncio.create_task(load(url, route, texts, args, seed, stop, sent))
    await asyncio.sleep(args.warmup)
    command = [PY, "-m", "fewtune", "monitor", "--server", url, "--route", route, "--log",
               str(work / "requests.jsonl"), "--window", args.window, "--interval", args.interval,
               "--checks", str(args.checks), "--json", "--runbook", str(work / "runbook"), "--owner", "bench",
               "--api-key", KEY, "--admin-key", ADMIN]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    rolled_at = time.time()
    await asyncio.sleep(args.after)
    stop.set()
    await traffic
    checks = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    if not checks:
        raise SystemExit(f"monitor gave no checks (rc {proc.returncode}): {err.decode()[-2000:]}")
    rolled = next((i + 1 for i, c in enumerate(checks) if c["rolled_back"]), None)
    late = [s for s in sent if s["sent"] > rolled_at and s.get("arm") == "candidate"] if rolled else []
    arms = {arm: [s for s in sent if s.get("arm") == arm] for arm in ("baseline", "candidate")}
    return {
        "route": route,
        "sent": len(sent),
        "answered": {arm: len(v) for arm, v in arms.items()},
        "lost": sum(1 for s in sent if "lost" in s),
        "5xx": sum(1 for s in sent if s.get("status", 0) >= 500),
        "rolled_back_at_check": rolled,
        "checks": len(checks),
        "candidate_answers_after_rollback": len(late),
        "last": {v["metric"]: v["status"] for v in checks[-1]["verdicts"]},
        "runbook_entry": checks[-1]["runbook_entry"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--method", default="few-shot k=8 balanced")
    parser.add_argument("--costly-baseline", default="zero-shot")
    parser.add_argument("--costlier-method", default="few-shot k=8 balanced")
    parser.add_argument("--weight", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--window", default="45s")
    parser.add_argument("--interval", default="15s")
    parser.add_argument("--checks", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=45.0)
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--delay-s", type=float, default=1.0)
    parser.add_argument("--error-share", type=float, default=0.10)
    parser.add_argument("--only", default=None, help="comma-separated scenario names")
    args = parser.parse_args()
    results, predictions = read_run(args.run)
    texts = sorted({p["text"] for rows in predictions.values() for p in rows})
    work = Path(tempfile.mkdtemp(prefix="fewtune-canary-"))
    port, proxy_port = free_port(), free_port()
    url, proxy = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proxy_port}"
    base = results["model"]
    plan = scenarios(args, proxy, base)
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only.split(",")}
    command = [PY, "-m", "fewtune", "serve", str(args.run), "--port", str(port), "--api-key", KEY,
               "--admin-key", ADMIN, "--request-log", str(work / "requests.jsonl"), "--routes-file",
               str(work / "routes.json"), "--costs", "hosted-api",
               "--arm-key-env", f"127.0.0.1:{proxy_port}=FEWTUNE_BENCH_ARM_KEY"]  # fmt: skip
    for name, (baseline, candidate) in plan.items():
        command += ["--route", f"{name}={baseline},{candidate}:{args.weight}"]
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CI": "true", "FEWTUNE_BENCH_ARM_KEY": KEY},
    )
    proxy_server = None
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start: {(work / 'serve.log').read_text()[-3000:]}")
            time.sleep(1)
        proxy_server = fault_proxy.start(url, proxy_port, args.delay_s, args.error_share, seed=0)
        figures = {}
        for seed, route in enumerate(plan):
            console.print(f"scenario {route} ...")
            figures[route] = asyncio.run(scenario(url, route, texts, args, seed, work))
            console.print(figures[route])
    finally:
        if proxy_server is not None:
            proxy_server.should_exit = True
        server.terminate()
        server.wait(timeout=60)
    failed = []
    for route, f in figures.items():
        expect_rollback = not route.startswith("equal")
        if (f["rolled_back_at_check"] is not None) != expect_rollback:
            failed.append(f"{route}: rolled back {f['rolled_back_at_check']} (expected {expect_rollback})")
        if f["lost"]:
            failed.append(f"{route}: {f['lost']} requests lost")
        if route == "refused" and f["5xx"]:
            failed.append(f"{route}: {f['5xx']} client-visible errors (the baseline should answer them)")
    table = Table(title=f"canary bench ({args.run}, weight {args.weight}, window {args.window})")
    for column in ("scenario", "sent", "baseline", "candidate", "lost", "5xx", "rolled back at check",
                   "candidate after rollback", "last verdicts"):  # fmt: skip
        table.add_column(column)
    for route, f in figures.items():
        verdicts = ", ".join(f"{k.split(' (')[0]}: {v}" for k, v in f["last"].items())
        table.add_row(route, str(f["sent"]), str(f["answered"]["baseline"]), str(f["answered"]["candidate"]),
                      str(f["lost"]), str(f["5xx"]), str(f["rolled_back_at_check"] or "-"),
                      str(f["candidate_answers_after_rollback"]), verdicts)  # fmt: skip
    Console().print(table)
    print(json.dumps({"work": str(work), "scenarios": figures, "failed": failed}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
