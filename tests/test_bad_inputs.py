"""The bad-input corpus: files, encodings, fields, CSV, JSON, YAML config and options (run folders:
test_bad_run_folders.py). Every case is one line on stderr (exit 2) naming what is wrong and, for a data
file, where; never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_cases import GOOD, Case, check_one_line, data_case, row

CASES: list[Case] = [
    *data_case("malformed JSON", GOOD + '{"text": "x", "label": }\n', "malformed JSON", line=13),
    *data_case(
        "nested too deeply",
        '{"text": "a", "label": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
        "nested too deeply",
    ),
    *data_case(
        "an integer of 5,000 digits", '{"text": "a", "label": ' + "9" * 5000 + "}\n", "unreadable JSON value"
    ),
    *data_case("a line that is a list", "[1, 2]\n", "expected a JSON object, got list"),
    *data_case("a line that is a number", "5\n", "expected a JSON object, got int"),
    *data_case("a line that is a string", '"text"\n', "expected a JSON object, got str"),
    *data_case("trailing text after the object", row(text="a", label="b").strip() + " x\n", "malformed JSON"),
    *data_case("missing text field", row(body="a", label="b"), "missing field 'text'"),
    *data_case("missing label field", row(text="a", tag="b"), "missing field 'label'"),
    *data_case("empty text", row(text="  ", label="b"), "field 'text' is empty"),
    *data_case("null text", row(text=None, label="b"), "must be a string"),
    *data_case("null label", row(text="a", label=None), "must be a string"),
    *data_case("boolean label", row(text="a", label=True), "must be a string"),
    *data_case("object as text", row(text={"a": 1}, label="b"), "must be a string"),
    *data_case("list of numbers as label", row(text="a", label=[1, 2]), "must be a string"),
    *data_case("only blank lines", "\n\n  \n", "file is empty", line=None),
    *data_case("invalid UTF-8", b'{"text": "caf\xe9", "label": "a"}\n', "not valid UTF-8"),
    *data_case(
        "UTF-16 with a byte-order mark", '{"text": "a", "label": "b"}\n'.encode("utf-16"), "not valid UTF-8"
    ),
    *data_case(
        "a chat record without an assistant message",
        row(messages=[{"role": "user", "content": "hi"}]),
        "assistant",
    ),
    *data_case("CSV without the label column", "text,tag\na,b\n", "missing column 'label'", suffix=".csv"),
    *data_case(
        "CSV naming a column twice", "text,label,label\na,b,c\n", "names column 'label' twice", suffix=".csv"
    ),
    *data_case(
        "CSV row with more cells than the header",
        "text,label\na,b,c\n",
        "more cells than the header",
        suffix=".csv",
        line=2,
    ),
    *data_case(
        "CSV row with fewer cells", "text,label\na\n", "no cell for column 'label'", suffix=".csv", line=2
    ),
    *data_case("CSV header only", "text,label\n", "no examples", suffix=".csv", line=None),
    *data_case(
        "CSV with an empty label", "text,label\na,\n", "field 'label' is empty", suffix=".csv", line=2
    ),
    Case(
        "data: file not found",
        {},
        ["run", "--data", "{dir}/nothing.jsonl"],
        "{dir}/nothing.jsonl: file not found",
    ),
    Case("data: a folder", {"sub/x.txt": "x"}, ["run", "--data", "{dir}/sub"], "{dir}/sub: is a folder"),
    Case(
        "data: one label only",
        {"one.jsonl": row(text="a", label="x") + row(text="b", label="x")},
        ["run", "--data", "{dir}/one.jsonl"],
        "only one label",
    ),
    Case(
        "data: a CSV field over 131,072 characters is read (then one label is an error)",
        {"long.csv": "text,label\n" + "x" * 200_000 + ",a\nb,a\n"},
        ["run", "--data", "{dir}/long.csv"],
        "{dir}/long.csv:2: only one label",
    ),
    Case(
        "extraction: a target that is no object",
        {"e.jsonl": row(text="a", slots="x") * 3},
        ["run", "--task", "extraction", "--data", "{dir}/e.jsonl", "--target-field", "slots"],
        "{dir}/e.jsonl:1:",
    ),
    Case(
        "multi-label: an empty label list",
        {"m.jsonl": row(text="a", labels=["x"]) + row(text="b", labels=[])},
        ["run", "--data", "{dir}/m.jsonl"],
        "{dir}/m.jsonl:2: field 'labels' is an empty list",
    ),
    Case(
        "multi-label: a label that is a number",
        {"m.jsonl": row(text="a", labels=["x"]) + row(text="b", labels=["y", 3])},
        ["run", "--task", "multi-label", "--data", "{dir}/m.jsonl", "--target-field", "labels"],
        "{dir}/m.jsonl:2: field 'labels': item 1 must be text",
    ),
    Case(
        "multi-label: a label holding a comma",
        {"m.jsonl": row(text="a", labels=["x, y"])},
        ["run", "--task", "multi-label", "--data", "{dir}/m.jsonl", "--target-field", "labels"],
        "{dir}/m.jsonl:1:",
    ),
    # -- YAML config -----------------------------------------------------------------------------------
    Case(
        "config: invalid YAML",
        {"c.yaml": "lora: [\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "{dir}/c.yaml:2: invalid YAML",
    ),
    Case(
        "config: a list at the top",
        {"c.yaml": "- 1\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "expected a mapping of settings",
    ),
    Case(
        "config: a section that is a list",
        {"c.yaml": "lora: [1, 2]\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "config section 'lora' must be a mapping",
    ),
    Case(
        "config: an unknown key",
        {"c.yaml": "speed: 3\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "unknown config keys: speed",
    ),
    Case(
        "config: an unknown section key",
        {"c.yaml": "lora: {rank: 8}\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "unknown keys in config section 'lora': rank",
    ),
    Case(
        "config: a learning rate that is no number",
        {"c.yaml": "lora: {lr: fast}\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "config lora.lr: expected a number",
    ),
    Case(
        "config: shots that are no numbers",
        {"c.yaml": "prompt: {shots: [a, b]}\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "config prompt.shots: expected a whole number",
    ),
    Case(
        "config: a switch that is text",
        {"c.yaml": "eval: {constrained: maybe}\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "config eval.constrained: expected true or false",
    ),
    Case(
        "config: a seed that is text",
        {"c.yaml": "seed: x\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "config run.seed: expected a whole number",
    ),
    Case(
        "config: fractional epochs",
        {"c.yaml": "lora: {epochs: 1.5}\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "config lora.epochs: expected a whole number",
    ),
    Case(
        "config: the old prompt.task key",
        {"c.yaml": "prompt: {task: Classify}\n"},
        ["run", "--config", "{dir}/c.yaml"],
        "prompt.task was renamed prompt.instruction",
    ),
    Case(
        "config: file not found",
        {},
        ["run", "--config", "{dir}/none.yaml"],
        "{dir}/none.yaml: config file not found",
    ),
    # -- options ---------------------------------------------------------------------------------------
    Case(
        "option: --task bogus",
        {},
        ["run", "--task", "bogus"],
        "--task takes classification, extraction, generation, multi-label",
    ),
    Case("option: --methods bogus", {}, ["run", "--methods", "magic"], "magic"),
    Case("option: --shots abc", {}, ["run", "--shots", "abc"], "--shots"),
    Case("option: --demo-selection bogus", {}, ["run", "--demo-selection", "psychic"], "psychic"),
    Case("option: --label-scoring bogus", {}, ["run", "--label-scoring", "vibes"], "vibes"),
    Case(
        "option: --metric for the wrong task",
        {"good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--metric", "chrf"],
        "--metric for classification takes",
    ),
    Case(
        "option: --constrained for classification",
        {"good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--constrained"],
        "--constrained applies to --task extraction",
    ),
    Case(
        "option: more shots than the pool",
        {"good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--shots", "0,500"],
        "--shots 500 is more than",
    ),
    Case(
        "option: --train-sizes above the pool",
        {"good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--train-sizes", "5000"],
        "--train-sizes 5000 is more than",
    ),
    Case(
        "option: --label-names for a missing label",
        {"good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--train-sizes", "4", "--label-names", "zzz=sleep"],
        "--label-names: zzz is not a label",
    ),
    Case(
        "option: --label-names that is no pairs",
        {"good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--train-sizes", "4", "--label-names", "nonsense"],
        "--label-names",
    ),
    Case(
        "option: --calibrate with generated labels",
        {"good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--calibrate", "--label-scoring", "generate"],
        "--calibrate needs label log-likelihoods",
    ),
    Case(
        "option: --costs file not found",
        {"good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--train-sizes", "4", "--costs", "{dir}/none.yaml"],
        "none.yaml",
    ),
    Case(
        "option: --resume with --overwrite",
        {"run/results.json": "{}"},
        ["run", "--out", "{dir}/run", "--resume", "--overwrite"],
        "--resume and --overwrite exclude each other",
    ),
    Case(
        "option: --schema file not found",
        {"e.jsonl": row(text="a", slots={"k": "v"}) * 4},
        [
            "run",
            "--task",
            "extraction",
            "--data",
            "{dir}/e.jsonl",
            "--target-field",
            "slots",
            "--schema",
            "{dir}/none.json",
        ],
        "none.json",
    ),
    # -- run folders -----------------------------------------------------------------------------------
    Case("out: a file", {"out.txt": "x"}, ["run", "--out", "{dir}/out.txt"], "--out {dir}/out.txt is a file"),
    Case(
        "out: inside a file",
        {"out.txt": "x"},
        ["run", "--out", "{dir}/out.txt/run"],
        "is a file; give a folder",
    ),
    Case(
        "out: the user's own files",
        {"run/notes.txt": "mine", "good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--out", "{dir}/run"],
        "holds files fewtune did not write (notes.txt)",
    ),
    Case(
        "out: an earlier run",
        {"run/results.json": json.dumps({"status": "complete", "methods": []}), "good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--out", "{dir}/run"],
        "already holds a run",
    ),
    Case(
        "resume: no run there",
        {"run/results.json": "not json", "good.jsonl": GOOD},
        ["run", "--data", "{dir}/good.jsonl", "--train-sizes", "4", "--out", "{dir}/run", "--resume"],
        "--resume:",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check_one_line(case, tmp_path, monkeypatch, capsys)


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 80
