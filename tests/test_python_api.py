"""The library face: docs/python-api.md's example runs as written (on the fake backend), ``fewtune.run``
prints nothing and coexists with the ``fewtune.run`` subpackage, and ``fewtune.open_run`` reads a run folder
through typed readers with one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_jsonl

import fewtune
from fewtune.api import settings_of
from fewtune.backends.fake import FakeBackend
from fewtune.config import RunConfig, build_config
from fewtune.embeddings import FakeEmbedder
from fewtune.errors import FewtuneError
from fewtune.results.run_folder import RunFolder
from fewtune.results.run_record import RunRecord

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python-api.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
WORDS = ("good", "bad", "meh")


def ticket_rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    # Every fourth row names no label, so the fake backend guesses and the rows differ.
    return [
        {"text": f"a {WORDS[i % 3] if i % 4 else 'plain'} ticket, number {i}", "label": WORDS[i % 3]}
        for i in range(start, start + count)
    ]


def example() -> str:
    blocks = PYTHON_BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    assert blocks, f"{PAGE.name} has no ```python block"
    return "\n".join(blocks)


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default loaders return the fake backend and embedder, so the example runs unchanged."""
    monkeypatch.setattr("fewtune.run.loaders.load_backend", lambda cfg, events: FakeBackend())
    monkeypatch.setattr("fewtune.run.loaders.load_embedder", lambda cfg, events: FakeEmbedder())


@pytest.fixture
def in_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example's data files in the current folder."""
    write_jsonl(tmp_path / "tickets.jsonl", ticket_rows(36))
    write_jsonl(tmp_path / "tickets_test.jsonl", ticket_rows(12, 100))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_example(code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "python_api_example"}
    exec(compile(code, str(PAGE), "exec"), namespace)
    return namespace


def test_the_example_runs_as_written(
    fake_models: None, in_data_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = example()
    assert "fewtune.run(" in code and "fewtune.open_run(" in code
    names = run_example(code)
    record = names["record"]
    assert isinstance(record, RunRecord) and record.folder == Path("runs/tickets")
    assert [row.name for row in record.methods] == ["zero-shot", "few-shot k=5 balanced", "reference n=24"]
    assert (in_data_folder / "runs" / "tickets" / "report.md").is_file()
    printed = capsys.readouterr().out
    assert "zero-shot                accuracy 0." in printed
    assert RunFolder("runs/tickets").recommendation["headline"] in printed


# A broken example fails the test above: a renamed function, a bad setting, a misspelt reader.
BREAKAGES = [
    ("fewtune.run(settings", "fewtune.runs(settings"),
    ('"shots": [0, 5]', '"shot": [0, 5]'),
    (".recommendation", ".verdict"),
]


@pytest.mark.parametrize(("good", "bad"), BREAKAGES, ids=[bad for _, bad in BREAKAGES])
def test_a_broken_example_fails(good: str, bad: str, fake_models: None, in_data_folder: Path) -> None:
    code = example()
    assert good in code, f"the example no longer holds {good!r}: update BREAKAGES"
    with pytest.raises((AttributeError, FewtuneError)):
        run_example(code.replace(good, bad, 1))


def settings(folder: Path, **sections: dict[str, Any]) -> RunConfig:
    pool = write_jsonl(folder / "pool.jsonl", ticket_rows(36))
    test = write_jsonl(folder / "test.jsonl", ticket_rows(12, 100))
    return build_config(
        None,
        {
            "run": {"out": str(folder / "run")},
            "data": {"data": str(pool), "test": str(test)},
            "prompt": {"shots": [0, 2]},
            "eval": {"methods": ["zero-shot", "few-shot"], "latency_requests": 3},
            **sections,
        },
    )


def fake_run(cfg: RunConfig, **options: Any) -> RunRecord:
    return fewtune.run(
        cfg,
        backend_factory=lambda cfg, events: FakeBackend(),
        embedder_factory=lambda cfg, events: FakeEmbedder(),
        **options,
    )


def test_run_prints_nothing_and_open_run_reads_what_it_wrote(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg = settings(tmp_path)
    record = fake_run(cfg)
    assert capfd.readouterr() == ("", "")
    assert record.status == "complete" and record.folder == tmp_path / "run"
    opened = fewtune.open_run(tmp_path / "run")
    assert opened.record == record and opened.record.to_dict() == record.to_dict()
    assert {name: len(rows) for name, rows in opened.predictions.items()} == {
        "zero-shot": 12,
        "few-shot k=2 balanced": 12,
    }
    assert [row["row"] for row in opened.predictions["zero-shot"]] == list(range(12))
    # The saved settings are the resolved ones (the task inferred, ...).
    assert opened.settings.data.data == cfg.data.data and opened.settings.data.task == "classification"
    assert opened.settings.prompt.shots == [0, 2] and opened.settings.out == cfg.out
    assert opened.recommendation == opened.analysis["recommendation"]
    assert set(opened.analysis["methods"]) == {"zero-shot", "few-shot k=2 balanced"}
    with pytest.raises(FewtuneError, match="already"):
        fake_run(cfg)  # a folder holding a run is refused without overwrite or resume
    again = fake_run(cfg, overwrite=True)
    assert [row.metrics["accuracy"] for row in again.methods] == [
        row.metrics["accuracy"] for row in record.methods
    ]


def test_settings_may_be_a_dict_or_a_yaml_file(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    as_dict = {
        "out": cfg.out,
        "data": {"data": cfg.data.data, "test": cfg.data.test},
        "prompt": {"shots": [0, 2]},
    }
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(as_dict), encoding="utf-8")
    assert settings_of(as_dict) == settings_of(path) == settings_of(str(path))
    assert settings_of(cfg) is cfg and settings_of(path).prompt.shots == [0, 2]
    path.write_text(yaml.safe_dump({**as_dict, "modle": "x"}), encoding="utf-8")
    with pytest.raises(FewtuneError, match=f"^{re.escape(str(path))}: unknown config keys: modle$"):
        settings_of(path)


def one_line_error(call: Any) -> str:
    with pytest.raises(FewtuneError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("files", "read", "expected"),
    [
        ({"results.json": None}, "record", "{run}: no results.json here"),
        ({"results.json": "{oops"}, "record", "{run}/results.json:1: malformed JSON"),
        ({"results.json": "[]"}, "record", "{run}/results.json: expected a JSON object"),
        ({"predictions.jsonl": "{}\n"}, "predictions", "{run}/predictions.jsonl:1: a prediction needs"),
        ({"config.yaml": None}, "settings", "{run}/config.yaml: no such file"),
        ({"config.yaml": "seed: [1\n"}, "settings", "{run}/config.yaml:2: invalid YAML"),
        ({"config.yaml": "modle: x\n"}, "settings", "{run}/config.yaml: unknown config keys: modle"),
        ({"analysis.json": None}, "analysis", "{run}/analysis.json: no such file; write the report"),
        ({"analysis.json": "{}"}, "recommendation", "{run}/analysis.json: no recommendation in it"),
    ],
)
def test_a_bad_run_folder_is_a_one_line_error(
    files: dict[str, str | None], read: str, expected: str, tmp_path: Path
) -> None:
    """``files`` change a good folder's files (None: the file is absent); reading ``read`` fails."""
    run = tmp_path / "run"
    run.mkdir()
    good = {
        "results.json": '{"schema_version": 2, "status": "complete", "methods": []}',
        "config.yaml": "seed: 1\n",
        "analysis.json": '{"recommendation": {"headline": "x"}}',
    }
    for name, text in (good | files).items():
        if text is not None:
            (run / name).write_text(text, encoding="utf-8")
    message = one_line_error(lambda: getattr(fewtune.open_run(run), read))
    assert message.startswith(expected.format(run=run)), message


def test_fewtune_run_is_the_function_and_the_subpackage() -> None:
    """``fewtune.run(...)`` calls the library whichever of ``fewtune`` and ``fewtune.run.pipeline`` is
    imported first, ``fewtune.run.pipeline`` stays the module, and ``import fewtune`` loads neither the
    pipeline nor the API (each order in a fresh interpreter)."""
    check = (
        "import sys, fewtune.run.pipeline as pipeline, fewtune;"
        "from fewtune import run;"
        "assert callable(fewtune.run) and run is fewtune.run and fewtune.run.pipeline is pipeline;"
        "assert fewtune.run.pipeline.run_pipeline and fewtune.__version__"
    )
    lazy = (
        "import sys, fewtune;"
        "loaded = [m for m in ('fewtune.api', 'fewtune.run.pipeline', 'yaml', 'torch') if m in sys.modules];"
        "assert not loaded, loaded;"
        "import fewtune.run.pipeline;"
        "assert callable(fewtune.run) and fewtune.run.pipeline.run_pipeline"
    )
    for code in (check, lazy):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
        assert done.returncode == 0, done.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}
