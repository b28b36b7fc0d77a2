"""The run registry (SQLite), ``fewtune runs``, the gate policy file and ``fewtune runbook``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from unittest.mock import ANY

import pytest
from gate_helpers import VERDICTS, Arm, fewtune, labelled_rows, with_accuracy, write_run, write_verdict
from rich.console import Console

from fewtune.errors import ConfigError, FewtuneError
from fewtune.release.policy import Policy, load_policy
from fewtune.release.registry import find_run, list_runs, record_run, registry_path
from fewtune.release.runbook import entries


def a_run(folder: Path, accuracy: float = 0.8, seed: int = 0) -> Path:
    texts, gold = labelled_rows({"a": 60, "b": 60}, seed=seed)
    return write_run(
        folder, texts, gold, [Arm("zero-shot", "zero-shot", with_accuracy(gold, ["a", "b"], accuracy, 1))]
    )


def test_a_reported_run_is_recorded_once_and_found_by_id_prefix(tmp_path: Path) -> None:
    from fewtune.config import CostArgs
    from fewtune.report.build import write_reports

    run = a_run(tmp_path / "runs" / "first")
    write_reports(run, CostArgs())
    run_id, path = record_run(run)
    assert path == tmp_path / "runs" / "fewtune-runs.sqlite"
    record_run(run)  # recording again updates, never duplicates
    runs = list_runs(path)
    assert [r["run_id"] for r in runs] == [run_id] and runs[0]["task"] == "classification"
    found = find_run(path, run_id[:-3])
    (method,) = found.methods
    assert method["name"] == "zero-shot" and method["p95_ms"] == 50.0 and method["cost_per_request"] > 0
    assert method["metric"] == "accuracy" and method["ci_low"] < method["value"] < method["ci_high"]
    with pytest.raises(FewtuneError, match="no run 'nope'"):
        find_run(path, "nope")


def test_runs_commands_list_show_compare_and_the_gate_takes_a_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = a_run(Path("runs/one"), 0.8), a_run(Path("runs/two"), 0.9)
    assert fewtune(monkeypatch, "report", str(first)) == 0
    assert fewtune(monkeypatch, "report", str(second)) == 0  # the report records the run
    capsys.readouterr()
    assert fewtune(monkeypatch, "runs") == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert "2 runs" in listing and "one-" in listing and "two-" in listing
    one, two = (r["run_id"] for r in list_runs(registry_path("runs")))
    assert fewtune(monkeypatch, "runs", "show", one) == 0
    assert "zero-shot" in capsys.readouterr().out
    assert fewtune(monkeypatch, "runs", "compare", one, two) == 0
    assert "test_sha256" in capsys.readouterr().out
    code = fewtune(monkeypatch, "gate", "--baseline", f"{one}:zero-shot", "--candidate", f"{two}:zero-shot",
                   "--json", "--no-runbook")  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert json.loads(capsys.readouterr().out)["decision"] == "pass"


def two_method_run(folder: Path) -> Path:
    texts, gold = labelled_rows({"a": 20, "b": 20})
    arms = [Arm(name, name.split()[0], with_accuracy(gold, ["a", "b"], 0.8, seed))
            for seed, name in enumerate(("few-shot k=8 balanced", "lora n=200"))]  # fmt: skip
    return write_run(folder, texts, gold, arms)


def wide_listing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``fewtune *args`` on a console wide enough that no cell folds, whitespace collapsed."""
    monkeypatch.setattr("fewtune.cli.release.console", Console(markup=False, width=300))
    capsys.readouterr()
    assert fewtune(monkeypatch, *args) == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("verdict", "column", "shown"),
    [("settled", 1, "settled"), ("provisional", 0, "provisional"), ("old", None, "-"), (None, None, "-")],
)
def test_the_registry_stores_and_lists_whether_the_verdict_is_settled(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    verdict: str | None,
    column: int | None,
    shown: str,
) -> None:
    """settled, provisional, a report older than the flag (no key), and no report at all."""
    run = two_method_run(tmp_path / "runs" / "one")
    if verdict:
        write_verdict(run, VERDICTS[verdict])
    run_id, path = record_run(run)
    (row,) = list_runs(path)
    assert row["settled"] == column and find_run(path, run_id).columns["settled"] == column
    listing = wide_listing(monkeypatch, capsys, "runs", "--root", str(tmp_path / "runs"))
    recommended = "few-shot k=8 balanced" if verdict else "-"
    assert f"| {recommended} | {shown} | {run.resolve()} |" in listing.replace("│", "|")
    assert f"verdict: {shown}" in wide_listing(
        monkeypatch, capsys, "runs", "show", run_id, "--root", str(tmp_path / "runs")
    )


# The registry as fewtune created it before the runs table's settled column.
OLD_SCHEMA = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, folder TEXT NOT NULL UNIQUE, recorded_at TEXT NOT NULL, started_at TEXT,
    finished_at TEXT, status TEXT, task TEXT, model TEXT, seed INTEGER, config_sha256 TEXT,
    data_sha256 TEXT, test_sha256 TEXT, test_rows INTEGER, recommended TEXT, fewtune_version TEXT
);
CREATE TABLE methods (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, name TEXT NOT NULL, method TEXT,
    shots INTEGER, train_examples INTEGER, metric TEXT, value REAL, ci_low REAL, ci_high REAL,
    p95_ms REAL, cost_per_request REAL, adapter_path TEXT, adapter_sha256 TEXT,
    PRIMARY KEY (run_id, name)
);
"""


def test_a_registry_from_before_the_settled_column_is_migrated_and_keeps_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "runs" / "fewtune-runs.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, NULL, 'complete', 'classification', 'tiny', 0, NULL, NULL, "
            "NULL, 40, 'lora n=200', '0.1')",
            ("old-1a2b3c4d", "/data/runs/old", "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"),
        )
        db.execute(
            "INSERT INTO methods VALUES ('old-1a2b3c4d', 'lora n=200', 'lora', 0, 200, 'accuracy', 0.9, 0.8, "
            "1.0, 50.0, 0.001, NULL, NULL)"
        )
    db.close()
    (old,) = list_runs(path)  # opening it migrates it
    assert old["run_id"] == "old-1a2b3c4d" and old["recommended"] == "lora n=200" and old["settled"] is None
    assert [m["value"] for m in find_run(path, "old-1a2b3c4d").methods] == [0.9]
    with sqlite3.connect(path) as db:
        assert "settled" in {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    db.close()
    run = write_verdict(two_method_run(tmp_path / "runs" / "new"), VERDICTS["provisional"])
    record_run(run)  # a migrated registry takes new runs
    assert [(r["run_id"], r["settled"]) for r in list_runs(path)] == [("old-1a2b3c4d", None), (ANY, 0)]
    listing = wide_listing(monkeypatch, capsys, "runs", "--root", str(tmp_path / "runs"))
    assert "2 runs" in listing and "| lora n=200 | - | /data/runs/old |" in listing.replace("│", "|")
    assert "| provisional |" in listing.replace("│", "|")


def test_a_broken_registry_file_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fewtune-runs.sqlite").write_bytes(b"not a database at all" * 100)
    assert fewtune(monkeypatch, "runs", "--root", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "not a readable run registry" in err and "Traceback" not in err
    assert fewtune(monkeypatch, "runs", "--root", str(tmp_path / "none")) == 2
    assert "no run registry here yet" in capsys.readouterr().err
    sqlite3.connect(tmp_path / "ok.sqlite").close()


def test_policy_file_overrides_and_its_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("margin_points: 2\nclass_floors: {refund: 0.9}\np95_ratio: null\n")
    policy = load_policy(path)
    assert policy == Policy(margin_points=2.0, class_floors={"refund": 0.9}, p95_ratio=None)
    for text, message in [
        ("margin: 2\n", "unknown policy keys: margin"),
        ("margin_points: [1\n", ":2: invalid YAML"),
        ("margin_points: lots\n", "expected a number"),
        ("class_floors: {refund: 2}\n", "class_floors.refund must be a recall"),
        ("- 1\n", "a policy is a mapping"),
        ("cost_ratio: 0\n", "cost_ratio must be > 0"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message) as info:
            load_policy(path)
        assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "missing.yaml")


def test_runbook_lists_entries_and_survives_a_stray_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, rerun = a_run(tmp_path / "run"), a_run(tmp_path / "rerun")  # the same rows and answers
    book = tmp_path / "book"
    for _ in range(2):  # two decisions in the same second get two files
        args = ["--baseline", f"{run}:zero-shot", "--candidate", f"{rerun}:zero-shot", "--owner", "bob"]
        assert fewtune(monkeypatch, "gate", *args, "--runbook", str(book)) == 0
    (book / "notes.md").write_text("team notes, not an entry\n")
    found = entries(book)
    assert [e["decision"] for e in found if e["file"] != "notes.md"] == ["pass", "pass"]
    assert {e["owner"] for e in found if e["file"] != "notes.md"} == {"bob"}
    assert next(e for e in found if e["file"] == "notes.md")["decision"] == "unreadable"
    capsys.readouterr()
    assert fewtune(monkeypatch, "runbook", str(book)) == 0
    assert "3 decisions" in " ".join(capsys.readouterr().out.split())


def test_mlflow_logging_records_params_metrics_and_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (in dev) is not installed")
    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts under ./mlruns
    run = a_run(Path("runs/one"))
    (run / "config.yaml").write_text("model: tiny\nseed: 0\nprompt:\n  shots: [0, 8]\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert fewtune(monkeypatch, "report", str(run), "--mlflow", uri) == 0
    assert "Logged to MLflow" in " ".join(capsys.readouterr().out.split())
    mlflow.set_tracking_uri(uri)
    (found,) = mlflow.search_runs(experiment_names=["fewtune"], output_format="list")
    assert found.data.params["prompt.shots"] == "[0, 8]"
    assert 0 < found.data.metrics["zero-shot.primary"] < 1 and found.data.metrics["zero-shot.p95_ms"] == 50.0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(found.info.run_id)}
    assert {"report.md", "results.json", "config.yaml"} <= artifacts
