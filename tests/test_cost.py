from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fewtune.decide.cost import (
    PRICE_KEYS,
    MethodCost,
    break_even,
    format_usd,
    load_price_table,
    method_cost,
)
from fewtune.errors import ConfigError


def test_the_guides_cost_table_reproduces() -> None:
    # Few-shot: $0 setup + $0.01/request; fine-tuning: $500 setup + $0.005/request.
    few_shot = MethodCost(setup=0, per_request=0.01)
    fine_tuned = MethodCost(setup=500, per_request=0.005)
    assert few_shot.total(1_000_000) == pytest.approx(10_000)
    assert fine_tuned.total(1_000_000) == pytest.approx(5_500)
    result = break_even(few_shot, fine_tuned)
    assert result.requests == pytest.approx(100_000)
    assert few_shot.total(100_000) == pytest.approx(fine_tuned.total(100_000))


BREAK_EVEN_CASES = [
    # (prompt setup, prompt per request, tuned setup, tuned per request, requests or None, words in reason)
    ("pays back", 0, 0.01, 500, 0.005, 100_000, "saved per request"),
    ("never: tuned request dearer", 0, 0.01, 500, 0.02, None, "never"),
    ("never: same per request", 100, 0.01, 500, 0.01, None, "never"),
    ("cheaper from the start", 500, 0.01, 100, 0.005, 0, "first request"),
    ("cheaper setup, dearer requests", 500, 0.01, 100, 0.02, 0, "after 40,000 requests"),
    ("same setup and price", 100, 0.01, 100, 0.01, None, "never"),
]


@pytest.mark.parametrize(
    "case, p_setup, p_request, t_setup, t_request, requests, words",
    BREAK_EVEN_CASES,
    ids=[c[0] for c in BREAK_EVEN_CASES],
)
def test_break_even(
    case: str,
    p_setup: float,
    p_request: float,
    t_setup: float,
    t_request: float,
    requests: float | None,
    words: str,
) -> None:
    result = break_even(MethodCost(p_setup, p_request), MethodCost(t_setup, t_request))
    if requests is None:
        assert result.requests is None
    else:
        assert result.requests == pytest.approx(requests)
    assert words in result.reason


def test_every_default_price_has_a_value_and_a_source() -> None:
    table = load_price_table()
    assert table.preset == "self-hosted-cpu" and table.pricing == "self-hosted"
    for key, entry in table.to_dict().items():
        assert key in PRICE_KEYS
        assert entry["source"].strip(), f"{key} has no source"


PRESET_CASES = [
    # (--costs, device, preset, pricing, serving $/hour)
    (None, None, "self-hosted-cpu", "self-hosted", 0.08925),
    (None, "cuda:0", "self-hosted-gpu", "self-hosted", 1.006),
    ("auto", "cpu", "self-hosted-cpu", "self-hosted", 0.08925),
    ("hosted-api", "cpu", "hosted-api", "hosted-api", 0.08925),
    ("self-hosted-gpu", "cpu", "self-hosted-gpu", "self-hosted", 1.006),
]


@pytest.mark.parametrize("costs, device, preset, pricing, hourly", PRESET_CASES)
def test_presets(costs: str | None, device: str | None, preset: str, pricing: str, hourly: float) -> None:
    table = load_price_table(costs, device)
    assert (table.preset, table.pricing, table.serving_dollars_per_hour) == (preset, pricing, hourly)


def test_user_file_overrides_a_preset_and_records_itself_as_source(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "preset": "hosted-api",
                "engineer_dollars_per_hour": 120,
                "labelling_dollars_per_example": {"value": 0, "source": "already labelled"},
            }
        )
    )
    table = load_price_table(str(path))
    assert table.preset == "hosted-api" and table.pricing == "hosted-api" and table.file == str(path)
    assert table.engineer_dollars_per_hour == 120.0
    assert table.sources["engineer_dollars_per_hour"] == str(path)
    assert table.sources["labelling_dollars_per_example"] == "already labelled"
    assert table.training_dollars_per_million_tokens == 3.0  # from the preset


BAD_FILES = [
    ("unknown key", "engineer_rate: 5\n", "unknown price key 'engineer_rate'"),
    ("not a number", "engineer_dollars_per_hour: lots\n", "engineer_dollars_per_hour must be a number"),
    ("negative", "engineer_dollars_per_hour: -1\n", "must be 0 or more"),
    ("bad pricing", "pricing: barter\n", "pricing must be one of"),
    ("bad preset", "preset: cheap\n", "unknown preset 'cheap'"),
    ("invalid yaml", "a: [1,\n", "invalid YAML"),
    ("not a mapping", "- 1\n", "expected a mapping"),
    ("zero utilization", "serving_utilization: 0\n", "serving_utilization must be in (0, 1]"),
]


@pytest.mark.parametrize("case, text, message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_price_files_are_one_line_errors(tmp_path: Path, case: str, text: str, message: str) -> None:
    path = tmp_path / "costs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_price_table(str(path))
    assert message in str(info.value)


def test_missing_price_file_names_the_presets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hosted-api"):
        load_price_table(str(tmp_path / "nope.yaml"))


ROW_PROMPT = {
    "method": "few-shot",
    "name": "few-shot k=8",
    "shots": 8,
    "train_examples": 0,
    "prompt_tokens_mean": 300.0,
    "output_tokens_mean": 1.0,
    "throughput_rows_per_second": 4.0,
    "latency_ms": {"mean": 300.0},
    "train_seconds": None,
}
ROW_LORA = {
    "method": "lora",
    "name": "lora n=200",
    "shots": 0,
    "train_examples": 200,
    "prompt_tokens_mean": 50.0,
    "output_tokens_mean": 1.0,
    "throughput_rows_per_second": 20.0,
    "latency_ms": {"mean": 100.0},
    "train_seconds": 3600.0,
    "train_tokens_per_second": 250.0,
}
ROW_LORA_SHOTS = {**ROW_LORA, "method": "lora+few-shot", "name": "lora+few-shot n=200 k=8", "shots": 8}

METHOD_COST_CASES = [
    # (row, preset, setup, per request)
    # self-hosted CPU: $0.08925/h / 3600 / 4 rows/s; setup 8 h x $95
    ("prompt self-hosted", ROW_PROMPT, None, 8 * 95, 0.08925 / 3600 / 4),
    # 40 h x $95 + 200 x $0.10 + 1 h x $0.08925
    ("lora self-hosted", ROW_LORA, None, 40 * 95 + 20 + 0.08925, 0.08925 / 3600 / 20),
    ("lora+few-shot pays both", ROW_LORA_SHOTS, None, 48 * 95 + 20 + 0.08925, 0.08925 / 3600 / 20),
    # hosted: (300 x $0.15 + 1 x $0.60) / 1e6
    ("prompt hosted", ROW_PROMPT, "hosted-api", 8 * 95, (300 * 0.15 + 0.60) / 1e6),
    # fine-tuned prices (50 x $0.30 + 1 x $1.20) / 1e6; training 3600 s x 250 tok/s = 0.9M tokens x $3
    ("lora hosted", ROW_LORA, "hosted-api", 40 * 95 + 20 + 0.9 * 3.0, (50 * 0.30 + 1.20) / 1e6),
]


@pytest.mark.parametrize(
    "case, row, preset, setup, per_request", METHOD_COST_CASES, ids=[c[0] for c in METHOD_COST_CASES]
)
def test_method_cost(case: str, row: dict, preset: str | None, setup: float, per_request: float) -> None:
    cost = method_cost(row, load_price_table(preset))
    assert cost.setup == pytest.approx(setup)
    assert cost.per_request == pytest.approx(per_request)
    assert sum(cost.setup_breakdown.values()) == pytest.approx(setup)
    assert cost.basis


def test_self_hosted_falls_back_to_latency_without_throughput() -> None:
    row = {**ROW_PROMPT, "throughput_rows_per_second": None}
    cost = method_cost(row, load_price_table())
    assert cost.per_request == pytest.approx(0.08925 / 3600 * 0.3)
    assert "latency" in cost.basis


@pytest.mark.parametrize(
    "value, text",
    [
        (0, "$0"),
        (5500, "$5,500"),
        (12.345, "$12.35"),
        (0.01, "$0.010"),
        (0.0000071, "$0.0000071"),
        (-3, "-$3.00"),
    ],
)
def test_format_usd(value: float, text: str) -> None:
    assert format_usd(value) == text
