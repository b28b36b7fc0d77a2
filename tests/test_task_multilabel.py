"""Multi-label: targets, rendering, parsing, scores against scikit-learn and the task's hooks (its reference
and the shared GoEmotions files: test_multilabel_reference.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)
from sklearn.preprocessing import MultiLabelBinarizer
from task_helpers import fitted_multilabel as fitted
from task_helpers import multilabel_example as example

from fewtune.errors import ConfigError, DataError
from fewtune.tasks.base import Parsed, TaskExample
from fewtune.tasks.multilabel import (
    METRIC_CHOICES,
    MULTI_LABEL,
    MultiLabelTask,
    is_multi_label_value,
)

WHERE = Path("rows.jsonl")
GOEMOTIONS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "goemotions" / "train.jsonl"


EMOTIONS = ("anger", "joy", "love", "neutral", "thank you")

# -- targets ----------------------------------------------------------------------------------------------

GOOD_TARGETS = [
    (["refund", "billing"], ("refund", "billing"), "billing, refund"),
    ([" joy ", "anger", "joy"], ("joy", "anger"), "anger, joy"),
    (["neutral"], ("neutral",), "neutral"),
]


@pytest.mark.parametrize(("value", "target", "label"), GOOD_TARGETS)
def test_read_target_strips_dedupes_and_renders_sorted(value: Any, target: Any, label: str) -> None:
    ex = MultiLabelTask().read_target(value, {}, WHERE, 3, "labels")
    assert (ex.target, ex.label, ex.line, ex.path) == (target, label, 3, str(WHERE))


BAD_TARGETS = [
    ("billing", "must be a list of labels"),
    (None, "must be a list of labels"),
    ({"billing": 1}, "must be a list of labels"),
    ([], "empty list"),
    (["ok", 3], "item 1 must be text"),
    ([["billing"]], "item 0 must be text"),
    (["ok", "  "], "item 1 is empty"),
    (["billing, refund"], "comma"),
    (["a;b"], "comma, semicolon"),
]


@pytest.mark.parametrize(("value", "message"), BAD_TARGETS)
def test_read_target_rejects_a_bad_value_naming_file_line_and_field(value: Any, message: str) -> None:
    with pytest.raises(DataError) as err:
        MultiLabelTask().read_target(value, {}, WHERE, 7, "labels")
    text = str(err.value)
    assert text.startswith("rows.jsonl:7: ") and "'labels'" in text and message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [(["a"], True), (["a", "b"], True), ([], False), ("a", False), ([1], False), ([{"slot": "x"}], False)],
)
def test_is_multi_label_value(value: Any, expected: bool) -> None:
    assert is_multi_label_value(value) is expected


def test_fit_learns_the_sorted_label_set_and_rendering_is_canonical() -> None:
    task = MultiLabelTask()
    pool = [task.read_target(v, {}, WHERE, i) for i, v in enumerate([["joy", "anger"], ["love"], ["joy"]])]
    task.fit(pool)
    assert task.labels == ["anger", "joy", "love"]
    assert [task.rerender(ex).label for ex in pool] == ["anger, joy", "love", "joy"]
    assert task.describe() == {"name": MULTI_LABEL, "primary_metric": "micro-f1", "labels": task.labels}


def test_output_format_lists_the_labels_and_the_output_is_one_line() -> None:
    task = fitted("joy", "anger")
    assert task.output_format() == "Answer with one or more of these labels, separated by commas: anger, joy."
    assert MultiLabelTask().output_format() == "Answer with one or more labels, separated by commas."
    assert task.stop == "\n" and task.name == MULTI_LABEL and "every label" in task.default_instruction


# -- parsing ----------------------------------------------------------------------------------------------

PARSE_CASES = [
    ("anger, joy", ("anger", "joy"), True, True),
    ("Joy,ANGER", ("anger", "joy"), True, True),
    ("  joy ;  anger\nlove", ("anger", "joy", "love"), True, True),
    ("thank_you, Thank  You", ("thank you",), True, False),  # the same label twice
    ("joy, joy", ("joy",), True, False),
    ("joy, banana", ("joy",), True, False),
    ("[anger, joy].", ("anger", "joy"), True, False),  # readable, but not the format
    ("joy,", ("joy",), True, True),
    ("", None, False, False),
    ("none", None, False, False),
    ("banana, kiwi", None, False, False),
]


@pytest.mark.parametrize(("text", "value", "ok", "valid"), PARSE_CASES)
def test_parse(text: str, value: Any, ok: bool, valid: bool) -> None:
    assert fitted(*EMOTIONS).parse(text) == Parsed(value, ok=ok, valid=valid)


# -- scores against scikit-learn --------------------------------------------------------------------------


def random_run(seed: int, rows: int = 80) -> tuple[MultiLabelTask, list[TaskExample], list[Parsed]]:
    """Random gold sets over five labels plus one test-only label; outputs are random lists of six labels
    (one never gold, so macro-F1 must leave it out), some unparseable."""
    rng = np.random.default_rng(seed)
    labels = ["a", "b", "c", "d", "e"]
    task = fitted(*labels, "f")
    examples, parsed = [], []
    for _ in range(rows):
        gold = [x for x in [*labels, "unseen"] if rng.random() < 0.3] or [str(rng.choice(labels))]
        examples.append(example(*gold))
        chance = 0.2 if rng.random() < 0.5 else 0.6  # more false positives on some rows than misses
        output = (
            ", ".join(x for x in [*labels, "f"] if rng.random() < chance) if rng.random() > 0.1 else "junk"
        )
        parsed.append(task.parse(output))
    return task, examples, parsed


def sklearn_metrics(examples: Sequence[TaskExample], parsed: Sequence[Parsed]) -> dict[str, float]:
    gold = [set(ex.target) for ex in examples]
    predicted = [set(p.value) if p.ok else set() for p in parsed]
    binarizer = MultiLabelBinarizer(classes=sorted(set().union(*gold, *predicted, "abcdef")))
    y_true, y_pred = binarizer.fit_transform(gold), binarizer.transform(predicted)
    present = [i for i in range(y_true.shape[1]) if y_true[:, i].any()]
    return {
        "micro_f1": f1_score(y_true, y_pred, average="micro", zero_division=0),
        "micro_precision": precision_score(y_true, y_pred, average="micro", zero_division=0),
        "micro_recall": recall_score(y_true, y_pred, average="micro", zero_division=0),
        "macro_f1": f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0),
        "example_f1": f1_score(y_true, y_pred, average="samples", zero_division=0),
        "hamming_loss": hamming_loss(y_true, y_pred),
        "exact_match": accuracy_score(y_true, y_pred),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aggregate_matches_sklearn_on_random_multi_label_data(seed: int) -> None:
    task, examples, parsed = random_run(seed)
    metrics = task.aggregate(task.score_rows(examples, parsed, [""] * len(examples)), seed=seed)
    for name, expected in sklearn_metrics(examples, parsed).items():
        assert metrics[name].value == pytest.approx(expected), name
        low, high = metrics[name].ci95
        assert low <= metrics[name].value <= high, name
    assert metrics["parse_rate"].value == pytest.approx(np.mean([p.ok for p in parsed]))
    assert metrics["valid_rate"].value == pytest.approx(np.mean([p.valid for p in parsed]))


def test_per_label_matches_sklearn() -> None:
    task, examples, parsed = random_run(4)
    table = task.per_label(task.score_rows(examples, parsed, [""] * len(examples)))
    gold = [set(ex.target) for ex in examples]
    predicted = [set(p.value) if p.ok else set() for p in parsed]
    classes = sorted(table)
    binarizer = MultiLabelBinarizer(classes=classes)
    p, r, f, support = precision_recall_fscore_support(
        binarizer.fit_transform(gold), binarizer.transform(predicted), zero_division=0
    )
    assert classes == ["a", "b", "c", "d", "e", "f", "unseen"]
    for i, label in enumerate(classes):
        got = table[label]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p[i], r[i], f[i])), label
        assert got["support"] == support[i]


def test_rows_are_json_floats_with_sparse_per_label_counts() -> None:
    task = fitted(*EMOTIONS)
    rows = task.score_rows([example("anger", "joy")], [task.parse("joy, love, neutral")], [""])
    assert rows == [
        {
            "tp": 1.0,
            "fp": 2.0,
            "fn": 1.0,
            "exact": 0.0,
            "hamming": 3 / 5,
            "example_f1": 0.4,
            "parsed": 1.0,
            "valid": 1.0,
            "tp:joy": 1.0,
            "fp:love": 1.0,
            "fp:neutral": 1.0,
            "fn:anger": 1.0,
        }
    ]
    assert json.loads(json.dumps(rows)) == rows
    assert json.loads(json.dumps(task.parse("joy, love").value)) == ["joy", "love"]


@pytest.mark.parametrize("metric", [None, *METRIC_CHOICES])
def test_primary_metric_from_stats_equals_the_aggregate(metric: str | None) -> None:
    task, examples, parsed = random_run(5)
    task = MultiLabelTask(metric)
    task.fit([example(x) for x in "abcdef"])
    rows = task.score_rows(examples, parsed, [""] * len(examples))
    stats = task.primary_stats(rows)
    assert stats.shape == (len(rows), 4 + 3 * 7)  # six pool labels and the test-only one
    column = (metric or "micro-f1").replace("-", "_")
    assert task.primary.name == (metric or "micro-f1")
    assert task.primary.value(stats) == pytest.approx(task.aggregate(rows, seed=0)[column].value)
    # A resample of rows gives the metric of those rows: what a paired bootstrap relies on.
    pick = np.arange(0, len(rows), 3)
    assert task.primary.value(stats[pick]) == pytest.approx(
        task.aggregate([rows[i] for i in pick], seed=0)[column].value
    )


def test_an_unknown_metric_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^--metric for multi-label takes micro-f1, macro-f1, example-f1$"):
        MultiLabelTask("accuracy")


def test_no_rows_aggregate_to_nan() -> None:
    metrics = fitted("a").aggregate([], seed=0)
    assert all(math.isnan(m.value) and all(math.isnan(v) for v in m.ci95) for m in metrics.values())


# -- hooks ------------------------------------------------------------------------------------------------


def test_baseline_output_is_the_most_frequent_label_set_ties_by_text() -> None:
    pool = [example("joy", "anger"), example("anger", "joy"), example("neutral"), example("neutral")]
    assert MultiLabelTask().baseline_output(pool) == "anger, joy"
    assert MultiLabelTask().baseline_output([*pool, example("neutral")]) == "neutral"


def varied_gold(rows: int = 40) -> list[TaskExample]:
    return [example(EMOTIONS[i % 4]) for i in range(rows)]


DEGENERATE_CASES = [
    ("constant", ["neutral"] * 40, "predicts 'neutral' for 100%"),
    ("constant pair", ["anger, joy"] * 39 + ["joy"], "predicts 'anger, joy' for 98%"),
    ("rarely parsed", ["joy"] * 15 + ["???"] * 25, "names a known label in only 38%"),
    ("varied", [EMOTIONS[i % 4] for i in range(40)], None),
    ("mostly one, some noise", ["neutral"] * 36 + ["joy", "anger", "love", "joy"], None),
    ("half parsed, varied", [EMOTIONS[i % 4] for i in range(20)] + ["???"] * 20, None),
]


@pytest.mark.parametrize(("case", "outputs", "reason"), DEGENERATE_CASES)
def test_degenerate(case: str, outputs: list[str], reason: str | None) -> None:
    task = fitted(*EMOTIONS)
    found = task.degenerate(varied_gold(), [task.parse(o) for o in outputs])
    assert found == reason if reason is None else (found or "").startswith(reason), case


def test_a_constant_output_is_not_degenerate_when_the_gold_is_constant_too() -> None:
    task = fitted(*EMOTIONS)
    assert task.degenerate([example("joy")] * 20, [task.parse("joy")] * 20) is None


def test_data_summary_counts_and_warnings() -> None:
    pool = (
        [example("joy")] * 12 + [example("joy", "anger")] * 3 + [example("Thank_you"), example("thank you")]
    )
    test = [example("joy"), example("joy", "grief", "love")]
    summary, warnings = MultiLabelTask().data_summary(pool, test)
    assert summary["pool"] == {
        "rows": 17,
        "label_counts": {"joy": 15, "anger": 3, "Thank_you": 1, "thank you": 1},
        "labels_per_row": {"1": 14, "2": 3},
        "multi_label_share": 3 / 17,
        "mean_labels_per_row": 20 / 17,
    }
    assert summary["test"]["labels_per_row"] == {"1": 1, "3": 1}
    assert summary["test"]["mean_labels_per_row"] == 2.0
    rare, unseen, clash = warnings
    assert "3 label(s) have fewer than 10 pool rows (Thank_you 1, thank you 1, anger 3)" in rare
    assert "absent from the pool (grief, love)" in unseen
    assert "Thank_you / thank you" in clash
    assert MultiLabelTask().data_summary([example("joy")] * 10, [example("joy")])[1] == []


def test_stratum_is_the_rarest_label_counted_while_reading_then_in_the_pool() -> None:
    task = MultiLabelTask()
    rows = [task.read_target(v, {}, WHERE, 1) for v in [["joy"], ["joy"], ["joy", "grief"], ["anger"]]]
    assert [task.stratum(ex) for ex in rows] == ["joy", "joy", "grief", "anger"]
    task.fit(rows[:2] + [example("grief")] * 5 + rows[2:])  # grief is now common, joy rarer
    assert task.stratum(rows[2]) == "joy"
    assert task.stratum(example("unseen", "joy")) == "unseen"


@pytest.mark.skipif(not GOEMOTIONS.exists(), reason="the shared datasets are not here")
def test_goemotions_reads_and_summarises_as_its_readme_says() -> None:
    from fewtune.tasks.data import load_task_examples

    task = MultiLabelTask()
    pool = load_task_examples(GOEMOTIONS, task, target_field="labels")
    task.fit(pool)
    summary, _ = task.data_summary(pool, pool[:10])
    assert len(task.labels) == 28 and "neutral" in task.labels
    assert summary["pool"]["multi_label_share"] == pytest.approx(0.16, abs=0.01)
    assert task.baseline_output(pool) == "neutral"
    assert all(task.parse(ex.label) == Parsed(tuple(sorted(ex.target)), True, True) for ex in pool)
