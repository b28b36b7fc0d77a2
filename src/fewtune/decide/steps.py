"""What a degenerate method likely suffers from, and the next steps the evidence supports."""

from __future__ import annotations

from collections.abc import Sequence

from fewtune.decide.evidence import FINE_TUNED, PROMPT, REFERENCE, MethodEvidence
from fewtune.decide.thresholds import GOOD_ENOUGH_KAPPA, NEAR_CHANCE_KAPPA

NO_BALANCE = (None, "none")


def degenerate_caveat(m: MethodEvidence, class_balance: str | None) -> str:
    """The flag, its likely cause and what to try, by kind of method."""
    head = f"{m.name} is degenerate and not recommended: it {m.degenerate}"
    if m.degenerate_cause:
        return f"{head}. {m.degenerate_cause}"
    if m.kind == FINE_TUNED:
        fix = (
            "re-run with --class-balance sampling (class-balanced batches) or loss (inverse-frequency "
            "weights)"
            if class_balance in NO_BALANCE
            else f"--class-balance {class_balance} was already on: try the other scheme, more --epochs, or "
            "more examples of the rare classes"
        )
        return (
            f"{head}. Likely cause: class imbalance in a small training sample ({m.train_examples} examples) "
            f"and few optimizer steps, so the adapter learns the majority label; {fix}"
        )
    if m.kind == PROMPT:
        return (
            f"{head}. Likely cause: the model's prior for one label outweighs the demos; try --calibrate, "
            "balanced or nearest demos, more shots, or readable --label-names"
        )
    if m.kind == REFERENCE:
        return f"{head}. Likely cause: too few training examples of the rare classes"
    return head


def low_steps(
    methods: Sequence[MethodEvidence],
    kappa: dict[str, float],
    class_balance: str | None,
    prompt: MethodEvidence | None,
    top: MethodEvidence | None,
) -> list[str]:
    """Steps that follow from weak or degenerate methods (the curve steps come from the recommendation)."""
    steps = []
    degenerate_tuned = [m for m in methods if m.kind == FINE_TUNED and m.degenerate]
    if degenerate_tuned and class_balance in NO_BALANCE:
        steps.append(
            f"re-train with --class-balance sampling: {degenerate_tuned[0].name} collapsed onto one label"
        )
    prompt_kappa = kappa.get(prompt.name) if prompt else None
    if kappa and (prompt is None or (prompt_kappa is not None and prompt_kappa < NEAR_CHANCE_KAPPA)):
        figure = (
            f" (Cohen's kappa {prompt_kappa:.2f})"
            if prompt_kappa is not None
            else " (every prompt is degenerate)"
        )
        steps.append(
            f"the best prompt is near chance{figure}: a larger model may prompt well; measure one with "
            "--model (a local Hugging Face folder or a .gguf file) before ruling prompting out"
        )
    top_kappa = kappa.get(top.name) if top else None
    measured_nearest = any(m.demo_selection == "nearest" for m in methods)
    if top_kappa is not None and top_kappa < GOOD_ENOUGH_KAPPA and not measured_nearest:
        steps.append(
            "add --demo-selection nearest: if retrieved similar examples beat fixed demos, the model lacks "
            "what those examples carry and retrieval is the fix"
        )
    return steps
