from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_jsonl

from fewtune.data.load import load_examples
from fewtune.data.split import dedupe, prepare_data, stratified_sample
from fewtune.errors import DataError

MALFORMED = Path(__file__).parent / "fixtures" / "malformed"

# file -> (line in the error, or None for whole-file errors; words the message must contain)
MALFORMED_CASES = {
    "bad_json.jsonl": (2, "malformed JSON"),
    "not_object.jsonl": (1, "expected a JSON object"),
    "missing_text.jsonl": (3, "missing field 'text'"),
    "missing_label.jsonl": (1, "missing field 'label'"),
    "empty_text.jsonl": (2, "field 'text' is empty"),
    "empty_label.jsonl": (1, "field 'label' is empty"),
    "null_text.jsonl": (1, "must be a string"),
    "list_label.jsonl": (1, "must be a string"),
    "bool_label.jsonl": (1, "must be a string"),
    "truncated.jsonl": (2, "malformed JSON"),
    "empty.jsonl": (None, "file is empty"),
    "blank_only.jsonl": (None, "file is empty"),
    "non_utf8.jsonl": (2, "not valid UTF-8"),
    "chat_no_assistant.jsonl": (1, "no assistant message"),
    "chat_no_user.jsonl": (1, "no user message"),
    "chat_bad_messages.jsonl": (1, "'messages' must be a list"),
    "csv_missing_column.csv": (1, "missing column 'label'"),
    "csv_extra_cell.csv": (3, "more cells than the header"),
    "csv_empty_label.csv": (3, "field 'label' is empty"),
    "csv_non_utf8.csv": (3, "not valid UTF-8"),
    "single_row_label.jsonl": (5, "label 'b' has only 1 row"),
    "single_label.jsonl": (1, "only one label ('a') in the data; a classifier needs at least two"),
}


def test_fixture_table_covers_every_file() -> None:
    assert sorted(p.name for p in MALFORMED.iterdir()) == sorted(MALFORMED_CASES)
    assert len(MALFORMED_CASES) >= 20


@pytest.mark.parametrize("name", sorted(MALFORMED_CASES))
def test_malformed_file_gets_one_line_error_from_cli(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from fewtune.cli import commands as cli

    line, words = MALFORMED_CASES[name]
    path = MALFORMED / name
    monkeypatch.setattr("sys.argv", ["fewtune", "run", "--data", str(path), "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    message = " ".join(captured.err.split())
    assert "Traceback" not in captured.err + captured.out
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    where = f"{path}:{line}:" if line else f"{path}:"
    assert where in message and words in message, message


def test_jsonl_csv_and_chat_read_the_same_examples(tmp_path: Path) -> None:
    rows = [{"q": "good film", "y": "pos"}, {"q": "bad film", "y": 0}]
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    csv = tmp_path / "a.csv"
    csv.write_text('q,y\ngood film,pos\n"bad film",0\n', encoding="utf-8")
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": r["q"]},
                    {"role": "assistant", "content": str(r["y"])},
                ]
            }
            for r in rows
        ],
    )
    expected = [("good film", "pos"), ("bad film", "0")]
    for path in (jsonl, csv):
        assert [(e.text, e.label) for e in load_examples(path, "q", "y")] == expected
    assert [(e.text, e.label) for e in load_examples(chat)] == expected


def test_dedupe_counts_duplicates_and_conflicts(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "a", "label": "x"},
            {"text": "a", "label": "x"},
            {"text": "a", "label": "y"},
            {"text": "b", "label": "y"},
        ],
    )
    kept, duplicates, conflicts = dedupe(load_examples(path))
    assert [(e.text, e.label) for e in kept] == [("a", "x"), ("b", "y")]
    assert (duplicates, conflicts) == (2, 1)


def test_leakage_guard_removes_test_texts_from_pool(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "p.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(10)])
    test = write_jsonl(tmp_path / "t.jsonl", [{"text": "t1", "label": "b"}, {"text": "new", "label": "a"}])
    data = prepare_data(pool, test)
    assert data.report.leaks_removed == 1
    assert "t1" not in {e.text for e in data.pool}
    assert data.report.pool_size == 9 and data.report.test_size == 2


def test_split_is_stratified_seeded_and_disjoint(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}", "label": "abc"[i % 3] if i < 90 else "a"} for i in range(100)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    first = prepare_data(path, seed=3)
    again = prepare_data(path, seed=3)
    other = prepare_data(path, seed=4)
    assert [e.text for e in first.test] == [e.text for e in again.test]
    assert [e.text for e in first.test] != [e.text for e in other.test]
    assert not {e.text for e in first.test} & {e.text for e in first.pool}
    assert first.report.test_size == 20
    assert Counter(e.label for e in first.test) == Counter({"a": 8, "b": 6, "c": 6})


def test_max_test_samples_keep_every_label(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}", "label": "a" if i < 95 else "b"} for i in range(100)]
    chosen, rest = stratified_sample(load_examples(write_jsonl(tmp_path / "x.jsonl", rows)), 10, seed=0)
    assert len(chosen) == 10 and len(rest) == 90
    assert Counter(e.label for e in chosen) == Counter({"a": 9, "b": 1})


def test_builtin_dataset_is_large_varied_and_clean() -> None:
    from fewtune.run.plan import builtin_dataset_files

    train, test = builtin_dataset_files()
    data = prepare_data(train, test)
    assert data.report.pool_size >= 400 and data.report.test_size >= 80
    assert data.report.duplicates_removed == 0 and data.report.leaks_removed == 0
    assert set(data.labels) >= {"complaint", "inquiry", "praise", "cancellation"}
    lengths = [len(e.text.split()) for e in data.pool]
    assert min(lengths) <= 4 and max(lengths) >= 50
    assert json.loads(Path(train).read_text().splitlines()[0])["label"] in data.labels


def test_one_label_in_pool_and_test_together_is_an_error_naming_both_files(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "p.jsonl", [{"text": f"t{i}", "label": "x"} for i in range(4)])
    test = write_jsonl(tmp_path / "t.jsonl", [{"text": "u", "label": "x"}])
    with pytest.raises(DataError, match=r"p\.jsonl:1: only one label \('x'\) in the data and .*t\.jsonl"):
        prepare_data(pool, test)
    # Two labels across the files is fine, even with one label in the pool.
    other = write_jsonl(tmp_path / "o.jsonl", [{"text": "u", "label": "y"}, {"text": "v", "label": "x"}])
    assert prepare_data(pool, other).labels == ["x", "y"]


def test_jsonl_lines_end_at_line_feeds_only(tmp_path: Path) -> None:
    # U+0085 (NEL) and U+2028/U+2029 are legal unescaped inside JSON strings; str.splitlines() breaks on them.
    texts = ["next\u0085line", "line\u2028separator", "para\u2029graph", "plain"]
    lines = [json.dumps({"text": t, "label": "ab"[i % 2]}, ensure_ascii=False) for i, t in enumerate(texts)]
    content = lines[0] + "\r\n" + lines[1] + "\n\n" + lines[2] + "\r\n" + lines[3] + "\n"
    path = tmp_path / "odd.jsonl"
    path.write_bytes(content.encode("utf-8"))
    examples = load_examples(path)
    assert [(e.text, e.line) for e in examples] == list(zip(texts, [1, 2, 4, 5], strict=True))
    # A bad record after them is reported on its own line.
    path.write_bytes((content + '{"text": "x", "label": }\n').encode("utf-8"))
    with pytest.raises(DataError, match=r"odd\.jsonl:6: malformed JSON"):
        load_examples(path)
