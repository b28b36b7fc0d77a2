"""The two options beside prompt-or-fine-tune: retrieval (only on measured evidence) and the no-LLM
reference classifier (when no LLM method is clearly ahead of it)."""

from __future__ import annotations

from fewtune.cost import format_usd
from fewtune.decide.evidence import PROMPT, Comparison, MethodEvidence, not_significant, versus
from fewtune.decide.money import Volume, cost_reason
from fewtune.decide.selection import compare_selected
from fewtune.decide.thresholds import MARGIN_POINTS
from fewtune.decide.verdict import CHOICE_REFERENCE, CHOICE_RETRIEVAL, Situation, Verdict, best, undecidable


def retrieval_verdict(
    viable: list[MethodEvidence], tuned: MethodEvidence | None, s: Situation, out: list[Comparison]
) -> Verdict | None:
    """Rule 7 from measurement: nearest-neighbour demos significantly beat fixed demos and fine-tuning."""
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
    headline = f"Retrieve examples into the prompt: {nearest.name} (nearest-neighbour demos)"
    return Verdict(CHOICE_RETRIEVAL, nearest, headline, reasons)


def reference_verdict(
    reference: MethodEvidence,
    llm_best: MethodEvidence | None,
    s: Situation,
    out: list[Comparison],
    references: list[MethodEvidence] | None = None,
    llm_rows: list[MethodEvidence] | None = None,
) -> Verdict | None:
    """Rule 8: the no-LLM classifier ships unless the LLM method the verdict would ship (``llm_best``) is
    shown to be more than 5 points ahead of it: the paired interval's lower bound is above the margin."""
    label = s.metric.label
    tail = (
        f"setup {format_usd(reference.cost.setup)}, {format_usd(reference.cost.per_request)}/request, no LLM "
        "to serve (SetFit's lesson: a small encoder + classifier is often enough)"
    )
    if llm_best is None:
        reasons = [
            f"no LLM method does the task; {reference.name} reaches {reference.score:.3f} {label}",
            tail,
        ]
        return Verdict(CHOICE_REFERENCE, reference, f"Ship the no-LLM classifier: {reference.name}", reasons)
    # Both sides were picked on the test rows (the best reference size, the best LLM row): test as such.
    c = compare_selected(
        references or [reference], llm_rows or [llm_best], reference, llm_best, s.metric, s.seed
    )
    out.append(c)
    if not c.paired:  # missing evidence favours neither side
        return undecidable(c, {m.name: m for m in (reference, llm_best)})
    if c.ahead_by_more_than(MARGIN_POINTS):
        return None
    if c.lead_points <= 0:
        why = f"the no-LLM classifier is ahead of {llm_best.name}: {versus(c, label)}"
    elif not c.significant:
        why = not_significant(c, label)
    else:
        why = (
            f"{llm_best.name} is not shown to be more than {MARGIN_POINTS:.0f} points ahead (the paired "
            f"interval's lower bound is not above it): {versus(c, label)}"
        )
    v = Volume(s.volume_per_day, s.horizon_days)
    reasons = [why, tail, cost_reason(reference, llm_best, v)]
    return Verdict(CHOICE_REFERENCE, reference, f"Ship the no-LLM classifier: {reference.name}", reasons)
