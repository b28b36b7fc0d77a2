"""--precision: auto follows the hardware (on a CPU with bf16 units: training in bf16, scoring in float32);
bf16 on a CPU is float32 weights under autocast with the output layer, log-softmax and label scores in
float32, recorded on every row; an adapter scored in bf16 is not merged."""

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
    assert (auto.weights, auto.train, auto.score) == (torch.float32, torch.bfloat16, None)
    assert (auto.train_name, auto.name, auto.mixed) == ("bfloat16", "float32", False)
    bf16 = Precision.of("bf16", "cpu")
    assert (bf16.train, bf16.score, bf16.name, bf16.mixed) == (
        torch.bfloat16,
        torch.bfloat16,
        "bfloat16",
        True,
    )
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: False)
    assert Precision.of("auto", "cpu") == Precision("cpu", torch.float32)
    assert Precision.of("fp32", "cpu").name == "float32"


def test_bf16_scores_come_from_a_float32_head_and_agree_with_float32() -> None:
    fp32 = _backend(Precision("cpu", torch.float32))
    bf16 = _backend(Precision("cpu", torch.float32, torch.bfloat16, torch.bfloat16))
    auto = _backend(Precision("cpu", torch.float32, torch.bfloat16))
    assert bf16.describe()["precision"] == "bfloat16" and fp32.describe()["precision"] == "float32"
    hidden = torch.randn(3, fp32.model.config.hidden_size)
    exact = fp32.logits(hidden)
    with bf16.precision.scoring():  # the head stays float32 inside a bf16 block
        assert torch.equal(bf16.logits(hidden), exact)
        picked = bf16.token_logits(hidden, torch.tensor([5, 7]))  # bf16 would be off by ~1e-3
        torch.testing.assert_close(picked, exact[:, [5, 7]], rtol=1e-5, atol=1e-6)
    choices = [" negative", " positive"]
    a = fp32.score_choices(PROMPTS, choices, prefix=TEMPLATE.prefix(()))
    b = bf16.score_choices(PROMPTS, choices, prefix=TEMPLATE.prefix(()))
    assert not np.array_equal(a, b)  # the decoder did run in bf16
    np.testing.assert_allclose(a, b, atol=0.05 * np.abs(a).max())
    assert np.array_equal(
        a, auto.score_choices(PROMPTS, choices, prefix=TEMPLATE.prefix(()))
    )  # scored in fp32


@pytest.mark.parametrize("score_bf16", [True, False])
def test_an_adapter_trains_in_bf16_and_runs_unmerged_only_when_scored_in_bf16(
    tmp_path: Path, score_bf16: bool
) -> None:
    chosen = Precision("cpu", torch.float32, torch.bfloat16, torch.bfloat16 if score_bf16 else None)
    base = _backend(chosen)
    train = [Example(f"the film is {w} number {i}", w) for i in range(8) for w in ("positive", "negative")]
    args = LoraArgs(epochs=1, batch_size=4, lr=5e-3)
    predictor = Lora(base, TEMPLATE, args, tmp_path / "adapter", seed=0).fit(train)
    trained = predictor.backend
    assert isinstance(trained, HFBackend)
    # Scored in bf16, a merged update would be rounded away with W: the adapter runs beside the base.
    assert type(trained.model).__name__.startswith("Peft") is score_bf16
    assert of_model(trained.model) == base.precision
    fields = predictor.fitted.fields()  # type: ignore[union-attr]
    assert fields["precision"] == ("bfloat16" if score_bf16 else "float32")
    assert fields.get("train_precision") == (None if score_bf16 else "bfloat16")
    lora_weights = [p for n, p in trained.model.named_parameters() if "lora_A" in n]
    assert all(p.dtype == torch.float32 for p in lora_weights)


def test_bf16_generation_casts_each_weight_once_not_at_every_step() -> None:
    backend = _backend(Precision("cpu", torch.float32, torch.bfloat16, torch.bfloat16))
    head = list(backend.model.get_output_embeddings().weight.shape)
    with torch.profiler.profile(record_shapes=True) as profiled:
        outputs = backend.generate_batch(PROMPTS[:2], prefix=TEMPLATE.prefix(()), max_new_tokens=8)
    casts = [e for e in profiled.events() if e.name == "aten::_to_copy" and e.input_shapes[:1] == [head]]
    assert max(g.output_tokens for g in outputs) > 2  # several forward passes
    assert len(casts) == 1
