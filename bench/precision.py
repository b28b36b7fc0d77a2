"""bf16 against fp32 on the same runs: per-row agreement of every method row, each row's score inside the
other's interval, and the verdict.

Runs ``fewtune run`` per data set with ``--precision fp32`` and with each variant (``bf16``: training and
scoring in bf16; ``auto``: on a CPU with bf16 units, training in bf16 and scoring in float32), everything
else the same and seeded, then compares each variant's predictions.jsonl with fp32's line by line: a label
row agrees on a test row when it picked the same label, an open-output row when it wrote the same output.
The reference (no LLM) is left out: precision does not touch it.

    .venv/bin/python bench/precision.py --out /tmp/precision            # all four sets (about 40 min)
    .venv/bin/python bench/precision.py --out /tmp/precision --sets sst2 --report-only
    .venv/bin/python bench/precision.py --out /tmp/precision --skip-existing   # only the runs not yet made
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
COMMON = ["--seed", "0", "--latency-requests", "2", "--volume-per-day", "10000"]
SETS: dict[str, list[str]] = {
    "built-in": ["--max-test", "118", "--shots", "0,5", "--train-sizes", "100"],
    "sst2": [
        *("--data", str(SHARED / "sst2/train.jsonl"), "--test", str(SHARED / "sst2/test.jsonl")),
        *("--max-test", "200", "--shots", "0,5", "--train-sizes", "100"),
    ],
    "trec": [
        *("--data", str(SHARED / "trec/train.jsonl"), "--test", str(SHARED / "trec/test.jsonl")),
        *("--label-names", "auto", "--max-test", "200", "--shots", "0,6", "--train-sizes", "100"),
    ],
    "snips": [
        *("--data", str(SHARED / "snips/train.jsonl"), "--test", str(SHARED / "snips/test.jsonl")),
        *("--label-field", "slots", "--max-test", "60", "--shots", "0,4", "--train-sizes", "100"),
        *("--methods", "zero-shot,few-shot,lora,lora+few-shot", "--epochs", "2"),
    ],
}
BASELINE = "fp32"


def run(name: str, precision: str, out: Path) -> float:
    folder = out / name / precision
    cmd = [sys.executable, "-m", "fewtune", "run", *SETS[name], *COMMON, "--precision", precision]
    start = time.perf_counter()
    subprocess.run([*cmd, "--out", str(folder), "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _complete(folder: Path) -> bool:
    done = folder / "results.json"
    return done.exists() and json.loads(done.read_text(encoding="utf-8")).get("status") == "complete"


def _answers(folder: Path) -> dict[str, dict[int, Any]]:
    found: dict[str, dict[int, Any]] = {}
    for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
        p = json.loads(line)
        if p.get("draw", 0):
            continue  # other demo draws of a prompting row: the row's own draw is compared
        answer = p["predicted"] if "predicted" in p else p["output"]
        found.setdefault(p["name"], {})[p["row"]] = answer
    return found


def _rows(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each row's results (with its primary score and interval from analysis.json), and the verdict."""
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    analysis = json.loads((folder / "analysis.json").read_text(encoding="utf-8"))
    primary = {name: m["primary"] for name, m in analysis["methods"].items()}
    rows = {m["name"]: {**m, "primary": primary[m["name"]]} for m in results["methods"]}
    return rows, analysis["recommendation"]


def compare(out: Path, name: str, variant: str) -> list[dict[str, Any]]:
    a, b = out / name / BASELINE, out / name / variant
    answers_a, answers_b = _answers(a), _answers(b)
    (rows_a, rec_a), (rows_b, rec_b) = _rows(a), _rows(b)
    table = []
    for method, by_row in answers_a.items():
        if method not in answers_b or method not in rows_a or rows_a[method].get("method") == "reference":
            continue
        other = answers_b[method]
        same = sum(by_row[r] == other.get(r) for r in by_row)
        pa, pb = rows_a[method], rows_b[method]
        low, high = pa["primary"]["ci95"]
        table.append(
            {
                "set": name,
                "variant": variant,
                "method": method,
                "rows": len(by_row),
                "agreement": same / len(by_row),
                "fp32": pa["primary"]["value"],
                "fp32_ci95": [low, high],
                "variant_score": pb["primary"]["value"],
                "inside_fp32_ci": low <= pb["primary"]["value"] <= high,
                "precision": [pa.get("precision"), pb.get("precision")],
                "train_precision": pb.get("train_precision", pb.get("precision")),
                "train_s_fp32": pa.get("train_seconds"),
                "train_s_variant": pb.get("train_seconds"),
                "scoring_s_fp32": pa.get("scoring_seconds"),
                "scoring_s_variant": pb.get("scoring_seconds"),
            }
        )
    verdict = {"set": name, "variant": variant, "verdict_fp32": rec_a.get("method") or rec_a["choice"]}
    verdict["verdict_variant"] = rec_b.get("method") or rec_b["choice"]
    return [*table, verdict]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--variants", default="bf16,auto", help="--precision values compared with fp32")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--skip-existing", action="store_true", help="keep runs whose folder is complete")
    args = parser.parse_args()
    names, variants = args.sets.split(","), args.variants.split(",")
    seconds: dict[str, float] = {}
    if not args.report_only:
        for name in names:
            for precision in (BASELINE, *variants):
                if args.skip_existing and _complete(args.out / name / precision):
                    continue
                seconds[f"{name} {precision}"] = run(name, precision, args.out)
                print(f"{name} {precision}: {seconds[f'{name} {precision}']:.0f} s", flush=True)
    results = [line for v in variants for name in names for line in compare(args.out, name, v)]
    head = f"{'set':9} {'vs fp32':7} {'method':40} {'rows':>4} {'agree':>6} {'fp32':>6} {'fp32 95% CI':>13}"
    print(f"{head} {'it':>6}")
    for r in results:
        if "method" in r:
            ci = "{:.3f}-{:.3f}".format(*r["fp32_ci95"])
            print(
                f"{r['set']:9} {r['variant']:7} {r['method']:40} {r['rows']:>4} {r['agreement']:>6.1%} "
                f"{r['fp32']:>6.3f} {ci:>13} {r['variant_score']:>6.3f} "
                f"{'' if r['inside_fp32_ci'] else 'OUT'}"
            )
        else:
            print(f"{r['set']:9} {r['variant']:7} verdict fp32: {r['verdict_fp32']} | {r['verdict_variant']}")
    print(json.dumps({"rows": results, "seconds": seconds}))


if __name__ == "__main__":
    main()
