"""Training checkpoints: an interrupted LoRA run continues from its last saved step (``--resume``).

While an adapter trains, its weights, the optimizer and scheduler states, the torch RNG state (LoRA
dropout) and the step reached are written to ``checkpoint.pt`` in the adapter's folder at most every
:data:`CHECKPOINT_SECONDS` (atomically: a kill mid-write leaves the previous checkpoint). Training started
again into the same folder loads it, replays the seeded batch order up to that step and goes on, so the
adapter it ends with is the one an uninterrupted run makes. The checkpoint is removed once the adapter is
saved. A checkpoint made from other settings or other training rows (its key differs) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]
"""A model's (or an adapter's) weights by parameter name, as ``state_dict()`` gives them."""
CHECKPOINT_FILE = "checkpoint.pt"
# Seconds of training between checkpoints: a kill loses at most this much work, and writing one (the
# adapter and two Adam moments, a few tens of MB for a 270M model) costs well under a second.
CHECKPOINT_SECONDS = 60.0


@dataclass
class Progress:
    """How far training got: optimizer steps, tokens seen, and training seconds spent so far."""

    step: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    seconds: float = 0.0
    block_tokens: int = 0
    """Demos drawn per batch: the demo blocks' tokens, summed over steps (shared or not)."""
    shared_steps: int = 0
    """Demos drawn per batch: steps whose rows shared one run of the block."""


def checkpoint_key(settings: Mapping[str, Any], features: list[tuple[list[int], list[int]]]) -> str:
    """What a checkpoint must match to be continued: the training settings and the tokenised rows."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(json.dumps(features).encode())
    return digest.hexdigest()


def save_checkpoint(
    folder: Path, key: str, weights: StateDict, optimizer: Any, scheduler: Any, done: Progress
) -> None:
    """Write the trained ``weights`` (a state dict), the optimizer and scheduler states, the RNG state and
    the progress to ``folder``, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    partial = path.with_suffix(".partial")
    torch.save(
        {
            "key": key,
            "adapter": weights,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "progress": asdict(done),
        },
        partial,
    )
    os.replace(partial, path)


def load_checkpoint(
    folder: Path, key: str, restore: Callable[[StateDict], None], optimizer: Any, scheduler: Any
) -> Progress:
    """Restore the checkpoint in ``folder``: its weights through ``restore``, then ``optimizer`` and
    ``scheduler``; return how far it got (step 0 when there is none, or it belongs to other settings)."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return Progress()
    saved = torch.load(path, weights_only=True)
    if saved.get("key") != key:
        return Progress()
    restore(saved["adapter"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return Progress(**saved["progress"])


def remove_checkpoint(folder: Path) -> None:
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
