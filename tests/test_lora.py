from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.hf import HFBackend
from fewtune.config import LoraArgs
from fewtune.data.load import Example
from fewtune.prompts.template import PromptTemplate
from fewtune.results.sections import LocalTraining
from fewtune.training.lora import Lora, _batches, _collate, answer_loss, example_weights

TRAIN = [Example(f"the film is {w} number {i}", w) for i in range(12) for w in ("positive", "negative")]
TEMPLATE = PromptTemplate(("negative", "positive"))


def fit(tmp_path: Path, seed: int = 0, **args: object) -> tuple[HFBackend, object]:
    tokenizer = tiny_tokenizer()
    backend = HFBackend(tiny_model(tokenizer), tokenizer, source="tiny")
    lora_args = LoraArgs(**{"epochs": 2, "batch_size": 4, "lr": 5e-3, **args})  # type: ignore[arg-type]
    return backend, Lora(backend, TEMPLATE, lora_args, tmp_path / "adapter", seed=seed).fit(TRAIN)


def test_loss_covers_answer_tokens_only() -> None:
    ids, mask, predict_at, targets = _collate([([2, 10, 11], [20, 21]), ([2, 12], [22])], pad_id=0)
    assert ids.tolist() == [[2, 10, 11, 20, 21], [2, 12, 22, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # Position p predicts token p+1: the last prompt token predicts the first answer token.
    assert predict_at.tolist() == [[False, False, True, True, False], [False, True, False, False, False]]
    assert targets.tolist() == [20, 21, 22]


def test_training_saves_a_peft_adapter_that_reloads(tmp_path: Path) -> None:
    from peft import PeftModel

    backend, predictor = fit(tmp_path)
    training = predictor.fitted  # type: ignore[attr-defined]
    assert isinstance(training, LocalTraining)
    assert training.train_seconds > 0 and training.adapter_bytes > 0
    assert training.peak_memory_bytes is not None and training.peak_memory_bytes > 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "tiny"
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    # The base backend is untouched: fitting works on a copy.
    assert not any("lora" in name for name, _ in backend.model.named_parameters())
    reloaded = PeftModel.from_pretrained(
        tiny_model(backend.tokenizer), tmp_path / "adapter"
    ).merge_and_unload()
    prompt = "Input: the film is positive number 3\nOutput:"
    merged = HFBackend(reloaded, backend.tokenizer).score_choices([prompt], [" negative", " positive"])
    ours = predictor.backend.score_choices([prompt], [" negative", " positive"])  # type: ignore[attr-defined]
    assert merged == pytest.approx(ours, abs=1e-4)


def test_training_moves_scores_toward_the_labels(tmp_path: Path) -> None:
    backend, predictor = fit(tmp_path, epochs=4)
    texts = [ex.text for ex in TRAIN]
    before = HFBackend(backend.model, backend.tokenizer).score_choices(
        [TEMPLATE.render(t) for t in texts], [" negative", " positive"]
    )
    after = predictor.score(texts)  # type: ignore[attr-defined]
    gold = torch.tensor([TEMPLATE.labels.index(ex.label) for ex in TRAIN])

    def margin(s):
        return float(
            (torch.tensor(s).gather(1, gold[:, None]) - torch.tensor(s).mean(1, keepdim=True)).mean()
        )

    assert margin(after) > margin(before) + 0.1


def test_same_seed_same_adapter(tmp_path: Path) -> None:
    fit(tmp_path / "a", seed=1)
    fit(tmp_path / "b", seed=1)
    fit(tmp_path / "c", seed=2)
    a, b, c = (load_file(tmp_path / x / "adapter" / "adapter_model.safetensors") for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_balanced_weights_give_each_class_the_same_total_weight() -> None:
    labels = ["ham"] * 9 + ["spam"]
    weights = example_weights(labels, balanced=True)
    # scikit-learn's "balanced": n / (classes x count) -> 10 / (2 x 9) and 10 / (2 x 1).
    assert weights[0] == pytest.approx(10 / 18) and weights[-1] == pytest.approx(5.0)
    assert sum(weights[:9]) == pytest.approx(sum(weights[9:]))
    assert example_weights(labels, balanced=False) == [1.0] * 10


def test_class_balanced_sampling_draws_the_rare_class_as_often_as_the_common_one() -> None:
    labels = ["ham"] * 95 + ["spam"] * 5
    lengths = [10] * 100
    rng = random.Random(0)
    drawn = [
        i for _ in range(20) for b in _batches(lengths, 8, rng, example_weights(labels, True)) for i in b
    ]
    spam_share = sum(labels[i] == "spam" for i in drawn) / len(drawn)
    assert len(drawn) == 20 * 100 and 0.45 < spam_share < 0.55
    plain = [i for b in _batches(lengths, 8, random.Random(0)) for i in b]
    assert sorted(plain) == list(range(100))  # without weights: every row once per epoch


def test_answer_loss_weights_tokens_by_their_example() -> None:
    log_probs = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]))
    targets = torch.tensor([0, 1, 1])
    plain = answer_loss(log_probs, targets, torch.ones(3))
    assert float(plain) == pytest.approx(float(torch.nn.functional.nll_loss(log_probs, targets)))
    weighted = answer_loss(log_probs, targets, torch.tensor([1.0, 3.0, 0.0]))
    expected = (-np.log(0.5) * 1 - np.log(0.1) * 3) / 4
    assert float(weighted) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("balance", ["loss", "sampling"])
def test_class_balanced_training_records_the_scheme(tmp_path: Path, balance: str) -> None:
    _, predictor = fit(tmp_path, class_balance=balance, epochs=1)
    assert predictor.fitted.class_balance == balance  # type: ignore[attr-defined]


def test_unknown_class_balance_is_a_config_error() -> None:
    from fewtune.errors import ConfigError

    with pytest.raises(ConfigError, match="--class-balance takes none, loss, sampling"):
        LoraArgs(class_balance="inverse")


class Interrupted(Exception):
    pass


def test_training_killed_after_a_checkpoint_resumes_to_the_same_adapter(tmp_path: Path) -> None:
    from fewtune.training.checkpoint import CHECKPOINT_FILE

    tokenizer = tiny_tokenizer()
    args = LoraArgs(epochs=2, batch_size=4, lr=5e-3)  # 6 steps an epoch, 12 in all

    def trainer(folder: Path, stop_at: int | None = None) -> Lora:
        def progress(step: int, total: int, loss: float) -> None:
            if step == stop_at:  # as if killed during the step after the checkpoint
                raise Interrupted

        backend = HFBackend(tiny_model(tokenizer), tokenizer, source="tiny")
        return Lora(backend, TEMPLATE, args, folder, seed=3, progress=progress, checkpoint_seconds=0.0)

    whole, whole_info = trainer(tmp_path / "whole").train(TRAIN)
    with pytest.raises(Interrupted):
        trainer(tmp_path / "cut", stop_at=8).train(TRAIN)  # checkpoints after steps 1..7 (a new epoch at 7)
    assert (tmp_path / "cut" / CHECKPOINT_FILE).is_file()
    seen: list[int] = []
    resumed_lora = trainer(tmp_path / "cut")
    resumed_lora.progress = lambda step, total, loss: seen.append(step)
    resumed, info = resumed_lora.train(TRAIN)
    assert seen == list(range(8, 13))  # steps 1-7 were not trained again
    assert not (tmp_path / "cut" / CHECKPOINT_FILE).exists()
    prompt = "Input: the film is positive number 3\nOutput:"
    choices = [" negative", " positive"]
    assert resumed.score_choices([prompt], choices) == pytest.approx(
        whole.score_choices([prompt], choices), abs=1e-6
    )
    assert info.train_steps == 12 and info.resumed_at_step == 7
    assert whole_info.resumed_at_step == 0
    # A checkpoint from other settings is not continued.
    with pytest.raises(Interrupted):
        trainer(tmp_path / "other", stop_at=3).train(TRAIN)
    other = Lora(
        HFBackend(tiny_model(tokenizer), tokenizer, source="tiny"),
        TEMPLATE,
        LoraArgs(epochs=2, batch_size=4, lr=1e-3),
        tmp_path / "other",
        seed=3,
        progress=lambda step, total, loss: seen.append(-step),
    )
    other.train(TRAIN)
    assert seen[-12:] == [-s for s in range(1, 13)]


def test_an_adapter_shares_the_frozen_weights_and_leaves_the_base_unchanged(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    backend = HFBackend(model, tokenizer, source="tiny")
    args = LoraArgs(epochs=1, batch_size=4, lr=5e-2)
    trained = Lora(backend, TEMPLATE, args, tmp_path / "adapter").fit(TRAIN).backend.model  # type: ignore[attr-defined]
    for name, p in model.named_parameters():  # merging wrote into the trained model's own weights only
        assert torch.equal(p, before[name]), name
    embedding = trained.get_input_embeddings().weight
    assert embedding.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # shared, not copied
    q_trained = trained.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_trained, model.model.layers[0].self_attn.q_proj.weight)  # the adapter merged
