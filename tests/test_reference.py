"""The no-LLM reference row (sentence embeddings + logistic regression) and how the report treats it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from test_runner import config, fake_factory
from test_sweep import fake_embedder

from fewtune.backends.fake import FakeBackend
from fewtune.cli.runner import run
from fewtune.config import CostArgs
from fewtune.data.load import Example
from fewtune.embeddings import FakeEmbedder
from fewtune.report.build import write_reports
from fewtune.results.run_folder import read_analysed
from fewtune.run.evaluate import evaluate
from fewtune.run.label_answers import ReferenceLabels
from fewtune.strategies.reference import UNSEEN_LABEL_LOG_PROB, EmbeddingReference

TRAIN = [Example(f"{word} thing {i}", word) for i in range(5) for word in ("good", "bad")]
TEST = [Example(f"so {word} {i}", word) for i in range(3) for word in ("good", "bad", "meh")]


def test_reference_scores_every_label_and_cannot_predict_unseen_ones() -> None:
    model = EmbeddingReference(FakeEmbedder(dim=4096), ("bad", "good", "meh")).fit(TRAIN)
    row, predictions = evaluate(ReferenceLabels(model), TEST, latency_requests=2)
    assert row["method"] == "reference" and row["name"] == "reference n=10"
    assert row["train_examples"] == 10 and row["train_seconds"] > 0 and row["latency_ms"]["requests"] == 2
    assert row["prompt_tokens_mean"] is None and row["throughput_rows_per_second"] > 0
    assert row["accuracy"] == pytest.approx(6 / 9)  # right on good and bad; meh was never trained on
    assert all(p["scores"]["meh"] == pytest.approx(UNSEEN_LABEL_LOG_PROB) for p in predictions)
    probs = np.exp([list(p["scores"].values()) for p in predictions])
    assert probs.sum(axis=1) == pytest.approx(np.ones(len(TEST)), abs=1e-6)


def test_reference_needs_two_labels() -> None:
    with pytest.raises(ValueError, match="at least two labels"):
        EmbeddingReference(FakeEmbedder(), ("good",)).fit(TRAIN[::2])


def test_reference_rows_are_candidates_compared_on_the_same_rows(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        eval={"methods": ["zero-shot", "few-shot", "reference"], "latency_requests": 2},
        prompt={"shots": [0, 5]},
        lora={"train_sizes": [6, 30]},
    )
    folder = run(cfg, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    results = read_analysed(folder)
    names = [m["name"] for m in results["methods"]]
    assert names == ["zero-shot", "few-shot k=5 balanced", "reference n=6", "reference n=30"]
    assert [p["n"] for p in results["curves"]["reference"]] == [6, 30]
    assert results["curves"]["crossover"] is None  # no LoRA size measured
    rec = results["recommendation"]
    # The best reference is a candidate like the others: weighed against the cheaper prompt by total cost
    # and score (every row scores 1.000 on the fake backend, so the cheapest prompt row, whichever the
    # measured throughput makes it, ships without a test), and any paired test it takes part in is on the
    # run's test rows.
    costs = {m["name"]: m["costs"]["total_at_horizon"] for m in results["methods"]}
    cheapest = min(("zero-shot", "few-shot k=5 balanced"), key=costs.__getitem__)
    assert costs[cheapest] < min(costs["reference n=6"], costs["reference n=30"])
    assert (rec["choice"], rec["method"], rec["settled"]) == ("prompt", cheapest, True)
    # Both sizes score 1.000 too: the cheaper one (6 labelled rows) stands for the reference.
    assert f"{cheapest} costs less than reference n=6" in rec["reasons"][0]
    assert "no test needed" in rec["reasons"][0]
    against = [c for c in rec["comparisons"] if "reference" in c["baseline"] + c["candidate"]]
    assert all(c["rows"] == results["dataset"]["test_size"] for c in against)
    assert (folder / "report-train.png").is_file() and (folder / "report-shots.png").is_file()
    # On a hosted API the reference has no tokens to price: it is priced on the run's own hardware.
    report, _ = write_reports(folder, CostArgs(costs="hosted-api"))
    assert report.costs["reference n=30"].per_request > 0
    assert "measured in batches" in report.costs["reference n=30"].basis
