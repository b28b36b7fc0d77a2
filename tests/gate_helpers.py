"""Run folders for the release tests: results.json and predictions.jsonl in the layout ``fewtune run`` writes,
with per-row predictions chosen by the test (so a gate's inputs are known exactly)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fewtune.cli import commands as cli

HARDWARE = {"platform": "Linux-test", "cpu_count": 2, "device": "cpu", "backend": "tiny"}


@dataclass
class Arm:
    """One method of a synthetic run."""

    name: str
    method: str
    predicted: Sequence[str]
    p95_ms: float = 50.0
    prompt_tokens: float = 100.0
    throughput: float = 20.0


def labelled_rows(classes: dict[str, int], seed: int = 0) -> tuple[list[str], list[str]]:
    """(texts, gold) with ``classes[label]`` rows of each label, shuffled with ``seed``."""
    gold = [label for label, count in classes.items() for _ in range(count)]
    order = np.random.default_rng(seed).permutation(len(gold))
    gold = [gold[i] for i in order]
    return [f"text {i} about {g}" for i, g in enumerate(gold)], gold


def with_accuracy(gold: Sequence[str], labels: Sequence[str], accuracy: float, seed: int) -> list[str]:
    """Predictions right on a seeded ``accuracy`` share of rows, otherwise another label."""
    rng = np.random.default_rng(seed)
    predicted = []
    for g in gold:
        if rng.random() < accuracy:
            predicted.append(g)
        else:
            predicted.append(str(rng.choice([label for label in labels if label != g])))
    return predicted


def per_class(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, dict]:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, n = precision_recall_fscore_support(gold, predicted, labels=list(labels), zero_division=0)
    return {label: {"precision": p[i], "recall": r[i], "f1": f[i], "support": int(n[i])}
            for i, label in enumerate(labels)}  # fmt: skip


def write_run(
    folder: Path,
    texts: Sequence[str],
    gold: Sequence[str],
    arms: Sequence[Arm],
    hardware: dict[str, object] | None = None,
) -> Path:
    """A complete classification run folder with one results row and one prediction line per row per arm."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = sorted(set(gold))
    rows = []
    with (folder / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for arm in arms:
            correct = [p == g for p, g in zip(arm.predicted, gold, strict=True)]
            accuracy = float(np.mean(correct))
            rows.append(
                {
                    "method": arm.method,
                    "name": arm.name,
                    "shots": 8 if "few-shot" in arm.method else 0,
                    "train_examples": 200 if arm.method.startswith("lora") else 0,
                    "accuracy": accuracy,
                    "accuracy_ci95": [max(accuracy - 0.05, 0), min(accuracy + 0.05, 1)],
                    "macro_f1": accuracy,
                    "per_class": per_class(gold, arm.predicted, labels),
                    "latency_ms": {
                        "p50": arm.p95_ms * 0.9,
                        "p95": arm.p95_ms,
                        "mean": arm.p95_ms * 0.9,
                        "requests": 20,
                    },
                    "prompt_tokens_mean": arm.prompt_tokens,
                    "output_tokens_mean": 1.0,
                    "throughput_rows_per_second": arm.throughput,
                    "train_seconds": 60.0 if arm.method.startswith("lora") else None,
                    "label_scoring": "loglik",
                }
            )
            for i, (text, g, p) in enumerate(zip(texts, gold, arm.predicted, strict=True)):
                line = {"method": arm.method, "name": arm.name, "row": i, "text": text, "gold": g,
                        "predicted": p, "correct": p == g}  # fmt: skip
                handle.write(json.dumps(line) + "\n")
    counts = {label: list(gold).count(label) for label in labels}
    results = {
        "schema_version": 2,
        "fewtune_version": "test",
        "task": {"name": "classification"},
        "status": "complete",
        "started_at": f"2026-12-01T00:00:{len(arms):02d}+00:00",
        "model": "tiny",
        "seed": 0,
        "dataset": {"test_size": len(gold), "label_counts": {"test": counts, "pool": counts}},
        "labels": labels,
        "hardware": hardware or HARDWARE,
        "methods": rows,
    }
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return folder


UNSETTLED = {
    "shipped": "few-shot k=8 balanced",
    "other": "lora n=200",
    "lead_points": 7.2,
    "lead_ci95": [1.0, 13.4],
    "rows": 200,
    "rows_to_settle": 460,
    "margin_points": 5.0,
}
# analysis.json's recommendation: settled, provisional, and as a report older than the flag wrote it.
VERDICTS = {
    "settled": {"method": "few-shot k=8 balanced", "settled": True, "unsettled": None},
    "provisional": {"method": "few-shot k=8 balanced", "settled": False, "unsettled": UNSETTLED},
    "old": {"method": "few-shot k=8 balanced"},
}


def write_verdict(folder: Path, recommendation: dict[str, object]) -> Path:
    """An analysis.json holding only ``recommendation``, as the report writes it beside results.json."""
    (folder / "analysis.json").write_text(json.dumps({"recommendation": recommendation}), encoding="utf-8")
    return folder


def fewtune(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", ["fewtune", *args])
    try:
        cli.main()
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0
