"""Multi-label's no-LLM reference (one-vs-rest logistic regression on embeddings), and the task on the
shared GoEmotions files (skipped, saying so, where ../shared/datasets is absent)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from task_helpers import fitted_multilabel as fitted
from task_helpers import multilabel_example as example

from fewtune.tasks.base import TaskExample
from fewtune.tasks.multilabel import MULTI_LABEL, MultiLabelTask
from fewtune.tasks.multilabel_reference import FittedMultiLabelReference

GOEMOTIONS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "goemotions" / "train.jsonl"


# -- the reference ----------------------------------------------------------------------------------------

WORDS = ("anger", "joy", "love", "noise")


def fake_embed(texts: Sequence[str]) -> np.ndarray:
    """One fixed direction per word, so a text's labels are its words: learnable by a linear model."""
    out = np.zeros((len(texts), len(WORDS) + 1))
    for i, text in enumerate(texts):
        for word in text.split():
            out[i, WORDS.index(word)] += 1.0
        out[i, -1] = 1.0
    return out


def word_rows(seed: int, rows: int) -> list[TaskExample]:
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(rows):
        labels = [w for w in WORDS[:3] if rng.random() < 0.4] or [str(rng.choice(WORDS[:3]))]
        found.append(example(*labels, "neutral", text=" ".join([*labels, "noise"])))
    return found


def test_reference_learns_separable_labels_and_handles_one_class_labels() -> None:
    task = fitted("anger", "joy", "love", "neutral", "grief")
    model = task.reference(fake_embed, seed=0).fit(word_rows(0, 60))
    test = word_rows(1, 40)
    outputs = model.predict([ex.text for ex in test])
    parsed = [task.parse(o) for o in outputs]
    assert all(p.ok and p.valid for p in parsed)
    metrics = task.aggregate(task.score_rows(test, parsed, outputs), seed=0)
    assert metrics["micro_f1"].value >= 0.95
    # neutral is in every training row, grief in none: constants, always present / never predicted.
    assert all("neutral" in p.value and "grief" not in p.value for p in parsed)
    info = model.describe()
    assert info["classifier"] == "one-vs-rest logistic regression" and info["constant_labels"] == [
        "grief",
        "neutral",
    ]
    assert model.predict([ex.text for ex in test]) == outputs  # deterministic
    assert model.predict([]) == []


def test_reference_gives_a_row_below_every_threshold_its_most_probable_label() -> None:
    model = FittedMultiLabelReference(fake_embed, ("anger", "joy", "love"), [0.1, 0.3, 0.2])
    assert model.predict(["joy", "anger"]) == ["joy", "joy"]
    model = FittedMultiLabelReference(fake_embed, ("anger", "joy"), [0.6, 0.7])
    assert model.predict(["joy"]) == ["anger, joy"]


def test_reference_labels_default_to_the_training_rows_and_need_rows() -> None:
    model = MultiLabelTask().reference(fake_embed).fit(word_rows(2, 30))
    assert model.labels == ("anger", "joy", "love", "neutral")
    with pytest.raises(ValueError, match="at least one training example"):
        MultiLabelTask().reference(fake_embed).fit([])


def test_goemotions_reads_as_the_datasets_readme_describes_it(shared_datasets: Path) -> None:
    """On the shared GoEmotions files (skipped, saying so, where ../shared/datasets is absent): inferred as
    multi-label from its ``labels`` field, 28 labels, about 16% of rows with two or more."""
    from fewtune.tasks.data import infer_target_field, infer_task, prepare_task_data

    train, test = (
        shared_datasets / "goemotions" / "train.jsonl",
        shared_datasets / "goemotions" / "test.jsonl",
    )
    field = infer_target_field(train, "label", "label")
    assert field == "labels"
    assert infer_task(train, field)[0] == MULTI_LABEL
    task = MultiLabelTask()
    data = prepare_task_data(
        task, train, test, input_field="text", target_field=field, max_test=300, test_fraction=0.2, seed=0
    )
    assert len(task.labels) == 28 and "neutral" in task.labels
    summary, _ = task.data_summary(data.pool, data.test)
    assert 0.14 < summary["pool"]["multi_label_share"] < 0.19
    assert sum(summary["test"]["label_counts"].values()) == sum(len(ex.target) for ex in data.test)
    assert len(data.test) == 300
