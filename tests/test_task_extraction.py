"""Extraction: targets, schema, rendering, parsing and field scores (plus the task base pieces)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from task_helpers import (  # noqa: F401 (one_torch_thread is an autouse fixture)
    WHERE,
    assert_names_file_and_line,
    extraction_example,
    extraction_rows,
    generation_example,
    one_torch_thread,
)

from fewtune.errors import ConfigError, DataError
from fewtune.tasks.base import END_MARKER, Metric, Parsed, bootstrap_ci
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
    table = task.row_details(golds, parsed, None)["per_field"]
    assert list(table) == ["a", "b", "c"]
    assert table["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2.0})
    assert table["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1.0}
    assert table["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0}
    assert field_table(golds, parsed) == table
