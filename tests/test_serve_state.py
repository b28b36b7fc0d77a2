"""Where ``fewtune serve`` keeps its state (``--state-dir``: the run folder, else the user's data folder,
never the current folder), ``--no-finetune-api``, the fine-tuning limits' flags, and answers decoded
without special tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tiny import tiny_tokenizer
from tokenizers import AddedToken

from fewtune.backends.generation import decode_answer, special_ids
from fewtune.errors import ConfigError
from fewtune.serve.launch import settings_from_cli

COMMON: dict[str, Any] = dict(
    adapter=[], host="127.0.0.1", port=8000, api_key="k", no_auth=False, request_log=None,
    served_model_name=None, max_batch=4, batch_wait_ms=5,
)  # fmt: skip


def test_a_bare_model_keeps_its_state_in_the_user_data_folder_not_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started_in = tmp_path / "anywhere"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    settings = settings_from_cli(None, model=str(tmp_path / "models" / "tiny-base"), **COMMON)
    home = tmp_path / "data" / "fewtune" / "serve" / "tiny-base"
    assert settings.request_log == home / "requests.jsonl"
    assert settings.finetune_dir == home / "finetune"
    given = settings_from_cli(None, model="m", state_dir=tmp_path / "state", **COMMON)
    assert given.request_log == tmp_path / "state" / "requests.jsonl"
    assert given.finetune_dir == tmp_path / "state" / "finetune"
    assert list(started_in.iterdir()) == []
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=r"--state-dir .* is a file"):
        settings_from_cli(None, model="m", state_dir=tmp_path / "a-file", **COMMON)


def test_the_fine_tuning_api_can_be_turned_off_and_its_limits_are_flags() -> None:
    assert settings_from_cli(None, model="m", no_finetune_api=True, **COMMON).finetune_dir is None
    limits = settings_from_cli(None, model="m", max_jobs=2, max_train_tokens=512, **COMMON).finetune_limits
    assert (limits.max_jobs, limits.max_train_tokens) == (2, 512)
    with pytest.raises(ConfigError, match="--max-train-steps must be a whole number of at least 1, got 0"):
        settings_from_cli(None, model="m", max_train_steps=0, **COMMON)


def test_the_app_without_the_fine_tuning_api_answers_404_there() -> None:
    from fastapi.testclient import TestClient
    from tiny import tiny_model

    from fewtune.serve.adapters import AdapterSet
    from fewtune.serve.app import create_app
    from fewtune.serve.engine import Engine

    tokenizer = tiny_tokenizer()
    engine = Engine(AdapterSet(tiny_model(tokenizer), tokenizer, "tiny-base"))
    with TestClient(create_app(engine, finetune=None), base_url="http://localhost") as client:
        assert client.get("/v1/files").status_code == 404
        assert client.post("/v1/fine_tuning/jobs", json={}).status_code == 404


def test_answers_are_decoded_without_added_special_tokens() -> None:
    tokenizer = tiny_tokenizer()
    added = [AddedToken("<start_of_image>", special=False), AddedToken("<unused0>", special=True)]
    tokenizer.backend_tokenizer.add_tokens(added)  # as Gemma 3's tokenizer.json has them
    image, unused = tokenizer.convert_tokens_to_ids(["<start_of_image>", "<unused0>"])
    words = tokenizer("great fun", add_special_tokens=False).input_ids
    answer = [image, unused, *words, tokenizer.eos_token_id]
    assert "<start_of_image>" in tokenizer.decode(answer, skip_special_tokens=True)  # what was served
    assert {image, unused, tokenizer.eos_token_id} <= special_ids(tokenizer)
    assert decode_answer(tokenizer, answer) == "great fun"


def test_gemmas_start_of_image_is_not_written_into_an_answer() -> None:
    """The built-in model's tokenizer writes ``<start_of_image>`` out even with skip_special_tokens=True
    (it is not among all_special_ids); the served answer must not (skipped where the model is not cached)."""
    from fewtune.backends.models import CACHE_FORMAT, cache_dir

    folder = cache_dir() / "models" / f"gemma-3-270m-q4_k_m-{CACHE_FORMAT}"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the built-in model is not cached here")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    image = tokenizer.convert_tokens_to_ids("<start_of_image>")
    words = tokenizer("positive", add_special_tokens=False).input_ids
    assert "<start_of_image>" in tokenizer.decode([image, *words], skip_special_tokens=True)  # the bug
    assert decode_answer(tokenizer, [image, *words]) == "positive"
