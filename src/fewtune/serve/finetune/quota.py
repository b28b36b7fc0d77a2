"""The fine-tuning API's limits (:class:`~fewtune.serve.limits.FineTuneLimits`), checked when a file is
uploaded and when a job is created, so that a refusal is a one-line 400 at once instead of a job that
trains for an hour, or takes inference down with it, before it fails.

- Each row's tokens (prompt and answer, as training encodes them) at most ``max_train_tokens`` and the
  model's context: training memory grows with the square of a row's length.
- Fine-tuning files at most ``max_files`` and ``max_upload_bytes`` in all (``DELETE /v1/files/{id}``).
- Jobs waiting or training at most ``max_jobs``, and each job's adapter within ``--max-adapters`` (counting
  the adapters loaded and those the waiting jobs will add).
- A job's optimizer steps (epochs x training rows / batch size) at most ``max_steps``, and its validation
  rows at most ``max_validation_rows``.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fewtune.serve.finetune.chat_rows import ChatRow, Render
from fewtune.serve.finetune.create import JobRefused
from fewtune.serve.finetune.state import FileObject, FineTuneStore, HyperparameterValues
from fewtune.serve.limits import FineTuneLimits

if TYPE_CHECKING:
    from fewtune.serve.engine import Engine

ACTIVE = ("validating_files", "queued", "running")
"""The states of a job that has not finished: each holds a place in the queue and a future adapter."""
HELD_BACK_SHARE = 0.2
"""Share of the training file held back for the comparison when no validation_file is given."""
MAX_HELD_BACK = 200
FINE_TUNE = "fine-tune"


def held_back_count(rows: int) -> int:
    """How many of a training file's ``rows`` are held back for the comparison (no validation_file)."""
    return min(MAX_HELD_BACK, max(1, round(HELD_BACK_SHARE * rows)))


def job_steps(train_rows: int, hyper: HyperparameterValues) -> int:
    """The optimizer steps a job takes: epochs x batches of its training rows."""
    return hyper["n_epochs"] * math.ceil(train_rows / hyper["batch_size"])


class Quota:
    """``limits`` over a model of ``context`` tokens, its rows counted with ``count_tokens`` (a row's
    rendered prompt and its answer -> tokens)."""

    def __init__(
        self,
        limits: FineTuneLimits,
        context: int | None,
        count_tokens: Callable[[str, str], int],
        render: Render,
    ) -> None:
        self.limits, self.count_tokens, self.render = limits, count_tokens, render
        self.row_tokens = min(limits.max_train_tokens, context or limits.max_train_tokens)

    @classmethod
    def of(cls, limits: FineTuneLimits, engine: Engine) -> Quota:
        """``limits`` over the engine's served model (its context, its tokenizer, its chat rendering)."""
        return cls(limits, _context(engine), _token_counter(engine), engine.render_chat)

    def check_rows(self, rows: Sequence[ChatRow], filename: str, param: str = "file") -> None:
        """Every row within the tokens a row may have; else a 400 naming the first row over."""
        for row in rows:
            tokens = self.count_tokens(self.render(row.messages), row.answer)
            if tokens > self.row_tokens:
                raise JobRefused(
                    f"{filename}:{row.line}: {tokens} tokens, over this server's {self.row_tokens} per row "
                    "(--max-train-tokens, at most the model's context); shorten or drop the row",
                    param,
                )

    def check_upload(self, files: Sequence[FileObject], size: int) -> None:
        """Room for one more fine-tuning file of ``size`` bytes beside ``files``."""
        kept = [f for f in files if f["purpose"] == FINE_TUNE]
        free = "; delete one first (DELETE /v1/files/{id})"
        if len(kept) >= self.limits.max_files:
            raise JobRefused(
                f"this server keeps at most {self.limits.max_files} files (--max-files){free}", "file"
            )
        used = sum(f["bytes"] for f in kept)
        if used + size > self.limits.max_upload_bytes:
            raise JobRefused(
                f"this file ({size} bytes) would take the files kept past "
                f"{self.limits.max_upload_bytes} bytes ({used} used; --max-upload-bytes){free}",
                "file",
            )

    def check_room(self, store: FineTuneStore, adapters_loaded: int, max_adapters: int) -> None:
        """Room for one more job: in the queue, and for its adapter."""
        active = sum(len(store.oldest_first(status)) for status in ACTIVE)
        if active >= self.limits.max_jobs:
            raise JobRefused(
                f"{active} jobs are waiting or training, this server's most (--max-jobs); "
                "wait for one to finish or cancel one"
            )
        if adapters_loaded + active >= max_adapters:
            raise JobRefused(
                f"no room for this job's adapter: {adapters_loaded} loaded and {active} being trained, "
                f"of at most {max_adapters} (--max-adapters); unload one first (/v1/unload_lora_adapter)"
            )

    def check_job(self, hyper: HyperparameterValues, train_rows: int, validation_rows: int) -> None:
        """A job's steps and validation rows within the limits."""
        steps = job_steps(train_rows, hyper)
        if steps > self.limits.max_steps:
            raise JobRefused(
                f"this job would take {steps} steps ({hyper['n_epochs']} epochs of {train_rows} rows "
                f"in batches of {hyper['batch_size']}), over this server's {self.limits.max_steps} "
                "(--max-train-steps); use fewer epochs or a larger batch_size",
                "hyperparameters",
            )
        if validation_rows > self.limits.max_validation_rows:
            raise JobRefused(
                f"validation_file has {validation_rows} rows, over this server's "
                f"{self.limits.max_validation_rows} (--max-validation-rows)",
                "validation_file",
            )


def _context(engine: Engine) -> int | None:
    """The served model's context length, in tokens (None where its config does not say)."""
    limit = getattr(getattr(engine.adapters.model, "config", None), "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


def _token_counter(engine: Engine) -> Callable[[str, str], int]:
    """Tokens of a training row's prompt and answer, as training encodes them, with a copy of the served
    tokenizer (the engine's worker uses its own from another thread)."""
    tokenizer = copy.deepcopy(engine.adapters.tokenizer)
    lock = threading.Lock()

    def count(prompt: str, answer: str) -> int:
        with lock:
            ids = tokenizer(prompt).input_ids
            return len(ids) + len(tokenizer(answer, add_special_tokens=False).input_ids)

    return count
