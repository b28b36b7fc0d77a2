"""``POST /v1/fine_tuning/jobs``'s body, checked field by field, and the job object it starts as.

Hyperparameters are read from ``method.supervised.hyperparameters`` (or the older top-level
``hyperparameters``); each is a number or ``"auto"``, which is fewtune's LoRA default (``fewtune run``'s
``--epochs``, ``--batch-size``; the multiplier scales ``--lr``). A field the server cannot honour is a 400
naming it, never ignored in silence.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fewtune.config import LoraArgs
from fewtune.errors import FewtuneError
from fewtune.serve.finetune.state import ORGANIZATION, HyperparameterValues, JobObject, new_id, now

MAX_EPOCHS = 50
MAX_BATCH_SIZE = 256
MAX_LR_MULTIPLIER = 10.0
"""Largest learning-rate multiplier: 10 x LoRA's 5e-4 is already past what trains stably."""
SUFFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")
SUPERVISED: Final = "supervised"


class JobRefused(FewtuneError):
    """A request the fine-tuning API refuses (HTTP 400, or ``status``), naming the field at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    def to_dict(self) -> HyperparameterValues:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }


def _number(value: Any, name: str, default: float, low: float, high: float, whole: bool) -> float:
    if value is None or value == "auto":
        return default
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (whole and value != int(value)):
        kind = "a whole number" if whole else "a number"
        raise JobRefused(f"hyperparameters.{name} must be {kind} or 'auto', got {value!r}", name)
    if not low <= value <= high:
        raise JobRefused(f"hyperparameters.{name} must be between {low:g} and {high:g}, got {value!r}", name)
    return float(value)


def hyperparameters(body: Mapping[str, Any], defaults: LoraArgs) -> Hyperparameters:
    """The job's hyperparameters, with ``"auto"`` resolved (module docstring)."""
    method = body.get("method") or {}
    if not isinstance(method, dict):
        raise JobRefused("method must be an object such as {'type': 'supervised'}", "method")
    kind = method.get("type", SUPERVISED)
    if kind != SUPERVISED:
        raise JobRefused(f"method.type: this server runs supervised fine-tuning only, not {kind!r}", "method")
    supervised = method.get(SUPERVISED) or {}
    if not isinstance(supervised, dict):
        raise JobRefused("method.supervised must be an object with hyperparameters", "method")
    given: dict[str, Any] = {}
    for where in (body, supervised):  # the method's own hyperparameters win
        values = where.get("hyperparameters") or {}
        if not isinstance(values, dict):
            raise JobRefused(f"hyperparameters must be an object, got {values!r}", "hyperparameters")
        given.update(values)
    unknown = sorted(set(given) - {"n_epochs", "batch_size", "learning_rate_multiplier"})
    if unknown:
        raise JobRefused(f"hyperparameters.{unknown[0]} is not taken by this server", unknown[0])
    return Hyperparameters(
        n_epochs=int(_number(given.get("n_epochs"), "n_epochs", defaults.epochs, 1, MAX_EPOCHS, True)),
        batch_size=int(
            _number(given.get("batch_size"), "batch_size", defaults.batch_size, 1, MAX_BATCH_SIZE, True)
        ),
        learning_rate_multiplier=_number(
            given.get("learning_rate_multiplier"),
            "learning_rate_multiplier",
            1.0,
            1e-6,
            MAX_LR_MULTIPLIER,
            False,
        ),
    )


def model_name(base: str, suffix: str | None, job_id: str) -> str:
    """``ft:BASE:local:SUFFIX:ID``, as OpenAI's ``ft:BASE:ORG:SUFFIX:ID`` (an empty SUFFIX when none)."""
    return f"ft:{base}:{ORGANIZATION}:{suffix or ''}:{job_id}"


def new_job(body: Mapping[str, Any], base: str, defaults: LoraArgs) -> JobObject:
    """The job object of a create request (files are checked by the caller, which knows them)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise JobRefused("model: the model to fine-tune is required", "model")
    if body["model"] != base:
        raise JobRefused(
            f"model {body['model']!r} cannot be fine-tuned on this server; it fine-tunes {base}", "model"
        )
    for name in ("training_file", "validation_file"):
        value = body.get(name)
        if (name == "training_file" or value is not None) and not (isinstance(value, str) and value):
            raise JobRefused(f"{name} must be a file id (file-...)", name)
    suffix = body.get("suffix")
    if suffix is not None and not (isinstance(suffix, str) and SUFFIX.fullmatch(suffix)):
        raise JobRefused(f"suffix must be 1-64 letters, digits, '.', '_' or '-', got {suffix!r}", "suffix")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise JobRefused(f"seed must be a whole number from 0 to 2147483647, got {seed!r}", "seed")
    if body.get("integrations"):
        raise JobRefused("integrations (Weights and Biases) are not supported by this server", "integrations")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise JobRefused("metadata must be an object of text values", "metadata")
    hyper = hyperparameters(body, defaults).to_dict()
    return {
        "id": new_id("ftjob"),
        "object": "fine_tuning.job",
        "created_at": now(),
        "error": None,
        "fine_tuned_model": None,
        "finished_at": None,
        "hyperparameters": hyper,
        "model": base,
        "organization_id": ORGANIZATION,
        "result_files": [],
        "seed": seed,
        "status": "validating_files",
        "trained_tokens": None,
        "training_file": body["training_file"],
        "validation_file": body.get("validation_file"),
        "estimated_finish": None,
        "integrations": [],
        "metadata": metadata,
        "user_provided_suffix": suffix,
        "method": {"type": SUPERVISED, SUPERVISED: {"hyperparameters": hyper}},
    }
