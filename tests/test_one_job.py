"""The one job: every task's trained rows run through one loop (names, adapter folders, resume), full-ft on
an open-output task, and a method the task cannot run refused in one line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import write_jsonl
from task_helpers import extraction_rows, one_torch_thread  # noqa: F401 (an autouse fixture)
from test_task_runs import run_config, run_tiny

from fewtune.backends.base import Capabilities
from fewtune.config import build_config
from fewtune.methods import adapter_folder, row_name
from fewtune.run.training_rows import Tuning, train_rows


@dataclass
class Trained:
    name: str


@dataclass
class Backend:
    name: str = "fake-trainable"
    capabilities: Capabilities = field(default_factory=lambda: Capabilities(trainable=True))


class Store:
    def __init__(self) -> None:
        self.folders: list[str] = []

    def adapter_dir(self, name: str) -> Path:
        self.folders.append(name)
        return Path("adapters") / name


class Session:
    def __init__(self, done: set[str]) -> None:
        self.done, self.store, self.recorded = done, Store(), []  # type: list[str]

    def record(self, row: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
        self.recorded.append(row["name"])


class Recording(Tuning):
    """A task's side that trains nothing: it names what the loop asked for."""

    def __init__(self) -> None:
        self.template, self.shots, self.trained_titles = "template", [2, 4], []  # type: list[str]

    def sample(self, n: int) -> list[Any]:
        return list(range(n))

    def selection(self, k: int) -> str:
        return "balanced"

    def training_demos(self, train: list[Any], k: int) -> Any:
        return [k] * len(train)

    def trained(self, strategy: Any, train: list[Any], title: str, demos: Any = None) -> Trained:
        self.trained_titles.append(title)
        return Trained(row_name(strategy.method, len(train)))

    def prompted(self, tuned: Trained, k: int, kshot_training: str) -> Trained:
        recipe = "plain-adapter" if kshot_training == "plain" else ""
        return Trained(row_name("lora+few-shot", int(tuned.name.split("n=")[1]), k, "balanced", recipe))

    def evaluate(self, predictor: Trained) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return {"name": predictor.name}, []


def loop(done: set[str], recipe: str = "both") -> tuple[Session, Recording]:
    cfg = build_config(
        None,
        {
            "lora": {"train_sizes": [16, 160], "kshot_training": recipe},
            "eval": {"methods": ["lora", "lora+few-shot", "full-ft"]},
        },
    )
    session, tuning = Session(done), Recording()
    train_rows(cfg, session, Backend(), tuning)  # type: ignore[arg-type]
    return session, tuning


def test_every_trained_row_runs_through_one_loop_with_one_name_and_folder_formula() -> None:
    session, _ = loop(set())
    assert session.recorded[:6] == [
        "lora n=16",
        "lora+few-shot n=16 k=2 balanced plain-adapter",
        "lora+few-shot n=16 k=4 balanced plain-adapter",
        "lora+few-shot n=16 k=2 balanced",
        "lora+few-shot n=16 k=4 balanced",
        "full-ft n=16",
    ]
    assert session.store.folders[:4] == ["lora-n16", "lora-n16-k2", "lora-n16-k4", "full-n16"]
    assert [adapter_folder(m, 16, k) for m, k in (("lora", 0), ("lora+few-shot", 2), ("full-ft", 0))] == [
        "lora-n16",
        "lora-n16-k2",
        "full-n16",
    ]
    assert len(session.recorded) == 12 and adapter_folder("hosted-ft", 50) == "hosted-ft-n50"


def test_resume_skips_finished_rows_by_their_exact_names() -> None:
    first, _ = loop(set())
    finished = {name for name in first.recorded if "n=160" in name}
    again, tuning = loop(finished)
    # Only n=16 trains again: "lora n=160" being done says nothing of "lora n=16".
    assert again.recorded == [name for name in first.recorded if name not in finished]
    assert tuning.trained_titles and all(
        "n=16 " in title or title.endswith("n=16") for title in tuning.trained_titles
    )


def test_an_extraction_run_has_a_full_ft_row(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", extraction_rows(8))
    test = write_jsonl(tmp_path / "test.jsonl", extraction_rows(3, start=50))
    cfg = run_config(tmp_path, pool, test)
    cfg.eval.methods = ["zero-shot", "full-ft"]
    folder = run_tiny(tmp_path, tiny_model_dir, monkeypatch, cfg)
    results = json.loads((folder / "results.json").read_text())
    row = next(m for m in results["methods"] if m["method"] == "full-ft")
    assert row["name"] == "full-ft n=4" and row["primary"]["name"] == "field-f1"
    assert (folder / "adapters" / "full-n4").is_dir()


def test_hosted_ft_on_an_open_output_task_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gate_helpers import fewtune

    pool = write_jsonl(tmp_path / "pool.jsonl", extraction_rows(8))
    test = write_jsonl(tmp_path / "test.jsonl", extraction_rows(3, start=50))
    code = fewtune(
        monkeypatch,
        "run",
        "--data",
        str(pool),
        "--test",
        str(test),
        "--methods",
        "zero-shot,hosted-ft",
        "--hosted-endpoint",
        "http://127.0.0.1:9/v1#base",
        "--out",
        str(tmp_path / "run"),
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and "hosted-ft" in err and "extraction" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "results.json").exists()
