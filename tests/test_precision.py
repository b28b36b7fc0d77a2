"""--precision: auto follows the hardware; bf16 on a CPU is float32 weights under autocast with the output
layer, log-softmax and label scores in float32, recorded on every row; a bf16 adapter is not merged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends import precision
from fewtune.backends.hf import HFBackend
from fewtune.backends.precision import Precision, mark, of_model
from fewtune.config import LoraArgs
from fewtune.data.load import Example
from fewtune.prompts.template import PromptTemplate
from fewtune.training.lora import Lora

TEMPLATE = PromptTemplate(("negative", "positive"))
PROMPTS = [TEMPLATE.render(f"the film is {w} number {i}") for i in range(6) for w in ("great", "dull")]


def _backend(chosen: Precision) -> HFBackend:
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    mark(model, chosen)
    return HFBackend(model, tokenizer, source="tiny")


def test_auto_is_bf16_exactly_where_the_cpu_has_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: True)
    auto = Precision.of("auto", "cpu")
    assert (auto.weights, auto.autocast, auto.name) == (torch.float32, torch.bfloat16, "bfloat16")
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: False)
    assert Precision.of("auto", "cpu") == Precision("cpu", torch.float32)
    assert Precision.of("fp32", "cpu").name == "float32"
    assert Precision.of("bf16", "cpu").mixed  # asked for: checked before the run (training/memory.py)


def test_bf16_scores_come_from_a_float32_head_and_agree_with_float32() -> None:
    fp32 = _backend(Precision("cpu", torch.float32))
    bf16 = _backend(Precision("cpu", torch.float32, torch.bfloat16))
    assert bf16.describe()["precision"] == "bfloat16" and fp32.describe()["precision"] == "float32"
    hidden = torch.randn(3, fp32.model.config.hidden_size)
    exact = fp32.logits(hidden)
    with bf16.precision.compute():  # the head stays float32 inside a bf16 block
        assert torch.equal(bf16.logits(hidden), exact)
        picked = bf16.token_logits(hidden, torch.tensor([5, 7]))  # bf16 would be off by ~1e-3
        torch.testing.assert_close(picked, exact[:, [5, 7]], rtol=1e-5, atol=1e-6)
    choices = [" negative", " positive"]
    a = fp32.score_choices(PROMPTS, choices, prefix=TEMPLATE.prefix(()))
    b = bf16.score_choices(PROMPTS, choices, prefix=TEMPLATE.prefix(()))
    assert not np.array_equal(a, b)  # the decoder did run in bf16
    np.testing.assert_allclose(a, b, atol=0.05 * np.abs(a).max())


def test_a_bf16_adapter_runs_beside_the_base_and_records_its_precision(tmp_path: Path) -> None:
    base = _backend(Precision("cpu", torch.float32, torch.bfloat16))
    train = [Example(f"the film is {w} number {i}", w) for i in range(8) for w in ("positive", "negative")]
    args = LoraArgs(epochs=1, batch_size=4, lr=5e-3)
    predictor = Lora(base, TEMPLATE, args, tmp_path / "adapter", seed=0).fit(train)
    trained = predictor.backend
    assert isinstance(trained, HFBackend)
    assert type(trained.model).__name__.startswith("Peft")  # not merged into bf16-rounded weights
    assert of_model(trained.model) == base.precision
    assert predictor.fitted.precision == "bfloat16"  # type: ignore[union-attr]
    assert next(p for n, p in trained.model.named_parameters() if "lora_A" in n).dtype == torch.float32
