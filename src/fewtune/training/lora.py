"""Training a local model on the run's examples: LoRA with peft (an adapter), or every weight (full-ft).

Both share one recipe (:mod:`fewtune.training.loop`): the loss on the answer tokens only, the same
seeded batches, warm-up and linear decay; they differ in which weights train, the learning rate, and what
is saved (an adapter in peft's format, or a whole model copy in safetensors).
"""

from __future__ import annotations

import abc
import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, cast

from fewtune.backends.base import Backend
from fewtune.backends.hf import HFBackend
from fewtune.config import LoraArgs, default_target_modules
from fewtune.data.load import Example
from fewtune.errors import ConfigError
from fewtune.methods import Method
from fewtune.prompts.demos import BatchDemos
from fewtune.prompts.template import PromptTemplate
from fewtune.results.sections import LocalTraining
from fewtune.strategies.base import Predictor, Strategy
from fewtune.sysinfo import lora_train_flops_per_token, matmul_peak_flops
from fewtune.training.checkpoint import CHECKPOINT_SECONDS, StateDict, checkpoint_key, remove_checkpoint
from fewtune.training.demo_block import DemoBlocks, Feature
from fewtune.training.distributed import Distributed, OtherProcessFailed, TrainingOrder
from fewtune.training.loop import (
    AnswerLogProbs,
    Schedule,
    Trained,
    TrainingLoop,
    TrainingTemplate,
    _batches,
    _collate,
    answer_loss,
    example_weights,
)

__all__ = ["FullFineTune", "Lora", "_batches", "_collate", "answer_loss", "example_weights"]

DemoSets = Sequence[Sequence[Example]]
Demos = DemoSets | BatchDemos
"""The demos of a training: a set per row, or one draw per batch shared by its rows."""


@dataclass
class LocalTuning(Strategy):
    """Trains ``backend``'s model on ``train`` and returns a predictor over the trained model."""

    backend: Backend
    """A backend whose ``capabilities.trainable`` is set (a local Hugging Face model)."""
    template: TrainingTemplate
    args: LoraArgs
    save_dir: Path
    seed: int = 0
    progress: Callable[[int, int, float], None] | None = None
    """Called as ``progress(step, total_steps, loss)`` after each optimizer step."""
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    """Training seconds between checkpoints in ``save_dir`` (see :mod:`fewtune.training.checkpoint`)."""

    kind: ClassVar[str]
    method: ClassVar[str]

    def __post_init__(self) -> None:
        if not self.backend.capabilities.trainable:
            raise ConfigError(
                f"{self.method} needs a local Hugging Face model; backend '{self.backend.name}' cannot be "
                "trained"
            )

    def fit(self, train: Sequence[Example], demos: Demos | None = None) -> Predictor:
        if not isinstance(self.template, PromptTemplate):
            raise TypeError("fit makes a label predictor; use train for other templates")
        backend, fitted = self.train(train, demos)
        return Predictor(
            method=self.method,
            backend=backend,
            template=self.template,
            train_examples=len(train),
            fitted=fitted,
        )

    def train(self, train: Sequence[Example], demos: Demos | None = None) -> tuple[HFBackend, LocalTraining]:
        """Train on ``train`` (answer-only loss on each example's continuation, after its prompt with
        ``demos[i]`` when given, or each batch's draw of a :class:`BatchDemos`); return the trained model's
        backend and what training measured."""
        import torch

        dist = Distributed.current()
        settings = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("backend", "progress")
        }
        shown = demos if demos is None or isinstance(demos, BatchDemos) else list(demos)
        dist.order(TrainingOrder(self.kind, settings, list(train), shown))
        torch.manual_seed(self.seed)
        base = cast(HFBackend, self.backend)  # trainable: checked in __post_init__
        model = self._model(base)
        features, blocks = self._rows(base, train, demos)
        schedule = Schedule(self.args.epochs, self.args.batch_size, self._lr(), self.args.class_balance)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        decoder = self._decoder(model)
        module = AnswerLogProbs(model, decoder, base.softcap)
        loop = TrainingLoop(
            module,
            schedule,
            features,
            [ex.label for ex in train],
            base.pad_id,
            base.device,
            self.seed,
            self.save_dir,
            self._checkpoint_key(features, blocks),
            lambda: self._state(model),
            lambda state: self._restore(model, state),
            self.progress,
            self.checkpoint_seconds,
            blocks,
        )
        trained = loop.run()
        gathered = None
        if dist.deepspeed:  # every process takes part in gathering the sharded weights
            state = dist.gathered_state(trained.prepared) or {}
            gathered = {k.removeprefix("model."): v for k, v in state.items()}
        failure = None
        if dist.main:
            try:
                self.save_dir.mkdir(parents=True, exist_ok=True)
                self._save(model, base, gathered)
                remove_checkpoint(self.save_dir)
            except Exception as err:  # every process must hear of it (a full disk), or they wait a day
                failure = err
        dist.settle(failure)
        result = self._result(model, base)
        info = self._info(trained, result, base, trainable)
        if demos is not None:
            info = info.with_demos(blocks is not None, trained.done.shared_steps)
        return result, info

    def _rows(
        self, base: HFBackend, train: Sequence[Example], demos: Demos | None
    ) -> tuple[list[Feature], DemoBlocks | None]:
        """Each row's (prompt, answer) tokens, the prompt with the row's demos when given; with demos drawn
        per batch, the row's query after the block, and each batch's block (:mod:`.demo_block`)."""
        answers = [self.template.continuation(ex.label) for ex in train]
        if isinstance(demos, BatchDemos):
            blocks = DemoBlocks.build(demos, self.template, base, [ex.text for ex in train], answers)
            return blocks.features, blocks
        prompts = [
            self.template.render(ex.text, demos[i] if demos is not None else ()) for i, ex in enumerate(train)
        ]
        return [
            (base.encode_prompt(prompt), base.encode_continuation(answer))
            for prompt, answer in zip(prompts, answers, strict=True)
        ], None

    def _checkpoint_key(self, features: list[Feature], blocks: DemoBlocks | None) -> str:
        """What a checkpoint must match to be continued: the settings and the tokenised rows."""
        # --demo-draw changes nothing of a training without a BatchDemos: the key leaves it out.
        args = {k: v for k, v in asdict(self.args).items() if k != "demo_draw"}
        settings: dict[str, Any] = {"args": args, "seed": self.seed, "kind": self.kind}
        if blocks is not None:  # the features hold no demos: the draws' settings and the header say them
            settings["demo_block"] = {**blocks.draws.settings(), "header": self.template.prefix(())}
        return checkpoint_key(settings, features)

    def _info(self, trained: Trained, result: HFBackend, base: HFBackend, trainable: int) -> LocalTraining:
        done = trained.done
        tokens_per_second = done.tokens / trained.seconds
        flops_per_token = lora_train_flops_per_token(
            result.model,
            seq_len=trained.mean_length,
            answer_share=done.answer_tokens / done.tokens,
            every_weight=self.kind == "full",
        )
        precision = result.precision
        dtype = precision.train or next(result.model.parameters()).dtype
        return LocalTraining(
            train_seconds=trained.seconds,
            train_tokens_per_second=tokens_per_second,
            train_flops_per_token=flops_per_token,
            # Model FLOPs utilisation against this machine's measured matmul peak (see sysinfo).
            train_mfu=tokens_per_second * flops_per_token / matmul_peak_flops(base.device, dtype),
            train_steps=trained.total_steps,
            resumed_at_step=trained.resumed_at,
            class_balance=self.args.class_balance,
            adapter_path=str(self.save_dir),
            adapter_bytes=sum(f.stat().st_size for f in self.save_dir.glob(self._saved_glob)),
            peak_memory_bytes=trained.peak_bytes,
            trained_parameters=trainable,
            train_processes=Distributed.current().processes,
            precision=precision.name,
            train_precision=None if precision.train_name == precision.name else precision.train_name,
            quantization="nf4" if self.args.quantize == "nf4" else None,
        )

    _saved_glob: ClassVar[str]

    @abc.abstractmethod
    def _model(self, base: HFBackend) -> Any:
        """The model to train: a copy, so the base backend stays untouched for the prompting rows."""

    @abc.abstractmethod
    def _decoder(self, model: Any) -> Any: ...

    @abc.abstractmethod
    def _lr(self) -> float: ...

    @abc.abstractmethod
    def _state(self, model: Any) -> StateDict:
        """The trained weights' state dict (what a checkpoint keeps)."""

    @abc.abstractmethod
    def _restore(self, model: Any, state: StateDict) -> None: ...

    @abc.abstractmethod
    def _save(self, model: Any, base: HFBackend, gathered: StateDict | None) -> None: ...

    @abc.abstractmethod
    def _result(self, model: Any, base: HFBackend) -> HFBackend: ...


@dataclass
class Lora(LocalTuning):
    """Trains one LoRA adapter on ``train`` and returns a zero-shot predictor over the merged model."""

    kind: ClassVar[str] = Method.LORA.value
    method: ClassVar[str] = Method.LORA.value
    _saved_glob: ClassVar[str] = "adapter_model.*"

    def _model(self, base: HFBackend) -> Any:
        from peft import LoraConfig, get_peft_model

        model = quantized_base(base) if self.args.quantize == "nf4" else shared_copy(base.model)
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5; not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(
                model,
                LoraConfig(
                    r=self.args.r,
                    lora_alpha=self.args.alpha,
                    lora_dropout=self.args.dropout,
                    target_modules=self.args.target_modules or default_target_modules(open_output=False),
                    task_type="CAUSAL_LM",
                ),
            )
        return model

    def _decoder(self, model: Any) -> Any:
        return model.get_base_model().get_decoder()

    def _lr(self) -> float:
        return self.args.lr

    def _state(self, model: Any) -> StateDict:
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(model))

    def _restore(self, model: Any, state: StateDict) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)

    def _save(self, model: Any, base: HFBackend, gathered: StateDict | None) -> None:
        model.peft_config["default"].base_model_name_or_path = base.source
        if gathered is not None:  # DeepSpeed: the adapter's weights gathered from every process
            from peft import get_peft_model_state_dict

            model.save_pretrained(
                str(self.save_dir), state_dict=get_peft_model_state_dict(model, state_dict=gathered)
            )
        else:
            model.save_pretrained(str(self.save_dir))

    def _result(self, model: Any, base: HFBackend) -> HFBackend:
        if self.args.quantize == "nf4":  # a 4-bit base is served with the adapter beside it, not merged
            return HFBackend(model, base.tokenizer, name=f"{base.name}+qlora", source=base.source)
        if base.precision.mixed:  # merged, the update would be rounded to bf16 with W (backends.precision)
            return HFBackend(model, base.tokenizer, name=f"{base.name}+lora", source=base.source)
        own_adapted_weights(model)
        merged = model.merge_and_unload()
        return HFBackend(merged, base.tokenizer, name=f"{base.name}+lora", source=base.source)


@dataclass
class FullFineTune(LocalTuning):
    """Trains every weight (the output layer and embeddings too) at ``--full-lr``; saves the whole model."""

    kind: ClassVar[str] = "full"
    method: ClassVar[str] = Method.FULL_FT.value
    _saved_glob: ClassVar[str] = "*.safetensors"

    def _model(self, base: HFBackend) -> Any:
        model = copy.deepcopy(base.model)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def _decoder(self, model: Any) -> Any:
        return model.get_decoder()

    def _lr(self) -> float:
        return self.args.full_lr

    def _state(self, model: Any) -> StateDict:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _restore(self, model: Any, state: StateDict) -> None:
        model.load_state_dict(state)

    def _save(self, model: Any, base: HFBackend, gathered: StateDict | None) -> None:
        model.save_pretrained(str(self.save_dir), state_dict=gathered)
        base.tokenizer.save_pretrained(str(self.save_dir))

    def _result(self, model: Any, base: HFBackend) -> HFBackend:
        return HFBackend(model, base.tokenizer, name=f"{base.name}+full-ft", source=str(self.save_dir))


def shared_copy(model: Any) -> Any:
    """A copy of ``model``'s modules that shares its weights: LoRA trains only its own matrices, so the base
    model's 270M (or 7B) frozen weights are not duplicated for every adapter; the prompting rows go on using
    the base untouched (peft wraps the copy's layers, not the base's)."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo=shared)


def own_adapted_weights(model: Any) -> None:
    """Give every LoRA-wrapped layer of ``model`` its own copy of its base weight, so that merging the
    adapter (in place) changes this model only, not the base it shares its other weights with."""
    import torch
    from peft.tuners.lora import LoraLayer

    for layer in model.modules():
        if isinstance(layer, LoraLayer):
            base_layer: Any = layer.get_base_layer()
            base_layer.weight = torch.nn.Parameter(base_layer.weight.detach().clone(), requires_grad=False)


def quantized_base(base: HFBackend) -> Any:
    """QLoRA's base (Dettmers et al. 2023): ``base``'s weights loaded again in 4-bit NF4 with double
    quantization and bfloat16 compute by bitsandbytes, prepared for training by peft (a GPU only; checked
    before the run in :mod:`fewtune.training.memory`)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base.source, quantization_config=quantization, device_map={"": base.device}
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


STRATEGIES: dict[str, type[LocalTuning]] = {cls.kind: cls for cls in (Lora, FullFineTune)}


def follow_orders(backend: Backend) -> None:
    """A process other than the main one under ``accelerate launch``: train what the main process orders,
    with it, until it says the run is over."""
    dist = Distributed.current()
    while (order := dist.next_order()) is not None:
        strategy = STRATEGIES[order.kind](backend=backend, **order.settings)
        try:
            strategy.train(order.train, order.demos)
        except OtherProcessFailed:
            continue  # the main process failed saving: it reports it, and its next order is to stop
