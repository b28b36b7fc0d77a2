"""Inputs that look odd but are valid, read correctly: YAML values as their settings' types, lone UTF-16
surrogates as the replacement character (the bad ones are the corpus in test_bad_inputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewtune.config import build_config
from fewtune.data.load import read_json_line


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"lora": {"lr": "5e-4"}}, ("lora", "lr", 0.0005)),  # PyYAML reads 5e-4 as text
        ({"cost": {"volume_per_day": "5000"}}, ("cost", "volume_per_day", 5000)),
        ({"prompt": {"shots": 5}}, ("prompt", "shots", [5])),
        ({"lora": {"train_sizes": 100}}, ("lora", "train_sizes", [100])),
        ({"prompt": {"shots": ["0", "8"]}}, ("prompt", "shots", [0, 8])),
        ({"seed": "7"}, ("run", "seed", 7)),
        ({"model": 123}, ("run", "model", "123")),
    ],
)
def test_yaml_values_are_read_as_their_settings_types(values: dict, expected: tuple) -> None:
    cfg = build_config(values, {})
    section, key, value = expected
    got = getattr(cfg if section == "run" else getattr(cfg, section), key)
    assert got == value and type(got) is type(value)


def test_a_lone_surrogate_is_read_as_the_replacement_character() -> None:
    record = read_json_line('{"text": "bad \\ud83d here", "label": ["x\\udc00"]}', Path("f.jsonl"), 1)
    assert record == {"text": "bad \ufffd here", "label": ["x\ufffd"]}
    json.dumps(record, ensure_ascii=False).encode("utf-8")  # writable as UTF-8


def test_unknown_settings_given_in_code_are_one_line_errors() -> None:
    from fewtune.config import build_config
    from fewtune.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown keys in settings section 'prompt': shot"):
        build_config(None, {"prompt": {"shot": [0, 5]}})
    with pytest.raises(ConfigError, match="unknown settings section 'prompts'"):
        build_config(None, {"prompts": {"shots": [0, 5]}})
    assert build_config(None, {"run": {"seed": 3}, "prompt": {"shots": [0, 2]}}).seed == 3
