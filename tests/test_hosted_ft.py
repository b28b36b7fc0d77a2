"""hosted-ft: a classification run fine-tunes through a fine-tuning API and scores the model there, here
against a real ``fewtune serve`` (its production wiring, over a tiny model) on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from conftest import write_jsonl
from rich.console import Console
from servers import serving

from fewtune.backends.endpoint import Unauthorized, endpoint_spec
from fewtune.cli.runner import run
from fewtune.config import RunConfig, build_config
from fewtune.data.split import stratified_sample
from fewtune.decide.cost import load_price_table, method_cost
from fewtune.embeddings import FakeEmbedder
from fewtune.errors import ConfigError, ModelError
from fewtune.hosted.api import HostedAPI, JobFailed, NoFineTuningAPI
from fewtune.prompts.template import PromptTemplate
from fewtune.run.events import QuietEvents, TrainStep
from fewtune.run.hosted_rows import chat_jsonl
from fewtune.run.loaders import load_backend
from fewtune.run.pipeline import run_pipeline
from fewtune.run.plan import load_data
from fewtune.serve.app import create_app
from fewtune.serve.launch import build_engine, build_finetune, settings_from_cli

T = TypeVar("T")
TRAIN = 12


def keyword_data(folder: Path) -> tuple[Path, Path]:
    words = ("good", "bad", "meh")
    pool = [{"text": f"this is {w} number {i}", "label": w} for i in range(20) for w in words]
    test = [{"text": f"quite {w} indeed {i}", "label": w} for i in range(4) for w in words]
    return write_jsonl(folder / "pool.jsonl", pool), write_jsonl(folder / "test.jsonl", test)


def fake_embedder(cfg: RunConfig, events: Any) -> FakeEmbedder:
    return FakeEmbedder(dim=4096)


@contextmanager
def fewtune_serve(
    model_dir: Path, state: Path, *, broken: bool = False, key: str | None = None
) -> Iterator[Any]:
    """``fewtune serve --model MODEL_DIR`` as the CLI builds it, on a free port; yields (url, served name)."""
    settings = settings_from_cli(
        None,
        model=str(model_dir),
        adapter=[],
        host="127.0.0.1",
        port=8000,
        api_key=key,
        no_auth=key is None,
        request_log=state / "requests.jsonl",
        served_model_name=None,
        max_batch=8,
        batch_wait_ms=5,
        finetune_dir=state / "finetune",
    )
    engine = build_engine(settings)
    finetune = build_finetune(settings, engine)
    if broken:

        def cannot(*_: Any) -> Any:
            raise ModelError("no memory left for a training copy of the model")

        finetune.base_factory = cannot
    app = create_app(engine, api_key=key, request_log=settings.request_log, finetune=finetune)
    with serving(app) as url:
        yield f"{url}/v1", settings.served_name


def run_config(folder: Path, endpoint: str, methods: list[str] | None = None) -> RunConfig:
    pool, test = keyword_data(folder)
    return build_config(
        None,
        {
            "run": {"out": str(folder / "run"), "api_key_env": "none"},
            "data": {"data": str(pool), "test": str(test)},
            "prompt": {"shots": [0]},
            "lora": {"train_sizes": [TRAIN]},
            "eval": {"methods": methods or ["zero-shot", "hosted-ft"], "latency_requests": 2},
            "hosted": {"endpoint": endpoint, "n_epochs": 1, "poll_seconds": 0.05},
        },
    )


def tiny_run(cfg: RunConfig, model_dir: Path) -> RunConfig:
    cfg.model = str(model_dir)
    return cfg


def jobs(url: str) -> list[Any]:
    return list(openai.OpenAI(base_url=url, api_key="no-key", max_retries=0).fine_tuning.jobs.list())


def predictions(folder: Path) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for line in (folder / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["name"], []).append(row)
    return rows


def test_a_run_fine_tunes_through_fewtune_serve_and_scores_on_the_same_rows(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with fewtune_serve(tiny_model_dir, tmp_path / "serve") as (url, served):
        cfg = tiny_run(run_config(tmp_path, f"{url}#{served}"), tiny_model_dir)
        folder = run(cfg, Console(quiet=True), load_backend, fake_embedder)
        (job,) = jobs(url)
        client = openai.OpenAI(base_url=url, api_key="no-key", max_retries=0)
        uploaded = client.files.content(job.training_file).read()
        validation = client.files.content(job.validation_file).read()
    results = json.loads((folder / "results.json").read_text())
    row = next(m for m in results["methods"] if m["method"] == "hosted-ft")
    assert results["status"] == "complete" and row["name"] == f"hosted-ft n={TRAIN}"
    assert row["model"] == job.fine_tuned_model == f"ft:{served}:local:fewtune:{job.id}"
    assert row["fine_tuning_job"] == job.id and row["pricing"] == "hosted-api"
    assert row["trained_tokens"] == job.trained_tokens > 0 and row["train_examples"] == TRAIN
    assert (
        row["label_scoring"] == "loglik"
        and row["prompt_tokens_mean"] > 0
        and row["latency_ms"]["requests"] == 2
    )
    # the training file holds exactly the rows a LoRA adapter of this size trains on, in its prompts
    data = load_data(cfg)
    train, rest = stratified_sample(data.pool, TRAIN, cfg.seed)
    assert uploaded == chat_jsonl(train, PromptTemplate(tuple(data.labels)))
    sent = {json.loads(line)["messages"][0]["content"] for line in validation.decode().splitlines()}
    assert len(sent) == len(rest) == 60 - TRAIN and not sent & {r["text"] for r in map(vars, data.test)}
    # scored on the same test rows as the other rows
    by_name = predictions(folder)
    hosted, zero = by_name[row["name"]], by_name["zero-shot"]
    assert [p["text"] for p in hosted] == [p["text"] for p in zero] and len(hosted) == 12
    assert row["accuracy"] == sum(p["correct"] for p in hosted) / len(hosted)
    state = json.loads((folder / "adapters" / f"hosted-ft-n{TRAIN}" / "job.json").read_text())
    assert state["job"] == job.id and state["training_file"] == job.training_file
    saved = folder / "adapters" / f"hosted-ft-n{TRAIN}" / row["hosted_result_files"][0]
    comparison = json.loads(saved.read_text())
    assert comparison["object"] == "fewtune.fine_tuning.comparison" and comparison["job"] == job.id
    assert row["hosted_comparison"]["verdict"] == comparison["verdict"]
    assert comparison["validation"]["rows"] == len(rest) and comparison["training"]["examples"] == TRAIN
    analysis = json.loads((folder / "analysis.json").read_text())
    assert (
        row["name"] in json.dumps(analysis["methods"]) and "hosted-ft" in (folder / "report.md").read_text()
    )


class StopAtFirstStep(QuietEvents):
    """Ctrl-C while the job trains: at the first training step the run is told about."""

    def training(self, title: str, fit: Callable[[TrainStep], T]) -> T:
        def on_step(step: int, total: int, loss: float) -> None:
            raise KeyboardInterrupt

        return fit(on_step)


def test_an_interrupted_run_follows_the_same_job_after_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    with fewtune_serve(tiny_model_dir, tmp_path / "serve") as (url, served):
        cfg = tiny_run(run_config(tmp_path, f"{url}#{served}"), tiny_model_dir)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(cfg, StopAtFirstStep(), load_backend, fake_embedder)
        folder = Path(cfg.out or "")
        assert json.loads((folder / "results.json").read_text())["status"] == "interrupted"
        recorded = json.loads((folder / "adapters" / f"hosted-ft-n{TRAIN}" / "job.json").read_text())["job"]
        run_pipeline(cfg, QuietEvents(), load_backend, fake_embedder, resume=True)
        assert [job.id for job in jobs(url)] == [recorded]  # no second job was created
    results = json.loads((folder / "results.json").read_text())
    (row,) = [m for m in results["methods"] if m["method"] == "hosted-ft"]
    assert results["status"] == "complete" and row["fine_tuning_job"] == recorded


def no_model(cfg: RunConfig, events: Any) -> Any:
    raise AssertionError("a run refused by its settings loaded a model")


def test_hosted_ft_without_an_endpoint_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    cfg = run_config(tmp_path, "http://127.0.0.1:1/v1#m")
    cfg.hosted.endpoint = None
    with pytest.raises(ConfigError, match="--methods hosted-ft needs --hosted-endpoint URL#BASE_MODEL"):
        run_pipeline(cfg, QuietEvents(), no_model, fake_embedder)
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


def test_hosted_ft_on_an_open_output_task_is_one_line(tmp_path: Path) -> None:
    rows = [{"text": f"book a table for {i}", "target": f"party_size={i}"} for i in range(30)]
    cfg = run_config(tmp_path, "http://127.0.0.1:1/v1#m")
    cfg.data.data = str(write_jsonl(tmp_path / "gen.jsonl", rows))
    cfg.data.test, cfg.data.task, cfg.data.label_field = None, "generation", "target"
    with pytest.raises(ConfigError, match="hosted-ft is built for classification so far; generation runs"):
        run_pipeline(cfg, QuietEvents(), no_model, fake_embedder)


def test_an_endpoint_without_a_fine_tuning_api_is_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_from_cli(
        None, model=str(tiny_model_dir), adapter=[], host="127.0.0.1", port=8000, api_key=None, no_auth=True,
        request_log=tmp_path / "r.jsonl", served_model_name=None, max_batch=8, batch_wait_ms=5,
    )  # fmt: skip
    with serving(create_app(build_engine(settings))) as url:  # fewtune serve before it had the API
        api = HostedAPI(endpoint_spec(f"{url}/v1#{settings.served_name}", "none"))
        with pytest.raises(NoFineTuningAPI) as caught:
            api.upload("train.jsonl", b"{}\n")
    message = str(caught.value)
    assert (
        message.startswith(f"{url}/v1/files: HTTP 404") and "this endpoint has no fine-tuning API" in message
    )
    assert "\n" not in message


def test_a_failed_job_stops_the_run_with_its_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    with fewtune_serve(tiny_model_dir, tmp_path / "serve", broken=True) as (url, served):
        cfg = tiny_run(run_config(tmp_path, f"{url}#{served}", ["hosted-ft"]), tiny_model_dir)
        with pytest.raises(JobFailed) as caught:
            run_pipeline(cfg, QuietEvents(), load_backend, fake_embedder)
        (job,) = jobs(url)
    assert str(caught.value) == (
        f"hosted-ft n={TRAIN}: fine-tuning job {job.id} at {url} failed: "
        "no memory left for a training copy of the model (training_failed)"
    )


def test_a_refused_key_names_its_variable(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FT_KEY", "not-the-key")
    with fewtune_serve(tiny_model_dir, tmp_path / "serve", key="the-key") as (url, served):
        api = HostedAPI(endpoint_spec(f"{url}#{served}", "FT_KEY"))
        with pytest.raises(
            Unauthorized, match=r"/files: the server refused the API key from FT_KEY \(HTTP 401\)"
        ):
            api.upload("train.jsonl", b"{}\n")


def test_hosted_training_is_priced_by_its_trained_tokens() -> None:
    row = {"method": "hosted-ft", "train_examples": 200, "train_seconds": 600.0, "trained_tokens": 1_000_000}
    row.update(prompt_tokens_mean=100.0, output_tokens_mean=1.0, pricing="hosted-api")
    hosted = method_cost(row, load_price_table("hosted-api"))  # type: ignore[arg-type]
    assert hosted.setup_breakdown["training_compute"] == pytest.approx(3.00)  # 1M tokens x $3/M
    assert hosted.per_request == pytest.approx((100 * 0.30 + 1 * 1.20) / 1e6)  # fine-tuned token prices
    by_hour = method_cost(row, load_price_table("self-hosted-cpu"))  # type: ignore[arg-type]
    assert by_hour.setup_breakdown["training_compute"] == pytest.approx(600 / 3600 * 0.08925)
