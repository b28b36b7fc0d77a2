"""Retrieval, only on measured evidence: retrieved labelled examples in the prompt beat fixed demos and
fine-tuning on the same rows. When they do, the retrieved-demos prompt is the option the verdict weighs."""

from __future__ import annotations

from dataclasses import dataclass

from fewtune.decide.evidence import PROMPT, Comparison, MethodEvidence, versus
from fewtune.decide.selection import compare_selected
from fewtune.decide.verdict import Situation, best


@dataclass(frozen=True)
class Retrieval:
    """The nearest-neighbour-demos row that retrieval would ship, the rows it was picked among, and the
    evidence for it in sentences."""

    method: MethodEvidence
    rows: tuple[MethodEvidence, ...]
    reasons: list[str]


def retrieval_evidence(
    viable: list[MethodEvidence], tuned: MethodEvidence | None, s: Situation, out: list[Comparison]
) -> Retrieval | None:
    """Retrieval from measurement: nearest-neighbour demos significantly beat fixed demos and fine-tuning."""
    prompts = [m for m in viable if m.kind == PROMPT and m.shots > 0]
    nearest = best([m for m in prompts if m.demo_selection == "nearest"])
    fixed = best([m for m in prompts if m.demo_selection != "nearest"])
    if nearest is None or fixed is None:
        return None
    label = s.metric.label
    nearest_rows = [m for m in prompts if m.demo_selection == "nearest"]
    fixed_rows = [m for m in prompts if m.demo_selection != "nearest"]
    against_fixed = compare_selected(fixed_rows, nearest_rows, fixed, nearest, s.metric, s.seed)
    out.append(against_fixed)
    if not against_fixed.significantly_ahead:
        return None
    reasons = [
        f"retrieved labelled examples beat fixed demos in the same prompt: {versus(against_fixed, label)}; "
        "what the model lacks is found in similar examples, which is what retrieval supplies"
    ]
    if tuned is not None:
        tuned_rows = [m for m in viable if m.kind == tuned.kind]
        against_tuned = compare_selected(tuned_rows, nearest_rows, tuned, nearest, s.metric, s.seed)
        out.append(against_tuned)
        if not against_tuned.significantly_ahead:
            return None
        reasons.append(f"and they beat fine-tuning: {versus(against_tuned, label)}")
    else:
        reasons.append("no fine-tuned method was measured to compare with")
    return Retrieval(nearest, tuple(nearest_rows), reasons)
