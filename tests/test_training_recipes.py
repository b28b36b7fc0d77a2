"""Issue 20's recipes without a model run: demos for training rows, the hardware checks, full-ft vs LoRA."""

from __future__ import annotations

import numpy as np
import pytest

from fewtune.config import LoraArgs, RunConfig
from fewtune.data.load import Example
from fewtune.decide.cost import MethodCost
from fewtune.decide.evidence import FINE_TUNED, Comparison, MethodEvidence
from fewtune.decide.full_ft import weigh_full_ft
from fewtune.decide.verdict import Situation
from fewtune.errors import ConfigError
from fewtune.prompts.demos import BatchDemos, training_demos, training_draw
from fewtune.training import memory


def _pool(n: int = 40) -> list[Example]:
    return [Example(f"text {i}", "ab"[i % 2]) for i in range(n)]


@pytest.mark.parametrize("selection", ["balanced", "random"])
def test_training_rows_never_see_themselves_among_their_demos(selection: str) -> None:
    pool = _pool()
    train = pool[:20]
    sets = training_demos(train, pool, 4, selection, seed=3)
    assert all(len(demos) == 4 for demos in sets)
    assert all(ex.text not in {d.text for d in demos} for ex, demos in zip(train, sets, strict=True))
    assert len({tuple(d.text for d in demos) for demos in sets}) > 1  # a fresh draw per row
    assert sets == training_demos(train, pool, 4, selection, seed=3)  # seeded


def test_training_demos_drop_the_row_from_a_tiny_pool() -> None:
    pool = _pool(5)
    sets = training_demos(pool, pool, 4, "random", seed=0)
    assert all(ex not in demos for ex, demos in zip(pool, sets, strict=True))


@pytest.mark.parametrize("selection", ["balanced", "random"])
def test_a_batch_draw_is_seeded_by_step_and_never_holds_a_row_of_the_batch(selection: str) -> None:
    pool = _pool()
    draws = BatchDemos(tuple(pool), 4, selection, seed=3)
    texts = [ex.text for ex in pool[:4]]
    first = draws.draw(1, texts)
    assert len(first) == 4 and first == draws.draw(1, texts)  # a resumed run replays the same draw
    assert draws.draw(2, texts) != first  # a fresh draw per batch
    if selection == "balanced":
        assert sorted(d.label for d in first) == ["a", "a", "b", "b"]
    # A batch holding the drawn rows gets a draw from the pool without them.
    assert not {d.text for d in draws.draw(1, [d.text for d in first])} & {d.text for d in first}


def test_the_draw_is_per_batch_for_fixed_selections_and_per_row_otherwise() -> None:
    pool = _pool()
    train = pool[:8]
    assert training_draw(train, pool, 3, "random", 0, "batch") == BatchDemos(tuple(pool), 3, "random", 0)
    assert training_draw(train, pool, 3, "random", 0, "row") == training_demos(train, pool, 3, "random", 0)
    assert training_draw(train, pool, 0, "random", 0, "batch") == [()] * len(train)
    with pytest.raises(ConfigError, match="--demo-draw takes batch, row"):
        LoraArgs(demo_draw="column")


def test_qlora_on_a_cpu_and_bf16_without_bf16_units_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fewtune.backends import precision

    monkeypatch.setattr(memory, "cuda_available", lambda: False)
    cfg = RunConfig()
    cfg.lora.quantize = "nf4"
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as err:
        memory.check_hardware(cfg)
    assert "\n" not in str(err.value)
    cfg.lora.quantize, cfg.lora.precision = "none", "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: False)
    with pytest.raises(ConfigError, match="--precision bf16 needs native bf16") as err:
        memory.check_hardware(cfg)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: True)
    memory.check_hardware(cfg)  # a CPU with AVX-512 BF16 or AMX runs it


def test_full_ft_past_the_free_memory_is_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setattr(memory, "cuda_available", lambda: False)
    monkeypatch.setattr("fewtune.backends.models.resolve_model", lambda spec: tmp_path)
    monkeypatch.setattr(memory, "parameter_count", lambda folder: 1_000_000_000)
    monkeypatch.setattr(memory, "free_bytes", lambda gpu: 8 * 2**30)
    cfg = RunConfig()
    cfg.eval.methods = ["full-ft"]
    with pytest.raises(ConfigError, match=r"1000M parameters\) needs about 27.9 GiB .* 8.0 GiB of RAM"):
        memory.check_hardware(cfg)
    monkeypatch.setattr(memory, "free_bytes", lambda gpu: 64 * 2**30)
    memory.check_hardware(cfg)  # fits: no error


def _evidence(name: str, correct: np.ndarray, stored: int, whole: bool) -> MethodEvidence:
    gold = np.zeros(len(correct))
    stats = np.stack([gold, np.where(correct, 0, 1)], axis=1)
    return MethodEvidence(
        name=name,
        kind=FINE_TUNED,
        score=float(correct.mean()),
        cost=MethodCost(0.0, 0.0),
        train_examples=200,
        stats=stats,
        accuracy=float(correct.mean()),
        stored_bytes=stored,
        whole_model=whole,
    )


def _situation(methods: list[MethodEvidence]) -> Situation:
    return Situation(methods=tuple(methods), volume_per_day=10_000, horizon_days=365)


def test_an_adapter_as_good_as_full_ft_is_what_ships() -> None:
    rng = np.random.default_rng(0)
    lora_right = rng.random(200) < 0.85
    full_right = lora_right.copy()
    full_right[:4] = True  # full-ft a point or two ahead: not shown to be 5 points ahead
    lora = _evidence("lora n=200", lora_right, 3_000_000, False)
    full = _evidence("full-ft n=200", full_right, 1_100_000_000, True)
    out: list[Comparison] = []
    chosen, reasons = weigh_full_ft([lora, full], full, _situation([lora, full]), out)
    assert chosen is lora
    assert "the adapter is the fine-tuned option to ship" in reasons[0]
    assert "0.27% of it" in reasons[0] and "1.02 GiB" in reasons[0]
    assert out and out[0].candidate == "full-ft n=200"


def test_full_ft_well_ahead_of_the_adapter_is_kept() -> None:
    lora_right = np.arange(300) % 2 == 0  # 50%
    full_right = np.arange(300) % 10 != 0  # 90%
    lora = _evidence("lora n=200", lora_right, 3_000_000, False)
    full = _evidence("full-ft n=200", full_right, 1_100_000_000, True)
    chosen, reasons = weigh_full_ft([lora, full], full, _situation([lora, full]), [])
    assert chosen is full
    assert "a size its lead pays for" in reasons[0]
