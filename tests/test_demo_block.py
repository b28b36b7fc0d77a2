"""A training batch's shared demo block (--demo-draw batch): drawn per batch, never one of the batch's rows,
run once, and the same loss and LoRA gradients as the block written before every row."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from task_helpers import one_torch_thread  # noqa: F401 (an autouse fixture)
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.hf import HFBackend
from fewtune.config import LoraArgs
from fewtune.data.load import Example
from fewtune.prompts.demos import BatchDemos, training_demos
from fewtune.prompts.template import PromptTemplate
from fewtune.training.demo_block import DemoBlocks
from fewtune.training.loop import AnswerLogProbs, TrainingLoop
from fewtune.training.lora import Lora, _collate, answer_loss

TEMPLATE = PromptTemplate(("negative", "positive"))
POOL = [
    Example(f"the film is {w} number {i}" + " and long" * (i % 3), w)
    for i in range(12)
    for w in ("positive", "negative")
]
TRAIN = POOL[:8]
# A window longer than any prompt here, so that the block is shared (the default tiny window is 16).
WIDE = 512


def backend(window: int = WIDE) -> HFBackend:
    tokenizer = tiny_tokenizer()
    return HFBackend(tiny_model(tokenizer, sliding_window=window), tokenizer, source="tiny")


def blocks(base: HFBackend, shots: int = 3) -> DemoBlocks:
    draws = BatchDemos(tuple(POOL), shots, "balanced", seed=1)
    answers = [TEMPLATE.continuation(ex.label) for ex in TRAIN]
    return DemoBlocks.build(draws, TEMPLATE, base, [ex.text for ex in TRAIN], answers)


def test_a_prompt_tokenizes_as_its_block_then_its_query() -> None:
    """The assumption the shared block rests on, for the tiny model's byte-level BPE: the block ends with
    the ``---`` line's newline and the query starts with ``Input:``, and no token spans the two."""
    base = backend()
    for demos in ((), tuple(POOL[:3]), tuple(POOL[5:10])):
        for ex in TRAIN:
            block = base.encode_prompt(TEMPLATE.prefix(demos))
            query = base.encode_continuation(TEMPLATE.query(ex.text))
            assert base.encode_prompt(TEMPLATE.render(ex.text, demos)) == block + query


def test_a_batch_runs_whole_prompts_where_the_block_would_not_be_the_same() -> None:
    wide = blocks(backend())
    shared = wide.batch(1, [0, 1, 2])
    assert shared.block and all(
        p == wide.queries[i] for (p, _), i in zip(shared.features, [0, 1, 2], strict=True)
    )
    # A sliding window (16 tokens) shorter than the block and rows: each row's whole prompt, same demos.
    narrow = blocks(backend(window=16))
    whole = narrow.batch(1, [0, 1, 2])
    demos = narrow.draws.draw(1, [ex.text for ex in TRAIN[:3]])
    assert not whole.block and whole.block_tokens == len(shared.block)
    assert [p for p, _ in whole.features] == [
        narrow.backend.encode_prompt(TEMPLATE.render(ex.text, demos)) for ex in TRAIN[:3]
    ]

    class Merging:  # a tokenizer that would join the block's last token to the query's first
        def encode_prompt(self, text: str) -> list[int]:
            return [len(text)]

        def encode_continuation(self, text: str) -> list[int]:
            return [len(text)]

        def fits_window(self, tokens: int) -> bool:
            return True

    merged = DemoBlocks.build(wide.draws, TEMPLATE, Merging(), wide.texts, ["a"] * len(TRAIN))
    assert not merged.batch(1, [0, 1]).block


def lora_module(base: HFBackend) -> AnswerLogProbs:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    # Random A and B (peft's default B = 0 would give A no gradient to compare); no dropout, as the shared
    # block draws one dropout mask for all rows where whole prompts draw one each.
    config = LoraConfig(
        r=4,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5, as in Lora._model
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base.model, config)
    module = AnswerLogProbs(model, model.get_base_model().get_decoder(), base.softcap)
    return module.train()


def loss_and_gradients(module: AnswerLogProbs, log_probs: torch.Tensor, targets: torch.Tensor) -> tuple:
    weights = torch.linspace(0.5, 2.0, len(targets))  # unequal token weights (--class-balance loss)
    loss = answer_loss(log_probs, targets, weights)
    loss.backward()
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    grads = {n: p.grad.clone() for n, p in named}  # type: ignore[union-attr]
    module.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_a_shared_block_gives_the_loss_and_gradients_of_the_block_before_every_row() -> None:
    base = backend()
    module = lora_module(base)
    draw = blocks(base, shots=4)
    rows = [3, 0, 6, 1, 5]  # rows of different lengths: right padding after the block is exercised
    prompt = draw.batch(2, rows)
    assert prompt.block and len({len(q) for q, _ in prompt.features}) > 1
    ids, mask, predict_at, targets = _collate(prompt.features, base.pad_id)
    block = torch.tensor([prompt.block])
    shared = loss_and_gradients(module, module(ids, mask, predict_at, block), targets)
    whole_features = [(prompt.block + q, a) for q, a in prompt.features]
    ids, mask, predict_at, whole_targets = _collate(whole_features, base.pad_id)
    assert torch.equal(targets, whole_targets)
    whole = loss_and_gradients(module, module(ids, mask, predict_at), whole_targets)
    assert torch.allclose(shared[0], whole[0], rtol=1e-5, atol=1e-6)
    assert shared[1].keys() == whole[1].keys() and len(shared[1]) == 2 * 4 * 2  # A and B of q,k,v,o x 2
    for name, grad in shared[1].items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grad, whole[1][name], rtol=1e-4, atol=1e-6), name


class Share:
    """A process's place among ``processes`` (what the loop asks of :class:`Distributed`), without a group."""

    def __init__(self, rank: int, processes: int) -> None:
        self.rank, self.processes = rank, processes

    def share(self, batch: list[int]) -> list[int]:
        return list(batch[self.rank :: self.processes])


def test_each_process_running_the_block_for_its_share_averages_to_the_one_process_gradient() -> None:
    """Under DDP each process runs the block for its rows; the average of their gradients (what DDP's
    all-reduce makes) is the one-process gradient, with unequal example weights (--class-balance loss)."""
    base = backend()
    module = lora_module(base)
    draw = blocks(base)
    batch = [3, 0, 6, 1, 5]
    prompt = draw.batch(1, batch)
    assert prompt.block
    weights = [4.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0, 0.25]  # the two shares weigh 6 and 3
    loop = TrainingLoop(
        module,
        None,
        draw.features,
        [],
        base.pad_id,
        "cpu",
        0,
        Path(),
        "",
        dict,
        print,  # type: ignore[arg-type]
    )

    def gradients(processes: int) -> dict[str, torch.Tensor]:
        for rank in range(processes):
            loop._loss(module, Share(rank, processes), batch, prompt, weights).backward()  # type: ignore[arg-type]
        grads = {n: p.grad / processes for n, p in module.named_parameters() if p.grad is not None}
        module.zero_grad(set_to_none=True)
        return grads

    one, two = gradients(1), gradients(2)
    assert one.keys() == two.keys() and one
    for name, grad in one.items():
        assert torch.allclose(grad, two[name], rtol=1e-4, atol=1e-7), name


def train(folder: Path, demos: object, stop_at: int | None = None, **args: object) -> tuple:
    def progress(step: int, total: int, loss: float) -> None:
        if step == stop_at:
            raise Interrupted

    lora_args = LoraArgs(**{"epochs": 2, "batch_size": 4, "lr": 5e-3, **args})  # type: ignore[arg-type]
    lora = Lora(backend(), TEMPLATE, lora_args, folder, seed=3, progress=progress, checkpoint_seconds=0.0)
    return lora.train(TRAIN, demos)  # type: ignore[arg-type]


class Interrupted(Exception):
    pass


def test_a_training_with_batch_draws_records_them_and_resumes_to_the_same_adapter(tmp_path: Path) -> None:
    from fewtune.training.checkpoint import CHECKPOINT_FILE

    draws = BatchDemos(tuple(POOL), 3, "balanced", seed=1)
    whole, info = train(tmp_path / "whole", draws)  # 2 steps an epoch, 4 in all
    assert info.demo_draw == "batch" and info.demo_block_steps == info.train_steps == 4
    assert info.fields()["demo_draw"] == "batch"
    with pytest.raises(Interrupted):
        train(tmp_path / "cut", draws, stop_at=3)
    assert (tmp_path / "cut" / CHECKPOINT_FILE).is_file()
    resumed, resumed_info = train(tmp_path / "cut", draws)
    assert resumed_info.resumed_at_step == 2 and resumed_info.demo_block_steps == 4
    prompt = TEMPLATE.render("the film is positive number 3", draws.draw(1, []))
    choices = [" negative", " positive"]
    assert resumed.score_choices([prompt], choices) == pytest.approx(
        whole.score_choices([prompt], choices), abs=1e-6
    )
    # Other draws (another seed) do not continue the checkpoint.
    with pytest.raises(Interrupted):
        train(tmp_path / "other", draws, stop_at=3)
    _, other = train(tmp_path / "other", BatchDemos(tuple(POOL), 3, "balanced", seed=2))
    assert other.resumed_at_step == 0


def test_a_training_with_a_set_per_row_records_row_draws(tmp_path: Path) -> None:
    per_row = training_demos(TRAIN, POOL, 3, "balanced", seed=1)
    _, info = train(tmp_path / "row", per_row, epochs=1)
    assert info.demo_draw == "row" and info.demo_block_steps is None
    _, plain = train(tmp_path / "plain", None, epochs=1)
    assert plain.demo_draw is None and "demo_draw" not in plain.fields()
