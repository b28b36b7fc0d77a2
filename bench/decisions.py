"""Decision benchmark: does fewtune's verdict match what an experienced ML engineer would say?

Each scenario is built from ``../shared/datasets`` (never copied into the repo: derived files go to
``--work``), runs ``fewtune run`` as a user would, and compares the verdict with the expert's, which is
written down here before the run. A scenario may also expect methods to be flagged degenerate (or not).

    .venv/bin/python bench/decisions.py                      # every scenario (about 90 min on 2 cores)
    .venv/bin/python bench/decisions.py --only sst2,trec-codes
    .venv/bin/python bench/decisions.py --report-only        # re-decide finished runs with today's rules

Finished runs are kept in ``--work`` and reused (only ``fewtune report`` is re-run), so changing the rules
costs seconds. The last line is one JSON object with every scenario's outcome.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fewtune.results.run_folder import read_analysed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TREC_NAMES = "ABBR=abbreviation,DESC=description,ENTY=entity,HUM=human,LOC=location,NUM=number"


@dataclass
class Scenario:
    name: str
    expert: set[str]
    """Choices an expert would accept, written before the run."""
    why: str
    """The expert's reasoning, in one line, written before the run."""
    data: Callable[[Path], tuple[Path, Path]]
    """Writes (or points at) the pool and test files."""
    args: list[str]
    degenerate: set[str] = field(default_factory=set)
    """Methods the expert expects to be flagged degenerate."""
    not_degenerate: set[str] = field(default_factory=set)
    """Methods the expert expects to do the task."""
    reuse: str | None = None
    """Another scenario whose finished run is copied and re-decided with ``report_args`` (no new run)."""
    report_args: list[str] = field(default_factory=list)
    """Options for ``fewtune report`` (a volume, a price table) on a reused run."""


def shared(name: str) -> Callable[[Path], tuple[Path, Path]]:
    return lambda work: (SHARED / name / "train.jsonl", SHARED / name / "test.jsonl")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def imbalanced(minority_share: float, pool: int, test: int) -> Callable[[Path], tuple[Path, Path]]:
    """sst2 resampled so that "positive" is ``minority_share`` of both pool and test (seeded)."""

    def build(work: Path) -> tuple[Path, Path]:
        rng = random.Random(0)
        out = []
        for split, size in (("train", pool), ("test", test)):
            rows = _read(SHARED / "sst2" / f"{split}.jsonl")
            neg = [r for r in rows if r["label"] == "negative"]
            pos = [r for r in rows if r["label"] == "positive"]
            rng.shuffle(neg)
            rng.shuffle(pos)
            k = round(size * minority_share)
            chosen = neg[: size - k] + pos[:k]
            rng.shuffle(chosen)
            tag = f"{int(100 - 100 * minority_share)}-{int(100 * minority_share)}"
            out.append(
                _write(
                    work / f"sst2-{tag}-{split}.jsonl",
                    [{"text": r["text"], "label": r["label"]} for r in chosen],
                )
            )
        return out[0], out[1]

    return build


def shuffled_labels(work: Path) -> tuple[Path, Path]:
    """sst2 with every label replaced by a seeded random permutation of the labels: nothing to learn."""
    rng = random.Random(0)
    out = []
    for split in ("train", "test"):
        rows = _read(SHARED / "sst2" / f"{split}.jsonl")
        labels = [r["label"] for r in rows]
        rng.shuffle(labels)
        out.append(
            _write(
                work / f"sst2-shuffled-{split}.jsonl",
                [{"text": r["text"], "label": lab} for r, lab in zip(rows, labels, strict=True)],
            )
        )
    return out[0], out[1]


SCENARIOS = [
    Scenario(
        "sst2",
        {"prompt"},
        "balanced binary sentiment the base model already half-knows: 8 demos should land within 5 points "
        "of LoRA(200), so the prompt ships; the embedding classifier is well behind",
        shared("sst2"),
        ["--max-test", "200", "--shots", "0,8", "--train-sizes", "200", "--volume-per-day", "50000"],
    ),
    Scenario(
        "trec-codes",
        {"fine-tune"},
        "six cryptic codes (ABBR, DESC, ...) leave a prompt near chance: a behaviour gap that 200 labelled "
        "examples teach LoRA; a sentence-embedding classifier separates question types less well",
        shared("trec"),
        ["--max-test", "300", "--shots", "0,8", "--train-sizes", "200"],
    ),
    Scenario(
        "trec-names",
        {"fine-tune"},
        "readable label names and nearest demos lift the prompt a lot but not to LoRA(200): fine-tune; "
        "nearest demos beat random ones yet lose to LoRA, so this is no case for retrieval",
        shared("trec"),
        [
            "--max-test",
            "300",
            "--shots",
            "0,8",
            "--demo-selection",
            "random,nearest",
            "--label-names",
            TREC_NAMES,
            "--train-sizes",
            "200",
        ],
    ),
    Scenario(
        "banking77-nearest",
        {"retrieval"},
        "77 fine-grained intents: 8 random demos cannot cover them, 8 retrieved similar examples nearly "
        "always contain the right intent; retrieval is what the prompt needs (no LoRA measured)",
        shared("banking77"),
        [
            "--max-test",
            "200",
            "--methods",
            "few-shot",
            "--shots",
            "8",
            "--demo-selection",
            "random,nearest",
            "--label-names",
            "auto",
        ],
    ),
    Scenario(
        "sst2-95-5",
        {"prompt", "not-good-enough"},
        "5 positives in 100 training rows: LoRA collapses onto 'negative' (flag it, never ship it); the "
        "prompt finds some positives, so ship it only if it clears the bar, else not good enough yet",
        imbalanced(0.05, 2000, 400),
        ["--methods", "few-shot,lora", "--shots", "8", "--train-sizes", "100"],
        degenerate={"lora n=100"},
    ),
    Scenario(
        "sst2-95-5-sampling",
        {"fine-tune"},
        "the same sample with class-balanced batches: the adapter learns the rare class and, on macro-F1, "
        "should clear the prompt by 15+ points",
        imbalanced(0.05, 2000, 400),
        ["--methods", "few-shot,lora", "--shots", "8", "--train-sizes", "100", "--class-balance", "sampling"],
        not_degenerate={"lora n=100"},
    ),
    Scenario(
        "sst2-90-10",
        {"depends", "fine-tune"},
        "imbalanced: decide on macro-F1, where LoRA(200) leads the prompt by less than 15 points and the "
        "embedding classifier collapses onto the majority label (flag it)",
        imbalanced(0.10, 2000, 400),
        ["--methods", "few-shot,lora,reference", "--shots", "8", "--train-sizes", "200"],
        degenerate={"reference n=200"},
    ),
    Scenario(
        "sst2-tiny",
        {"prompt"},
        "8 and 16 training examples cannot beat an 8-shot prompt: ship the prompt",
        shared("sst2"),
        [
            "--max-test",
            "200",
            "--shots",
            "0,8",
            "--train-sizes",
            "8,16",
            "--methods",
            "zero-shot,few-shot,lora",
        ],
    ),
    Scenario(
        "sst2-shuffled",
        {"not-good-enough"},
        "labels are a random permutation: no method can beat chance, and nothing (least of all retrieval or "
        "fine-tuning) should be recommended",
        shuffled_labels,
        ["--max-test", "200", "--shots", "0,8", "--train-sizes", "200"],
    ),
    # The sst2 run again, priced at two other volumes (2026-12-05, issue 33, written before the runs): which
    # option is cheaper over the year changes with the volume, and the verdict must follow the totals.
    Scenario(
        "sst2-1k-per-day",
        {"prompt"},
        "1,000 calls/day: the 8-shot prompt is the cheapest option over a year (no training, no engineering "
        "week) and scores at least as well as the reference and about as well as LoRA: ship the prompt",
        shared("sst2"),
        [],
        reuse="sst2",
        report_args=["--volume-per-day", "1000"],
    ),
    Scenario(
        "sst2-10m-per-day",
        {"fine-tune"},
        "10 million calls/day: every prompt token is paid billions of times, so the short-prompt options "
        "(the reference, LoRA without demos) are far cheaper than 8 demos per call; LoRA scores about as "
        "well as the prompt and well above the reference: fine-tune",
        shared("sst2"),
        [],
        reuse="sst2",
        report_args=["--volume-per-day", "10000000"],
    ),
]


def fewtune(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fewtune", *args], check=True)


def run_scenario(s: Scenario, work: Path, report_only: bool) -> dict:
    out = work / s.name
    results_path = out / "results.json"
    if s.reuse is not None:
        if not (work / s.reuse / "results.json").is_file():
            first = f"--only {s.reuse},{s.name}"
            sys.exit(f"{s.name}: re-prices the {s.reuse} run; run that scenario first ({first})")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(work / s.reuse, out)
    done = results_path.is_file() and json.loads(results_path.read_text())["status"] == "complete"
    if done or report_only:
        fewtune("report", str(out), *s.report_args)
    else:
        pool, test = s.data(work)
        again = ["--overwrite"] if results_path.is_file() else []  # an unfinished earlier run
        fewtune("run", "--data", str(pool), "--test", str(test), *s.args, "--out", str(out), *again)
    results = read_analysed(out)
    rec = results["recommendation"]
    flagged = set(rec.get("degenerate") or {})
    ok = rec["choice"] in s.expert and s.degenerate <= flagged and not (s.not_degenerate & flagged)
    scores = {m["name"]: round(m["primary"]["value"], 3) for m in results["methods"] if m.get("primary")}
    return {
        "scenario": s.name,
        "expert": sorted(s.expert),
        "fewtune": rec["choice"],
        "method": rec["method"],
        "metric": rec["metric"],
        "degenerate": sorted(flagged),
        "agree": ok,
        "settled": rec.get("settled"),
        "headline": rec["headline"],
        "scores": scores,
    }


def _settled(flag: bool | None) -> str:
    return {True: "settled", False: "provisional"}.get(flag, "-") if flag is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/fewtune-decisions"))
    parser.add_argument("--only", default="", help="comma list of scenario names")
    parser.add_argument("--report-only", action="store_true", help="re-decide finished runs only")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED}: not found; the decision bench needs ../shared/datasets")
    args.work.mkdir(parents=True, exist_ok=True)
    only = {n for n in args.only.split(",") if n}
    chosen = [s for s in SCENARIOS if not only or s.name in only]
    outcomes = [run_scenario(s, args.work, args.report_only) for s in chosen]
    print(
        "\n| scenario | expert (before the run) | fewtune | settled | agree | degenerate flagged | "
        "scores (primary) |"
    )
    print("|---|---|---|---|---|---|---|")
    for o in outcomes:
        scores = ", ".join(f"{k} {v}" for k, v in o["scores"].items())
        print(
            f"| {o['scenario']} | {' or '.join(o['expert'])} | {o['fewtune']} ({o['metric']}) | "
            f"{_settled(o['settled'])} | {'yes' if o['agree'] else 'NO'} | "
            f"{', '.join(o['degenerate']) or '-'} | {scores} |"
        )
    print(
        json.dumps({"agree": sum(o["agree"] for o in outcomes), "scenarios": len(outcomes), "rows": outcomes})
    )


if __name__ == "__main__":
    main()
