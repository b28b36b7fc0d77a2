"""Generation: targets with references, per-row scores and their aggregates."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_jsonl
from task_helpers import (  # noqa: F401 (one_torch_thread is an autouse fixture)
    WHERE,
    assert_names_file_and_line,
    extraction_example,
    extraction_rows,
    generation_example,
    one_torch_thread,
)

from fewtune.embeddings import FakeEmbedder
from fewtune.errors import DataError, FewtuneError
from fewtune.tasks.base import Parsed
from fewtune.tasks.data import load_task_examples
from fewtune.tasks.generation import GenerationTask

# -- generation -------------------------------------------------------------------------------------------


def test_generation_target_is_its_own_single_reference() -> None:
    example = GenerationTask().read_target("  A short answer. ", {"label": "x"}, WHERE, 2)
    assert (example.label, example.target, example.references) == (
        "A short answer.",
        "A short answer.",
        ("A short answer.",),
    )
    assert example.fields is None


def test_generation_reads_references_and_fields() -> None:
    record = {"references": ["First ref.", "Second ref."], "fields": {"name": "The Eagle", "stars": 5}}
    example = GenerationTask().read_target("First ref.", record, WHERE, 3)
    assert example.references == ("First ref.", "Second ref.")
    assert example.label == "First ref."
    assert example.fields == {"name": "The Eagle", "stars": "5"}


def test_generation_target_leads_its_references_without_a_duplicate() -> None:
    task = GenerationTask()
    record = {"references": ["Other one.", "The target.", "A third."]}
    example = task.read_target(" The target. ", record, WHERE, 3)
    assert (example.label, example.target) == ("The target.", "The target.")
    assert example.references == ("The target.", "Other one.", "A third.")
    apart = task.read_target("The target.", {"references": ["Other one."]}, WHERE, 4)
    assert (apart.label, apart.references) == ("The target.", ("The target.", "Other one."))
    alone = task.read_target("The target.", {"references": ["  The target.  "]}, WHERE, 5)
    assert alone.references == ("The target.",)


def test_generation_file_rows_show_their_target_not_their_first_reference(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [{"text": "in", "label": "Shown output.", "references": ["Another way.", "Shown output."]}],
    )
    [example] = load_task_examples(path, GenerationTask())
    assert example.label == "Shown output." and example.target == "Shown output."
    assert example.references == ("Shown output.", "Another way.")


@pytest.mark.parametrize(
    ("value", "record", "message"),
    [
        (7, {}, "field 'target' must be text"),
        ("   ", {}, "field 'target' is empty"),
        ("t", {"references": []}, "'references' must be a non-empty list"),
        ("t", {"references": "t"}, "'references' must be a non-empty list"),
        ("t", {"references": ["ok", ""]}, "references[]"),
        ("t", {"references": ["ok", 3]}, "references[]"),
        ("t", {"fields": ["name"]}, "'fields' must be an object"),
    ],
)
def test_generation_refuses_bad_targets_naming_file_and_line(value: Any, record: dict, message: str) -> None:
    with pytest.raises(DataError) as err:
        GenerationTask().read_target(value, record, WHERE, 9)
    assert_names_file_and_line(err, WHERE, 9)
    assert message in str(err.value)


def test_generation_parse_strips_and_an_empty_output_is_not_ok() -> None:
    task = GenerationTask()
    assert task.parse("  hello there \n") == Parsed("hello there", ok=True, valid=True)
    assert task.parse(" \n ") == Parsed("", ok=False, valid=False)


def test_an_exact_output_scores_one_and_the_best_reference_counts() -> None:
    task = GenerationTask()
    example = generation_example("Completely unrelated words here.", "The cat sat on the mat.")
    output = "The cat sat on the mat."
    [row] = task.score_rows([example], [task.parse(output)], [output])
    assert row["chrf"] == pytest.approx(1.0)
    assert row["rouge_l"] == pytest.approx(1.0)


def test_chrf_and_rouge_over_references_are_the_best_single_reference_score() -> None:
    task = GenerationTask()
    refs = ("The hotel is near the river.", "A cheap hotel by the riverside.", "Nothing alike at all.")
    output = "A cheap hotel near the river."
    parsed = [task.parse(output)]
    [together] = task.score_rows([generation_example(*refs)], parsed, [output])
    alone = [task.score_rows([generation_example(r)], parsed, [output])[0] for r in refs]
    for name in ("chrf", "rouge_l"):
        assert together[name] == pytest.approx(max(a[name] for a in alone)), name
        assert 0 < together[name] < 1
    assert len({round(a["chrf"], 6) for a in alone}) == 3  # the references really score differently


def test_generation_scores_are_on_a_zero_to_one_scale_and_lower_for_worse_outputs() -> None:
    task = GenerationTask()
    example = generation_example("The Eagle is a cheap French restaurant near the river.")
    outputs = ["The Eagle is a cheap French restaurant by the river.", "Buy shares today."]
    close, far = task.score_rows([example] * 2, [task.parse(o) for o in outputs], outputs)
    for name in ("chrf", "rouge_l"):
        assert 0 <= far[name] < close[name] <= 1, name


def test_length_ratio_is_against_the_closest_length_reference() -> None:
    task = GenerationTask()
    output = "one two three four"
    parsed = [task.parse(output)]
    [row] = task.score_rows([generation_example("a b", "a b c d e")], parsed, [output])
    assert row["length_ratio"] == pytest.approx(4 / 5)
    # Equally close (3 and 5 words): the shorter reference.
    [tie] = task.score_rows([generation_example("a b c d e", "a b c")], parsed, [output])
    assert tie["length_ratio"] == pytest.approx(4 / 3)


def test_slot_coverage_is_the_share_of_field_values_said_literally() -> None:
    task = GenerationTask()
    fields = {"name": "The Eagle", "food": "French", "area": "riverside"}
    example = generation_example("ref", fields=fields)
    output = "THE EAGLE serves   french food in the city centre."
    [row] = task.score_rows([example], [task.parse(output)], [output])
    assert row["slot_coverage"] == pytest.approx(2 / 3)
    [without] = task.score_rows([generation_example("ref")], [task.parse(output)], [output])
    assert math.isnan(without["slot_coverage"])


def test_semantic_similarity_needs_an_embedder() -> None:
    example = generation_example("Totally other words.", "the cat sat on the mat")
    outputs = ["the cat sat on the mat", ""]
    plain = GenerationTask()
    rows = plain.score_rows([example] * 2, [plain.parse(o) for o in outputs], outputs)
    assert all(math.isnan(r["semantic_similarity"]) for r in rows)
    embedder = FakeEmbedder(dim=512)
    task = GenerationTask(embed=embedder.embed)
    same, empty = task.score_rows([example] * 2, [task.parse(o) for o in outputs], outputs)
    assert same["semantic_similarity"] == pytest.approx(1.0)  # best over references: the identical one
    assert empty["semantic_similarity"] == 0.0


def test_generation_aggregate_leaves_out_metrics_with_no_values() -> None:
    task = GenerationTask()
    examples = [generation_example("the cat sat"), generation_example("a dog ran")]
    outputs = ["the cat sat", "a bird flew"]
    rows = task.score_rows(examples, [task.parse(o) for o in outputs], outputs)
    metrics = task.aggregate(rows, seed=0)
    assert set(metrics) == {"chrf", "rouge_l", "length_ratio"}
    assert metrics["chrf"].value == pytest.approx((rows[0]["chrf"] + rows[1]["chrf"]) / 2)
    assert task.primary.value(task.primary_stats(rows)) == pytest.approx(metrics["chrf"].value)
    assert task.describe() == {"name": "generation", "primary_metric": "chrf", "metrics_are_proxies": True}


def test_generation_primary_metric_can_be_rouge_l() -> None:
    task = GenerationTask("rouge-l")
    rows = [{"chrf": 0.1, "rouge_l": 0.7}, {"chrf": 0.2, "rouge_l": 0.5}]
    assert task.primary.name == "rouge-l" and task.primary.label == "ROUGE-L"
    np.testing.assert_allclose(task.primary_stats(rows), [[0.7], [0.5]])
    assert task.primary.value(task.primary_stats(rows)) == pytest.approx(0.6)


def test_generation_refuses_an_unknown_primary_metric() -> None:
    with pytest.raises(FewtuneError, match="--metric for generation takes chrf, rouge-l, semantic"):
        GenerationTask("accuracy")
