"""Full fine-tuning against LoRA: which of the two fine-tuned options the verdict holds against the prompt.

Training every weight ships a whole model copy per task and version (stored, loaded and served on its own),
where a LoRA adapter is a few megabytes served beside one shared base model. Rule 4's reasoning (the
simpler option wins within the margin) applies between them too: full-ft is preferred only when it is shown
to be more than the margin ahead of the best adapter (the paired interval's lower bound above
:data:`~fewtune.decide.thresholds.MARGIN_POINTS`); otherwise the adapter is what fine-tuning would ship.
"""

from __future__ import annotations

from collections.abc import Sequence

from fewtune.decide.evidence import Comparison, MethodEvidence, compare, versus
from fewtune.decide.thresholds import MARGIN_POINTS
from fewtune.decide.verdict import Situation, best


def _size(bytes_: int | None) -> str:
    if bytes_ is None:
        return "size not recorded"
    if bytes_ >= 2**30:
        return f"{bytes_ / 2**30:.2f} GiB"
    return f"{bytes_ / 2**20:.1f} MiB"


def weigh_full_ft(
    viable: Sequence[MethodEvidence],
    tuned: MethodEvidence | None,
    s: Situation,
    comparisons: list[Comparison],
) -> tuple[MethodEvidence | None, list[str]]:
    """The fine-tuned method the verdict should weigh (``tuned``, or the best adapter instead of a full-ft
    row that is not shown to be worth its size) and the reason, with the paired test between them."""
    full = best([m for m in viable if m.fine_tuned and m.whole_model])
    lora = best([m for m in viable if m.fine_tuned and not m.whole_model and m.stored_bytes])
    if full is None or lora is None:
        return tuned, []
    c = compare(lora, full, s.metric, s.seed)
    comparisons.append(c)
    label = s.metric.label
    share = (
        f", {lora.stored_bytes / full.stored_bytes:.2%} of it"
        if lora.stored_bytes and full.stored_bytes
        else ""
    )
    sizes = (
        f"{full.name} ships a whole model copy ({_size(full.stored_bytes)}), {lora.name} an adapter "
        f"({_size(lora.stored_bytes)}{share}) beside the shared base model"
    )
    if not c.paired:
        return tuned, [f"{full.name} and {lora.name} cannot be compared on the same rows; {sizes}"]
    if c.ahead_by_more_than(MARGIN_POINTS):
        return tuned, [
            f"training every weight is shown to be more than {MARGIN_POINTS:.0f} points ahead of the best "
            f"adapter: {versus(c, label)}; {sizes}, a size its lead pays for"
        ]
    chosen = lora if tuned is full else tuned
    return chosen, [
        f"full fine-tuning is not shown to be more than {MARGIN_POINTS:.0f} points ahead of the best adapter "
        f"({versus(c, label)}), and {sizes}: the adapter is the fine-tuned option to ship"
    ]
