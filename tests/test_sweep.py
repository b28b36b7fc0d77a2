"""The prompting rows: shot sweep x demo selection x demo draws, calibration, label names, context checks.

All on the fake backend (a keyword classifier) and the fake embedder (hashed bag of words): milliseconds.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_jsonl
from rich.console import Console
from test_runner import config, fake_factory

from fewtune.backends.fake import FakeBackend
from fewtune.cli.runner import run
from fewtune.config import build_config
from fewtune.data.load import Example
from fewtune.embeddings import FakeEmbedder
from fewtune.errors import ConfigError
from fewtune.prompts.demos import DemoIndex, NearestDemos
from fewtune.prompts.template import PromptTemplate, resolve_label_names
from fewtune.strategies.base import Predictor
from fewtune.tasks.calibration import calibrated


def fake_embedder(cfg: Any, console: Any) -> FakeEmbedder:
    return FakeEmbedder()


def results_and_predictions(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    results = json.loads((folder / "results.json").read_text())
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    return results, [json.loads(line) for line in lines]


def test_shot_sweep_over_selections_draws_and_calibration(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        prompt={
            "shots": [0, 2, 4],
            "demo_selection": ["random", "balanced", "nearest"],
            "demo_seeds": 3,
            "calibrate": True,
        },
    )
    folder = run(cfg, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    results, predictions = results_and_predictions(folder)
    per_k = [
        "few-shot k={k} random",
        "few-shot k={k} random calibrated",
        "few-shot k={k} balanced",
        "few-shot k={k} balanced calibrated",
        "few-shot k={k} nearest",  # per-row demos: no single demo set to calibrate
    ]
    expected = ["zero-shot", "zero-shot calibrated"] + [n.format(k=k) for k in (2, 4) for n in per_k]
    rows = {m["name"]: m for m in results["methods"]}
    assert [m["name"] for m in results["methods"]] == expected
    assert {m["method"] for m in results["methods"]} == {"zero-shot", "few-shot"}
    drawn = rows["few-shot k=4 balanced"]
    assert drawn["demo_seeds"] == [0, 1, 2] and len(drawn["accuracy_draws"]) == 3
    assert drawn["accuracy_std"] is not None and drawn["demo_seed"] == 0
    assert drawn["accuracy"] == drawn["accuracy_draws"][0]  # the row's metrics are the first draw's
    assert rows["few-shot k=4 balanced calibrated"]["calibrated"] is True
    assert set(rows["few-shot k=4 balanced calibrated"]["label_bias"]) == {"bad", "good", "meh"}
    nearest = rows["few-shot k=4 nearest"]
    assert nearest["demo_selection"] == "nearest" and nearest["accuracy_std"] is None
    assert nearest["demos"] == [] and nearest["shots"] == 4
    assert nearest["latency_ms"]["requests"] == 3
    # Every draw's predictions are kept; each name has one prediction per test row (the paired tests).
    counts = Counter(p["name"] for p in predictions)
    assert set(counts.values()) == {16}
    assert {"few-shot k=2 random seed=1", "few-shot k=2 random seed=2"} <= set(counts)
    # Two extra draws for each of 8 drawn rows (2 k x 2 fixed selections x calibrated or not).
    assert len(counts) == len(expected) + 2 * 8
    shots = results["curves"]["shots"]
    assert list(dict.fromkeys(p["strategy"] for p in shots)) == [
        "random",
        "random calibrated",
        "balanced",
        "balanced calibrated",
        "nearest",
    ]
    assert [p["k"] for p in shots if p["strategy"] == "nearest"] == [0, 2, 4]
    assert (folder / "report-shots.png").is_file() and not (folder / "report-train.png").exists()
    assert "Learning curves" in (folder / "report.md").read_text()


POOL = [Example(f"{word} thing {i}", word) for i in range(6) for word in ("good", "bad", "meh")]


def test_nearest_demos_are_the_most_similar_pool_rows_most_similar_last() -> None:
    embedder = FakeEmbedder(dim=4096)  # wide enough that no two of these words share a bucket
    index = DemoIndex.build(POOL, embedder)
    first, second = NearestDemos(index, 3).for_texts(["bad bad luck", "good thing 4"])
    assert {d.label for d in first} == {"bad"}
    assert second[-1].text == "good thing 4" and all(d.label == "good" for d in second)
    calls = embedder.calls
    index.nearest(["bad"], 2)
    assert embedder.calls == calls + 1  # a query is embedded per call; the pool is not re-embedded


def test_nearest_prompts_share_only_the_header_with_each_other() -> None:
    index = DemoIndex.build(POOL, FakeEmbedder())
    template = PromptTemplate(("bad", "good", "meh"))
    predictor = Predictor(
        "few-shot", FakeBackend(), template, demo_selection="nearest", per_row_demos=NearestDemos(index, 2)
    )
    prompts = predictor.prompts(["good day", "bad day"])
    assert prompts[0] != prompts[1]
    assert all(p.startswith(predictor.shared_prefix()) for p in prompts)
    assert predictor.name == "few-shot k=2 nearest" and predictor.shots == 2


class FirstLabelBias(FakeBackend):
    """The keyword model with a strong pull towards the first label, whatever the input."""

    def score_choices(self, prompts, choices, batch_size=8, progress=None, prefix=""):  # type: ignore[no-untyped-def]
        scores = super().score_choices(prompts, choices, batch_size, progress, prefix)
        scores[:, 0] += 2.0
        return scores


def test_contextual_calibration_removes_a_label_bias() -> None:
    template = PromptTemplate(("bad", "good", "meh"))
    predictor = Predictor("few-shot", FirstLabelBias(), template, demos=tuple(POOL[:3]))
    texts = ["so good", "very meh", "bad one"]
    assert predictor.predict(texts) == ["bad", "bad", "bad"]
    fixed = calibrated(predictor)
    assert fixed.calibrated and fixed.name == "few-shot k=3 calibrated"
    assert fixed.predict(texts) == ["good", "meh", "bad"]
    assert np.exp(np.asarray(fixed.label_bias)).sum() == pytest.approx(1.0)


def test_label_names_are_what_the_model_sees_and_results_keep_the_codes(tmp_path: Path) -> None:
    words = {"G": "good", "B": "bad", "M": "meh"}
    rows = [{"text": f"this is {w} no {i}", "label": code} for i in range(10) for code, w in words.items()]
    test = [{"text": f"quite {w} indeed {i}", "label": code} for i in range(4) for code, w in words.items()]
    pool, test_file = write_jsonl(tmp_path / "pool.jsonl", rows), write_jsonl(tmp_path / "test.jsonl", test)
    accuracies = {}
    for names in (None, {"G": "good", "B": "bad", "M": "meh"}):
        cfg = build_config(
            None,
            {
                "run": {"out": str(tmp_path / f"run-{bool(names)}")},
                "data": {"data": str(pool), "test": str(test_file)},
                "eval": {"methods": ["zero-shot", "few-shot"], "latency_requests": 1},
                "prompt": {"shots": [0, 3], "label_names": names},
            },
        )
        folder = run(cfg, Console(quiet=True), fake_factory(FakeBackend()))
        results, predictions = results_and_predictions(folder)
        accuracies[bool(names)] = results["methods"][0]["accuracy"]
        assert {p["predicted"] for p in predictions} <= set(words) and results["labels"] == ["B", "G", "M"]
        demo_labels = {d["label"] for d in results["methods"][1]["demos"]}
        assert demo_labels <= set(words)
    assert accuracies == {False: pytest.approx(1 / 3), True: 1.0}  # the keyword model reads names, not codes
    assert results["label_names"] == {"B": "bad", "G": "good", "M": "meh"}


def test_template_shows_names_in_the_label_list_demos_and_continuation() -> None:
    template = PromptTemplate(("DESC", "NUM"), names={"DESC": "description", "NUM": "number"})
    text = template.render("how many ?", [Example("what is x ?", "DESC")])
    assert "Labels: description, number\n" in text and "Output: description\n" in text
    assert template.continuation("NUM") == " number" and "DESC" not in text


LABEL_NAME_CASES = [
    # (names, resolved or error fragment)
    (None, {}),
    ({"DESC": "description"}, {"DESC": "description"}),
    ({"DESC": "DESC"}, {}),
    ("auto", {"card_arrival": "card arrival"}),
    ({"FOO": "foo"}, "FOO is not a label of the data"),
    ({"DESC": "number"}, "two labels would be shown as 'number'"),
    ("fancy", "takes CODE=name pairs or 'auto'"),
]


@pytest.mark.parametrize("names, expected", LABEL_NAME_CASES)
def test_label_names_are_checked_against_the_labels(names: Any, expected: Any) -> None:
    labels = ["DESC", "number", "card_arrival"]
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            resolve_label_names(labels, names)
    else:
        assert resolve_label_names(labels, names) == expected


class ShortContext(FakeBackend):
    def __init__(self, context_length: int) -> None:
        super().__init__()
        self.limit = context_length

    @property
    def context_length(self) -> int | None:
        return self.limit


@pytest.mark.parametrize(
    "context_length, shots, message",
    [
        (60, [0, 1], None),
        (60, [0, 8], r"--shots 8 does not fit the model's context: few-shot k=8 balanced's longest prompt"),
        (30, [0, 2, 4], r"use --shots [01] or fewer"),
    ],
)
def test_shot_counts_whose_prompts_overflow_the_context_are_refused(
    tmp_path: Path, context_length: int, shots: list[int], message: str | None
) -> None:
    cfg = config(tmp_path, prompt={"shots": shots})
    backend = ShortContext(context_length)
    if message is None:
        run(cfg, Console(quiet=True), fake_factory(backend))
        return
    with pytest.raises(ConfigError, match=message):
        run(cfg, Console(quiet=True), fake_factory(backend))
    assert json.loads((tmp_path / "run" / "results.json").read_text())["methods"] == []  # refused up front


def test_long_prompts_on_cpu_are_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fewtune.run.sweep.CPU_LONG_PROMPT_TOKENS", 40)
    folder = run(config(tmp_path, prompt={"shots": [0, 4]}), Console(quiet=True), fake_factory(FakeBackend()))
    results = json.loads((folder / "results.json").read_text())
    assert any("few-shot k=4 balanced: prompts up to" in w for w in results["warnings"])
    assert "Run warnings" in (folder / "report.md").read_text()


PROMPT_CONFIG_CASES = [
    # (prompt section, expected selections or error fragment)
    ({"demo_selection": "random,nearest"}, ["random", "nearest"]),
    ({"demo_selection": "balanced"}, ["balanced"]),  # config.yaml files from before selections were lists
    ({"demo_selection": ["nearest", "nearest"]}, ["nearest"]),
    ({"demo_selection": ["best"]}, "--demo-selection takes one or more of balanced, random, nearest"),
    ({"demo_seeds": 0}, "--demo-seeds must be at least 1"),
    ({"label_names": "fancy"}, "--label-names takes CODE=name pairs"),
    ({"label_names": {"DESC": " "}}, "non-empty name"),
]


@pytest.mark.parametrize("prompt, expected", PROMPT_CONFIG_CASES)
def test_prompt_settings_are_validated(prompt: dict[str, Any], expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            build_config(None, {"prompt": prompt})
    else:
        assert build_config(None, {"prompt": prompt}).prompt.demo_selection == expected


def test_yaml_label_codes_read_as_numbers_become_text() -> None:
    cfg = build_config({"prompt": {"label_names": {0: "negative", 1: "positive"}}}, {})
    assert cfg.prompt.label_names == {"0": "negative", "1": "positive"}


@pytest.mark.parametrize(
    "methods, selection",
    [(["zero-shot", "few-shot"], ["balanced", "random"]), (["zero-shot", "few-shot"], ["nearest"])],
)
def test_the_embedder_loads_once_per_run_for_the_data_checks(
    tmp_path: Path, methods: list[str], selection: list[str]
) -> None:
    loads = []

    def counting(cfg: Any, console: Any) -> FakeEmbedder:
        loads.append(1)
        return FakeEmbedder()

    cfg = config(tmp_path, eval={"methods": methods}, prompt={"shots": [0, 2], "demo_selection": selection})
    folder = run(cfg, Console(quiet=True), fake_factory(FakeBackend()), counting)
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "complete" and len(loads) == 1
    assert "checks" in results["dataset"]
