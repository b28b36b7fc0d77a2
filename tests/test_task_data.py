"""Open-output data: task inference, loading with one-line errors, the split, the output template."""

from __future__ import annotations

from pathlib import Path

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

from fewtune.errors import DataError
from fewtune.prompts.template import OutputTemplate
from fewtune.tasks.base import END_MARKER, TaskExample
from fewtune.tasks.data import infer_task, load_task_examples, prepare_task_data
from fewtune.tasks.extraction import (
    ExtractionTask,
)
from fewtune.tasks.generation import GenerationTask

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


def test_inferred_label_count_says_how_many_rows_it_read(tmp_path: Path) -> None:
    # A file sorted by label (banking77's is) shows few labels in the rows read: the sentence must not
    # pass that off as the label set.
    rows = [{"text": f"t{i}", "label": f"intent{i // 200}"} for i in range(1000)]
    name, why = infer_task(write_jsonl(tmp_path / "sorted.jsonl", rows), "label")
    assert name == "classification"
    assert why == "the target field 'label' takes 3 distinct values in its first 500 rows"
    _, small = infer_task(write_jsonl(tmp_path / "small.jsonl", rows[:8]), "label")
    assert small.endswith("takes 1 distinct value in 8 rows")


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
