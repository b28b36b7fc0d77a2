"""Demo-trained adapters: one demo block per training batch (``--demo-draw batch``, the default) against a
draw per training row (``--demo-draw row``, the recipe before it), on the same seeded runs.

For each data set, ``fewtune run`` with ``--demo-draw row`` beside the batch run that bench/precision.py
made at the same settings and precision (``--batch-runs``; or it makes it), then prints the lora+few-shot
row's accuracy with its interval under each draw, the paired difference on the same test rows, and its
training time against the plain lora row's of the same run.

    .venv/bin/python bench/demo_block.py --out /tmp/demo-block --batch-runs /tmp/precision --precision bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import COMMON, SETS

from fewtune.metrics import mcnemar, paired_bootstrap_diff

DRAWS = ("batch", "row")


def run(name: str, draw: str, precision: str, folder: Path) -> None:
    done = folder / "results.json"
    if done.exists() and json.loads(done.read_text(encoding="utf-8"))["status"] == "complete":
        return
    cmd = [sys.executable, "-m", "fewtune", "run", *SETS[name], *COMMON, "--precision", precision]
    cmd += ["--demo-draw", draw, "--out", str(folder), "--overwrite"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _rows(folder: Path) -> dict[str, dict[str, Any]]:
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    return {m["method"]: m for m in results["methods"] if m["method"] in ("lora", "lora+few-shot")}


def _correct(folder: Path, name: str) -> list[bool]:
    lines = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    mine = sorted((p for p in lines if p["name"] == name and not p.get("draw")), key=lambda p: p["row"])
    return [bool(p["correct"]) for p in mine]


def compare(name: str, folders: dict[str, Path]) -> dict[str, Any]:
    rows = {draw: _rows(folder) for draw, folder in folders.items()}
    kshot = {draw: rows[draw]["lora+few-shot"] for draw in DRAWS}
    correct = {draw: _correct(folders[draw], kshot[draw]["name"]) for draw in DRAWS}
    a, b = correct["batch"], correct["row"]
    diff = {
        "points": 100 * (sum(a) - sum(b)) / len(a),
        "ci95_points": [100 * x for x in paired_bootstrap_diff(a, b)],
        "mcnemar_p": mcnemar(a, b)["p_value"],
    }
    line: dict[str, Any] = {"set": name, "paired_difference": diff}
    for draw in DRAWS:
        plain = rows[draw]["lora"]["train_seconds"]
        line[draw] = {
            "accuracy": kshot[draw]["accuracy"],
            "ci95": kshot[draw]["accuracy_ci95"],
            "train_s": kshot[draw]["train_seconds"],
            "plain_train_s": plain,
            "ratio_to_plain": kshot[draw]["train_seconds"] / plain,
            "block_steps": kshot[draw].get("demo_block_steps"),
            "train_steps": kshot[draw].get("train_steps"),
        }
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-runs", type=Path, help="bench/precision.py's --out (its PRECISION runs)")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--sets", default="built-in,sst2,trec")
    args = parser.parse_args()
    lines = []
    for name in args.sets.split(","):
        batch = (args.batch_runs or args.out) / name / (args.precision if args.batch_runs else "batch")
        folders = {"batch": batch, "row": args.out / name / "row"}
        for draw, folder in folders.items():
            run(name, draw, args.precision, folder)
        lines.append(compare(name, folders))
    print(f"{'set':9} {'draw':5} {'accuracy':>8} {'95% CI':>13} {'train s':>8} {'plain s':>8} {'ratio':>6}")
    for line in lines:
        for draw in DRAWS:
            d = line[draw]
            ci = "{:.3f}-{:.3f}".format(*d["ci95"])
            print(
                f"{line['set']:9} {draw:5} {d['accuracy']:>8.3f} {ci:>13} {d['train_s']:>8.0f} "
                f"{d['plain_train_s']:>8.0f} {d['ratio_to_plain']:>5.2f}x"
            )
        d = line["paired_difference"]
        low, high = d["ci95_points"]
        print(
            f"{line['set']:9} batch - row: {d['points']:+.1f} points ({low:+.1f} to {high:+.1f}), "
            f"McNemar p={d['mcnemar_p']:.3f}"
        )
    print(json.dumps(lines, default=str))


if __name__ == "__main__":
    main()
