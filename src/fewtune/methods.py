"""What a method is, as a type: prompting or fine-tuned, with or without demos, an LLM or not.

Every part of fewtune that treats methods differently (which model answers a row, what it costs to set up,
which family the verdict compares, which rows a curve draws) asks these properties instead of keeping its
own list of method names. A results row names its method in ``method``; :meth:`Method.of` reads it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from fewtune.errors import FewtuneError


class Method(StrEnum):
    """The methods ``--methods`` can name, in the order a run executes them."""

    ZERO_SHOT = "zero-shot"
    FEW_SHOT = "few-shot"
    LORA = "lora"
    LORA_FEW_SHOT = "lora+few-shot"
    FULL_FT = "full-ft"
    """Every weight of ``--model`` trained (a whole model copy to store and serve, not an adapter)."""
    HOSTED_FT = "hosted-ft"
    """Fine-tuned through an OpenAI-compatible fine-tuning API (``--hosted-endpoint``) and scored there."""
    REFERENCE = "reference"
    """Sentence embeddings + a classifier on the LoRA training examples: no LLM."""

    @property
    def prompting(self) -> bool:
        """Asks the prompt model (``--prompt-model``) as it is, with or without demos; nothing is trained."""
        return self in (Method.ZERO_SHOT, Method.FEW_SHOT)

    @property
    def fine_tuned(self) -> bool:
        """An LLM trained here on the run's training examples (on ``--model``, so it needs a trainable local
        model): a LoRA adapter, or every weight."""
        return self in (Method.LORA, Method.LORA_FEW_SHOT, Method.FULL_FT)

    @property
    def trained(self) -> bool:
        """Learns from labelled training examples (so its setup pays for labelling and training compute):
        the fine-tuned methods, the hosted fine-tune and the reference."""
        return self.fine_tuned or self in (Method.HOSTED_FT, Method.REFERENCE)

    @property
    def uses_demos(self) -> bool:
        """Its prompts carry k demos (so every request pays for them, and a prompt engineer's hours)."""
        return self in (Method.FEW_SHOT, Method.LORA_FEW_SHOT)

    @property
    def uses_llm(self) -> bool:
        return self is not Method.REFERENCE

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Method:
        """The method of a results row (its ``method`` field)."""
        name = row.get("method")
        try:
            return cls(str(name))
        except ValueError:
            raise FewtuneError(
                f"results row {row.get('name', '?')!r} names an unknown method {name!r}; "
                f"fewtune knows {', '.join(m.value for m in cls)}"
            ) from None


ALL_METHODS = tuple(m.value for m in Method)
DEFAULT_METHODS = tuple(m.value for m in Method if m not in (Method.FULL_FT, Method.HOSTED_FT))
"""What a run does without ``--methods``: full fine-tuning (a whole model copy per size) and a provider's
fine-tuning job (its own endpoint and bill) are asked for by name."""
FINE_TUNED = tuple(m.value for m in Method if m.fine_tuned)
"""``--methods`` values that train a LoRA adapter."""


def any_fine_tuned(methods: Iterable[str]) -> bool:
    """Some of these ``--methods`` values train a LoRA adapter (and so need a trainable local model)."""
    return any(Method(m).fine_tuned for m in methods)


def row_name(
    method: str, train_examples: int = 0, shots: int = 0, selection: str | None = None, *marks: str
) -> str:
    """A method row's name, the one formula every row is named by, e.g. "few-shot k=8 balanced
    calibrated", "lora n=200" or "lora+few-shot n=200 k=5 balanced plain-adapter"; ``marks`` (calibrated,
    constrained, an adapter's recipe) close it."""
    parts = [method]
    if train_examples:
        parts.append(f"n={train_examples}")
    if shots:
        parts += [f"k={shots}", *([selection] if selection else [])]
    return " ".join([*parts, *(mark for mark in marks if mark)])


def adapter_folder(method: str, train_examples: int, shots: int = 0) -> str:
    """The folder (under the run's adapters/) a trained row's weights are saved in: ``lora-n200``, the
    demo-trained ``lora-n200-k5``, ``full-n200`` or ``hosted-ft-n200``."""
    stem = {Method.LORA: "lora", Method.LORA_FEW_SHOT: "lora", Method.FULL_FT: "full"}.get(
        Method(method), method
    )
    return f"{stem}-n{train_examples}" + (f"-k{shots}" if shots else "")
