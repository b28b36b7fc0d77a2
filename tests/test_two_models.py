"""Two models in one run: the prompting rows asked over HTTP (a real ``fewtune serve`` on loopback, tiny
model), LoRA trained on the local model; priced from token usage; a re-run sends no request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_jsonl
from rich.console import Console
from servers import serving
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.base import Backend
from fewtune.backends.endpoint import is_endpoint
from fewtune.backends.hf import HFBackend
from fewtune.config import RunConfig, build_config
from fewtune.embeddings import FakeEmbedder
from fewtune.errors import ConfigError
from fewtune.results.run_folder import read_analysed
from fewtune.run.loaders import load_backend
from fewtune.serve.adapters import AdapterSet
from fewtune.serve.app import create_app
from fewtune.serve.engine import Engine

KEY, KEY_ENV, SERVED = "sk-two-models-test", "FEWTUNE_TWO_MODELS_KEY", "tiny-served"
WORDS = ("great", "fun", "dull", "tired", "fine", "bad")


def rows(count: int, start: int = 0) -> list[dict[str, str]]:
    return [
        {"text": f"the film is {WORDS[i % len(WORDS)]} {i}", "label": "positive" if i % 2 else "negative"}
        for i in range(start, start + count)
    ]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    tokenizer = tiny_tokenizer()
    engine = Engine(AdapterSet(tiny_model(tokenizer, sliding_window=512), tokenizer, SERVED), batch_wait_ms=5)
    with serving(create_app(engine, api_key=KEY)) as url:
        yield f"{url}/v1#{SERVED}"


def config(tmp_path: Path, **run: object) -> RunConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows(16))
    test = write_jsonl(tmp_path / "test.jsonl", rows(6, start=40))
    return build_config(
        None,
        {
            "run": {"out": str(tmp_path / "run"), "api_key_env": KEY_ENV, **run},
            "data": {"data": str(pool), "test": str(test)},
            "prompt": {"shots": [0, 2], "demo_selection": ["random"]},
            "lora": {"train_sizes": [4], "epochs": 1, "batch_size": 4},
            "eval": {"methods": ["zero-shot", "few-shot", "lora"], "latency_requests": 1},
        },
    )


def backends(cfg: RunConfig, console: Console) -> Backend:
    """The endpoint through fewtune's own loader; the local model is the tiny one the server also runs."""
    if is_endpoint(cfg.model):
        return load_backend(cfg, console)
    tokenizer = tiny_tokenizer()
    return HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer, source="tiny")


def run(cfg: RunConfig, overwrite: bool = False) -> dict:
    from fewtune.cli.runner import run as run_fewtune

    folder = run_fewtune(cfg, Console(quiet=True), backends, lambda c, k: FakeEmbedder(dim=64), overwrite)
    return read_analysed(folder)


def test_prompting_over_http_and_lora_locally_in_one_report(
    tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setattr("fewtune.training.lora.matmul_peak_flops", lambda *a, **k: 1e12)
    local = run(config(tmp_path / "local"))
    results = run(config(tmp_path / "two", prompt_model=endpoint))
    served = results["prompt_model"]
    assert served["scoring_mode"] == "loglik" and served["requests_sent"] > 0
    assert KEY not in (tmp_path / "two" / "run" / "results.json").read_text()
    assert KEY not in (tmp_path / "two" / "run" / "config.yaml").read_text()
    by_name = {row["name"]: row for row in results["methods"]}
    for row in local["methods"]:  # the same weights answer the prompting rows: the same accuracy
        assert by_name[row["name"]]["accuracy"] == pytest.approx(row["accuracy"])
    prompting = [row for row in results["methods"] if row["method"] != "lora"]
    assert all(row["model"] == endpoint and row["pricing"] == "hosted-api" for row in prompting)
    assert all("prompt tokens x $" in row["costs"]["per_request_basis"] for row in prompting)
    lora = by_name["lora n=4"]
    assert lora["model"] == results["model"] and "pricing" not in lora
    assert "requests/s measured" in lora["costs"]["per_request_basis"]
    assert results["recommendation"]["headline"]
    report = (tmp_path / "two" / "run" / "report.md").read_text()
    assert f"Prompting rows on {endpoint}" in report and f"zero-shot on {endpoint}" in report
    # The same command again (--overwrite keeps the response cache): not one request goes out.
    again = run(config(tmp_path / "two", prompt_model=endpoint), overwrite=True)
    assert again["prompt_model"]["requests_sent"] == 0
    assert [r["accuracy"] for r in again["methods"]] == [r["accuracy"] for r in results["methods"]]
    # Latency is not a cache lookup's: the re-run reports the single requests timed the first time.
    timed = [r["latency_ms"] for r in results["methods"] if r["method"] != "lora"]
    assert [r["latency_ms"] for r in again["methods"] if r["method"] != "lora"] == timed
    speed = [r["throughput_rows_per_second"] for r in results["methods"] if r["method"] != "lora"]
    assert [r["throughput_rows_per_second"] for r in again["methods"] if r["method"] != "lora"] == speed
    assert all(t["requests"] > 0 and t["p50"] > 0 for t in timed)


def test_lora_on_an_endpoint_is_refused_before_anything_loads(tmp_path: Path, endpoint: str) -> None:
    def never(cfg: RunConfig, console: Console) -> Backend:
        raise AssertionError("a model was loaded")

    from fewtune.cli.runner import run as run_fewtune

    with pytest.raises(ConfigError, match="LoRA needs a local model"):
        run_fewtune(config(tmp_path, model=endpoint), Console(quiet=True), never)


def test_an_extraction_run_asks_the_endpoint_and_trains_locally(
    tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from task_helpers import extraction_rows

    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setattr("fewtune.training.lora.matmul_peak_flops", lambda *a, **k: 1e12)

    def extraction(folder: Path, **run: object) -> RunConfig:
        cfg = config(folder, **run)
        write_jsonl(Path(cfg.data.data), extraction_rows(8))
        write_jsonl(Path(cfg.data.test or ""), extraction_rows(3, start=50))
        cfg.data.task = "extraction"
        cfg.prompt.shots = [0, 1]
        return cfg

    local = run(extraction(tmp_path / "local"))
    results = run(extraction(tmp_path / "two", prompt_model=endpoint))
    assert results["prompt_model"]["requests_sent"] > 0 and results["task"]["name"] == "extraction"
    by_name = {row["name"]: row for row in results["methods"]}
    for row in local["methods"]:  # the same weights answer the prompting rows: the same outputs
        assert by_name[row["name"]]["primary"]["value"] == pytest.approx(row["primary"]["value"])

    def outputs(folder: Path) -> dict[tuple[str, int], str]:
        lines = (folder / "run" / "predictions.jsonl").read_text().splitlines()
        return {(p["name"], p["row"]): p["output"] for p in map(json.loads, lines) if p["method"] != "lora"}

    answered = outputs(tmp_path / "two")
    assert answered == outputs(tmp_path / "local") and len(set(answered.values())) > 1
    prompting = [row for row in results["methods"] if row["method"] != "lora"]
    assert all(row["model"] == endpoint and row["pricing"] == "hosted-api" for row in prompting)
    assert by_name["lora n=4"]["model"] == results["model"] and "pricing" not in by_name["lora n=4"]
    assert all("prompt tokens x $" in row["costs"]["per_request_basis"] for row in prompting)
    report = (tmp_path / "two" / "run" / "report.md").read_text()
    assert f"Prompting rows on {endpoint}" in report and f"zero-shot on {endpoint}" in report
