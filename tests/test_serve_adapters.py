"""What ``fewtune serve`` loads as an adapter: LoRA in safetensors, of a capped rank and count, and through
``/v1/load_lora_adapter`` only from inside its adapter roots, with one answer for every path it refuses (a
caller cannot probe the server's disk) and no server path in any answer."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import make_adapter, serving
from tiny import tiny_model, tiny_tokenizer

from fewtune.errors import ConfigError, ModelError
from fewtune.serve.adapters import NOT_LOADABLE, AdapterPolicy, AdapterSet, TooLarge, check_adapter_folder
from fewtune.serve.app import create_app
from fewtune.serve.engine import Engine
from fewtune.serve.launch import settings_from_cli

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - the openai client pulls in one of them
    import httpx  # type: ignore[no-redef]

KEY = "adapter-key-0123"
BASE = "tiny-base"


def _with_rank(source: Path, folder: Path, rank: int) -> Path:
    """A copy of the adapter at ``source`` whose config claims LoRA rank ``rank``."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": rank}))
    return folder


@dataclass
class Disk:
    root: Path
    """The server's one adapter root."""
    outside: Path
    """A folder beside it, holding a valid adapter the server must not load."""
    adapter: Path
    """A valid adapter inside the root."""


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Disk:
    top = tmp_path_factory.mktemp("adapters")
    root, outside = top / "root", top / "outside"
    root.mkdir()
    outside.mkdir()
    tokenizer = tiny_tokenizer()
    adapter = make_adapter(tokenizer, root / "good", seed=3)
    make_adapter(tokenizer, outside / "secret", seed=4)
    pickled = shutil.copytree(adapter, root / "pickled")  # the weights only as adapter_model.bin
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    (root / "no-config").mkdir()
    (root / "no-config" / "adapter_model.safetensors").write_bytes(b"")
    (root / "a-file").write_text("not a folder")
    (root / "bad-config").mkdir()
    (root / "bad-config" / "adapter_config.json").write_text("{not json")
    (root / "bad-config" / "adapter_model.safetensors").write_bytes(b"")
    os.symlink(outside / "secret", root / "link-out")  # a link inside the root to a folder outside
    leaky = shutil.copytree(adapter, root / "leaky-file")
    (leaky / "adapter_model.safetensors").unlink()
    os.symlink(outside / "secret" / "adapter_model.safetensors", leaky / "adapter_model.safetensors")
    _with_rank(adapter, root / "wide", 16)
    _with_rank(adapter, root / "mismatched", 4)  # rank 4 claimed, rank-8 weights: peft cannot load it
    return Disk(root, outside, adapter)


@pytest.fixture(scope="module")
def url(disk: Disk) -> Iterator[str]:
    tokenizer = tiny_tokenizer()
    policy = AdapterPolicy.of([disk.root], max_rank=8, max_adapters=2)
    engine = Engine(AdapterSet(tiny_model(tokenizer, sliding_window=512), tokenizer, BASE, policy=policy))
    with serving(create_app(engine, api_key=KEY)) as served:
        yield served


def _load(url: str, name: str, path: str) -> Any:
    return httpx.post(
        f"{url}/v1/load_lora_adapter",
        json={"lora_name": name, "lora_path": path},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )


def _unload(url: str, name: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=headers)
    assert response.status_code == 200, response.text


def test_every_refused_path_gets_the_same_answer_without_server_paths(url: str, disk: Disk) -> None:
    refused = {
        "missing, relative": "nope",
        "missing, absolute inside": str(disk.root / "nope"),
        "missing, absolute elsewhere": "/no/such/folder",
        "outside the roots, absolute": str(disk.outside / "secret"),
        "outside the roots, by ..": "../outside/secret",
        "a link out of the root": "link-out",
        "a weights file linked from outside": "leaky-file",
        "only adapter_model.bin": "pickled",
        "no adapter_config.json": "no-config",
        "a config that is not JSON": "bad-config",
        "a file": "a-file",
        "the root itself": ".",
        "a system folder": "/etc",
        "a NUL byte": "good\x00",
        "a name too long": "x" * 4000,
    }
    answers = {}
    for why, path in refused.items():
        response = _load(url, "probe", path)
        assert response.status_code == 400, (why, response.text)
        assert str(disk.root.parent) not in response.text, why
        answers[why] = response.json()
    same = {"message": NOT_LOADABLE, "type": "invalid_request_error", "param": "lora_path", "code": None}
    assert all(answer == {"error": same} for answer in answers.values()), answers
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in models["data"]] == [BASE]


def test_adapters_inside_the_root_load_by_relative_or_absolute_path(url: str, disk: Disk) -> None:
    assert _load(url, "by-name", "good").status_code == 200
    assert _load(url, "by-path", str(disk.adapter)).status_code == 200
    _unload(url, "by-name")
    _unload(url, "by-path")


def test_rank_and_count_are_capped(url: str, disk: Disk) -> None:
    wide = _load(url, "wide", "wide")
    assert wide.status_code == 400
    assert (
        wide.json()["error"]["message"] == "LoRA rank 16 is over this server's limit of 8 (--max-lora-rank)"
    )
    assert _load(url, "one", "good").status_code == 200
    assert _load(url, "two", "good").status_code == 200
    third = _load(url, "three", "good")
    assert third.status_code == 400 and "at most 2 adapters" in third.json()["error"]["message"]
    _unload(url, "one")
    _unload(url, "two")


def test_an_adapter_peft_cannot_load_is_refused_without_its_path(url: str, disk: Disk) -> None:
    response = _load(url, "mismatched", "mismatched")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith(f"lora_path: the adapter does not load on {BASE}") and "/" not in message
    assert _load(url, "after", "good").status_code == 200  # the server still loads good ones
    _unload(url, "after")


def test_adapters_served_from_the_start_are_checked_before_the_model_loads(
    disk: Disk, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="a pickle can run code"):
        check_adapter_folder(disk.root / "pickled")
    with pytest.raises(TooLarge, match="rank 16"):
        check_adapter_folder(disk.root / "wide", max_rank=8)
    assert check_adapter_folder(disk.root / "wide") == disk.root / "wide"  # default limit: 64
    common: dict[str, Any] = dict(
        model="m", host="127.0.0.1", port=8000, api_key="k", no_auth=False, request_log=None,
        served_model_name=None, max_batch=4, batch_wait_ms=5,
    )  # fmt: skip
    with pytest.raises(TooLarge, match="rank 16"):
        settings_from_cli(None, adapter=[f"w={disk.root / 'wide'}"], max_lora_rank=8, **common)
    with pytest.raises(ModelError, match=r"adapter_model\.bin is not loaded"):
        settings_from_cli(None, adapter=[f"p={disk.root / 'pickled'}"], **common)
    with pytest.raises(ConfigError, match="over --max-adapters 1"):
        settings_from_cli(None, adapter=[f"a={disk.adapter}", f"b={disk.adapter}"], max_adapters=1, **common)
    with pytest.raises(ConfigError, match=r"--adapter-root .*: no such folder"):
        settings_from_cli(None, adapter=[], adapter_root=[tmp_path / "nope"], **common)
    # The default roots: the folder of each --adapter (and a run folder's adapters/).
    settings = settings_from_cli(None, adapter=[f"g={disk.adapter}"], **common)
    assert settings.adapter_policy.roots == (disk.root.resolve(),)
    assert settings_from_cli(None, adapter=[], **common).adapter_policy.roots == ()
    given = settings_from_cli(None, adapter=[f"g={disk.adapter}"], adapter_root=[disk.outside], **common)
    assert given.adapter_policy.roots == (disk.outside.resolve(),)
