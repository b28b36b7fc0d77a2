"""Training on several processes with accelerate (DDP: gloo on CPU, NCCL on GPUs; or DeepSpeed ZeRO).

``accelerate launch --multi_gpu --num_processes N -m fewtune run ...`` (or ``torchrun --nproc_per_node N -m
fewtune run ...``) starts N copies of fewtune, on GPUs or, on a machine without one, on CPU cores. The first
(the main process) runs the whole job as usual; the others only train: each time the main process starts
training a model it sends them what to train (:class:`TrainingOrder`: the rows, the template and the
settings), all N train it together, each on its share of every batch, and accelerate reduces the gradients.
Only the main process writes to the run folder. Without ``accelerate launch`` (one process) nothing here
changes a number: :class:`Distributed` is then plain ``loss.backward()`` and ``clip_grad_norm_``.

accelerate sets the group up, wraps the model and reduces. fewtune's own process-group code is the one
thing a failure needs: after a step only the main process does (saving the adapter), every process learns
whether it failed (:meth:`Distributed.settle`, on a gloo group with a short timeout), so a full disk ends the
run with its error instead of leaving the others in a barrier for the group's 24-hour timeout. A failure
anywhere else ends the failing process, and the launcher (torchrun's agent, under ``accelerate launch``)
then stops the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

import torch

from fewtune.errors import ConfigError, FewtuneError
from fewtune.prompts.demos import BatchDemos

# A worker waits for the main process's next order while it scores the test rows; gloo's default 30-minute
# timeout would end a long scoring step's workers.
ORDER_TIMEOUT = timedelta(hours=24)
# How long the processes wait for each other to finish the main process's save: saving an adapter takes
# seconds, a full model's weights minutes; past this a process that vanished without a word ends the others.
SETTLE_TIMEOUT = timedelta(minutes=30)


class OtherProcessFailed(FewtuneError):
    """Another process failed the step all were finishing (the main process's save): this one stops it."""


def launched_processes() -> int:
    """How many processes ``accelerate launch`` (or torchrun) started; 1 when fewtune runs on its own."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class TrainingOrder:
    """What the main process asks every process to train: enough to build the same strategy on each."""

    kind: str
    """"lora" or "full"."""
    settings: Mapping[str, Any]
    """The strategy's fields other than the backend and the progress callback."""
    train: Sequence[Any]
    demos: Sequence[Sequence[Any]] | BatchDemos | None
    """Each row's demos, or one draw per batch (each process draws the same block for the same batch)."""


class Distributed:
    """One process, or this process's place among those ``accelerate launch`` started."""

    def __init__(self, accelerator: Any | None = None) -> None:
        self.accelerator = accelerator
        self.processes = accelerator.num_processes if accelerator else 1
        self.rank = accelerator.process_index if accelerator else 0
        self.main = self.rank == 0
        self.deepspeed = bool(accelerator and accelerator.state.deepspeed_plugin is not None)
        # A ZeRO-3 state dict must be gathered from every process, which a checkpoint taken by the main
        # process's clock alone cannot do: DeepSpeed runs are not checkpointed mid-training.
        self.checkpoints = not self.deepspeed
        self.settle_group: Any = None
        """A gloo group with :data:`SETTLE_TIMEOUT`, for :meth:`settle` (set up by :meth:`current`)."""
        self.in_step = True
        """Main process: every other process waits for its next order (none is training), so an order
        (None: stop) reaches them; False from an order until the training it started is settled."""

    @staticmethod
    @cache
    def current() -> Distributed:
        if launched_processes() <= 1:
            return Distributed()
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        # accelerate sets up a gloo group on CPU only when asked for the CPU: without cpu=True, processes
        # that torchrun (or ``accelerate launch --multi_gpu``) started on a machine with no accelerator would
        # each think it is alone and each run the whole job into the same folder.
        on_cpu = not torch.accelerator.is_available()
        handlers = [InitProcessGroupKwargs(timeout=ORDER_TIMEOUT)]
        accelerator = Accelerator(cpu=on_cpu, kwargs_handlers=handlers)
        if accelerator.num_processes != launched_processes():
            raise ConfigError(
                f"{launched_processes()} processes were launched (WORLD_SIZE) but accelerate set up "
                f"{accelerator.num_processes}; launch with a config whose distributed_type fits this machine"
            )
        dist = Distributed(accelerator)
        dist.settle_group = torch.distributed.new_group(backend="gloo", timeout=SETTLE_TIMEOUT)
        return dist

    def prepare(self, module: torch.nn.Module, optimizer: Any, batch_size: int) -> tuple[Any, Any]:
        """The module and optimizer as accelerate wraps them (DDP, or a DeepSpeed engine).

        fewtune hands accelerate no DataLoader, so DeepSpeed's micro-batch size (``auto`` in an accelerate
        config) is set here: this process's share of a ``batch_size`` batch."""
        if self.accelerator is None:
            return module, optimizer
        if self.deepspeed:
            config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
                config["train_micro_batch_size_per_gpu"] = max(1, -(-batch_size // self.processes))
            module, optimizer = self.accelerator.prepare(module, optimizer)
            return module, optimizer
        return self.accelerator.prepare_model(module), optimizer

    def share(self, batch: Sequence[int]) -> list[int]:
        """This process's rows of a batch (every process sees the same seeded batches)."""
        return list(batch[self.rank :: self.processes])

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip(self, params: Sequence[torch.Tensor], max_norm: float) -> None:
        if self.accelerator is None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        elif not self.deepspeed:  # DeepSpeed clips by its config's gradient_clipping
            self.accelerator.clip_grad_norm_(params, max_norm)

    def gathered_state(self, prepared: Any) -> dict[str, torch.Tensor] | None:
        """Under DeepSpeed, the whole state dict of the prepared module, gathered from every process (in
        16-bit, as ZeRO-3's ``stage3_gather_16bit_weights_on_model_save`` asks), on the main process (None
        elsewhere). Every process must call it. ZeRO-3 once saved empty adapters without this gather."""
        assert self.accelerator is not None
        state = self.accelerator.get_state_dict(prepared)
        return dict(state) if self.main else None

    def order(self, order: TrainingOrder | None) -> None:
        """Main process: tell the other processes what to train next (None: the run is over)."""
        if self.processes > 1 and self.main:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list([order], from_process=0)
            self.in_step = order is None

    def next_order(self) -> TrainingOrder | None:
        """Other processes: wait for the main process's next order."""
        from accelerate.utils import broadcast_object_list

        received: list[Any] = [None]
        broadcast_object_list(received, from_process=0)
        return received[0]

    def settle(self, failure: BaseException | None) -> None:
        """Every process, after a step some of them did alone (the main process's save): tell the others
        how this process's part ended (``failure``, None when it went well) and learn theirs. This process's
        own failure is raised; another's raises :class:`OtherProcessFailed` here, so every process leaves
        the step and none waits in a barrier for a process that is gone."""
        if self.processes <= 1 or self.settle_group is None:
            if failure is not None:
                raise failure
            return
        told: list[Any] = [None] * self.processes
        mine = None if failure is None else f"{type(failure).__name__}: {failure}"
        torch.distributed.all_gather_object(told, mine, group=self.settle_group)
        self.in_step = True
        if failure is not None:
            raise failure
        failed = [f"process {rank}: {text}" for rank, text in enumerate(told) if text]
        if failed:
            raise OtherProcessFailed("; ".join(failed))
