"""Issue 35's speed figures in one command, old and new in the same run where the old path still exists.

Parts (``--only`` picks some; each prints its lines as it finishes, and the last line is one JSON object):

- ``demo``: ``fewtune run`` on the built-in set (what ``make demo`` runs), new defaults against the old path
  (``--precision fp32 --demo-draw row``: float32 training and a demo draw per training row): wall time, peak
  resident memory (the child's own ``ru_maxrss``), the verdict, LoRA training tokens/s (plain and with
  demos) and scoring rows/s of every prompted row;
- ``sst2``: the README's sst2 example, the same figures;
- ``generation``: bench/generation.py (e2e_nlg, batched generation against one request at a time);
- ``extraction``: bench/extraction_speed.py (8-shot snips, before/after issue 35 item 4, float32 and bf16);
- ``serve``: bench/serve.py in both modes (200 concurrent requests against one at a time);
- ``peers``: bench/peers.py (the guide's method, lm-eval when installed, Trainer+peft).

Absolute times are for the machine the header line names; run nothing else beside it (2 cores here).

    .venv/bin/python bench/speed.py --out /tmp/speed                   # everything: about 70 minutes here
    .venv/bin/python bench/speed.py --out /tmp/speed --only demo,sst2  # the two runs a user waits for
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fewtune.backends.precision import cpu_bf16_units

BENCH = Path(__file__).resolve().parent
SHARED = BENCH.parent.parent / "shared" / "datasets"
OLD = ["--precision", "fp32", "--demo-draw", "row"]
"""The path before issue 35: float32 training, demos drawn per training row."""
RUNS: dict[str, list[str]] = {
    "demo": [],
    "sst2": [
        *("--data", str(SHARED / "sst2/train.jsonl"), "--test", str(SHARED / "sst2/test.jsonl")),
        *("--max-test", "200", "--shots", "0,8", "--train-sizes", "200", "--volume-per-day", "50000"),
    ],
}


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return (
        f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), native bf16: {'yes' if cpu_bf16_units() else 'no'}"
    )


def timed_child(cmd: list[str], log: Path) -> tuple[float, int, int]:
    """Run ``cmd`` with its output in ``log``: (wall seconds, peak resident bytes of the child, exit code)."""
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss * 1024, child.returncode


def run_figures(folder: Path) -> dict[str, Any]:
    """What a finished run folder says about speed: the verdict, training and scoring rates per row."""
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    analysis = json.loads((folder / "analysis.json").read_text(encoding="utf-8"))
    rows = {}
    for m in results["methods"]:
        rows[m["name"]] = {
            "accuracy": m.get("accuracy"),
            "rows_per_s": m.get("throughput_rows_per_second"),
            "train_s": m.get("train_seconds"),
            "train_tokens_per_s": m.get("train_tokens_per_second"),
            "precision": m.get("precision"),
            "train_precision": m.get("train_precision"),
        }
    return {"verdict": analysis["recommendation"]["method"], "rows": rows}


def fewtune_run(name: str, out: Path) -> dict[str, Any]:
    """The run ``name`` under the new defaults and the old path, one after the other."""
    figures: dict[str, Any] = {}
    for side, extra in (("new", []), ("old", OLD)):
        folder = out / name / side
        cmd = [sys.executable, "-m", "fewtune", "run", *RUNS[name], *extra, "--out", str(folder)]
        cmd.append("--overwrite")
        seconds, peak, code = timed_child(cmd, out / name / f"{side}.log")
        if code:
            raise SystemExit(f"{name} ({side}) exited {code}: see {out / name / f'{side}.log'}")
        figures[side] = {"wall_s": seconds, "peak_gb": peak / 1e9, **run_figures(folder)}
        verdict = figures[side]["verdict"]
        print(f"{name:5} {side}: {seconds:6.0f} s, peak {peak / 1e9:.1f} GB, verdict {verdict}")
        for row, f in figures[side]["rows"].items():
            rate = f"{f['train_tokens_per_s']:.0f} train tokens/s" if f["train_tokens_per_s"] else ""
            print(f"      {row:40} {f['rows_per_s'] or 0:7.1f} rows/s {rate}")
    figures["same_verdict"] = figures["new"]["verdict"] == figures["old"]["verdict"]
    figures["speedup"] = figures["old"]["wall_s"] / figures["new"]["wall_s"]
    return figures


def bench_script(script: str, *args: str) -> Callable[[Path], dict[str, Any]]:
    """A part that runs ``bench/<script>`` and keeps the JSON object it prints last."""

    def part(out: Path) -> dict[str, Any]:
        # Arguments may be paths: the log's name keeps only their word characters.
        name = re.sub(r"[^\w.]+", "-", "-".join((Path(script).stem, *args))).strip("-")
        log = out / f"{name}.log"
        seconds, _, code = timed_child([sys.executable, str(BENCH / script), *args], log)
        if code:
            raise SystemExit(f"bench/{script} {' '.join(args)} exited {code}: see {log}")
        figures = json.loads(log.read_text(encoding="utf-8").strip().splitlines()[-1])
        print(f"bench/{script} {' '.join(args)} ({seconds:.0f} s): {json.dumps(brief(figures))}")
        return {"wall_s": seconds, **figures}

    return part


def brief(figures: Any) -> Any:
    """``figures`` without its long lists (a bench's generated outputs): what the printed line shows."""
    if isinstance(figures, dict):
        return {k: brief(v) for k, v in figures.items() if not (isinstance(v, list) and len(v) > 4)}
    return figures


def serve(out: Path) -> dict[str, Any]:
    return {mode: bench_script("serve.py", "--mode", mode)(out) for mode in ("generate", "score")}


def extraction(out: Path) -> dict[str, Any]:
    return {p: bench_script("extraction_speed.py", "--precision", p)(out) for p in ("fp32", "bf16")}


PARTS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "demo": lambda out: fewtune_run("demo", out),
    "sst2": lambda out: fewtune_run("sst2", out),
    "generation": bench_script("generation.py"),
    "extraction": extraction,
    "serve": serve,
    "peers": bench_script(
        "peers.py", "--data", str(SHARED / "sst2"), "--max-test", "200", "--shots", "8", "--train-size", "200"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for the runs and logs")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    print(f"machine: {machine()}")
    summary: dict[str, Any] = {"machine": machine()}
    for name in names:
        (args.out / name).mkdir(parents=True, exist_ok=True)
        summary[name] = PARTS[name](args.out)
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
