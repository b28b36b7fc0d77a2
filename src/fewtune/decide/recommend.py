"""Pure decision rules: the measured evidence and the costs at the user's volume -> what to ship, and why.

The guides' rules of thumb are the backbone; they assume that both options do the task, so the evidence is
checked first (numbers are the guides' unless marked as fewtune's own):

1. prompting with at least 5 examples is always measured first;
2. a method that is not doing the task (one label for every row, macro-F1 no better than the majority
   guess) is flagged degenerate and never recommended;
3. the verdict is decided on the primary metric (accuracy, or macro-F1 on imbalanced labels), and a
   difference counts only when a paired test on the same test rows finds it (p < 0.05);
4. best prompt within 5 points of the best fine-tuned method, or no significant difference -> the prompt;
5. fine-tuning significantly ahead by 15+ points -> fine-tune, at any volume, with the cost stated (a prompt
   that does not do the task has no value to protect); at 100,000+ calls/day its per-request saving adds up;
6. between 5 and 15 points -> fine-tune when it is no dearer over the horizon, otherwise it depends on what
   one extra correct answer is worth (``--value-per-correct`` decides);
7. retrieval only on evidence: the user says the gap is knowledge, or retrieved labelled examples in the
   prompt (nearest-neighbour demos) significantly beat both fixed demos and fine-tuning;
8. the no-LLM reference ships when no LLM method is significantly more than 5 points ahead of it (fewtune's
   application of rule 4: prefer the simpler option within the margin);
9. when even the best method agrees with the gold labels only "fairly" beyond chance (Cohen's kappa below
   0.4, Landis & Koch 1977), it is not good enough yet, and the next steps say what the evidence supports.
"""

from __future__ import annotations

from fewtune.cost import break_even, format_usd
from fewtune.decide.alternatives import reference_verdict, retrieval_verdict
from fewtune.decide.curve import data_step, shots_step, trend
from fewtune.decide.evidence import (
    FINE_TUNED,
    PROMPT,
    REFERENCE,
    Comparison,
    MethodEvidence,
    compare,
    not_significant,
    versus,
)
from fewtune.decide.full_ft import weigh_full_ft
from fewtune.decide.money import (
    Volume,
    cost_reason,
    low_volume_reason,
    value_of_correct,
    value_reason,
)
from fewtune.decide.selection import compare_selected
from fewtune.decide.steps import degenerate_caveat, low_steps
from fewtune.decide.thresholds import (
    FINE_TUNE_LEAD_POINTS,
    GOOD_ENOUGH_KAPPA,
    HIGH_VOLUME_PER_DAY,
    LOW_VOLUME_PER_DAY,
    MARGIN_POINTS,
    MIN_PROMPT_SHOTS,
    NEAR_CHANCE_KAPPA,
)
from fewtune.decide.verdict import (
    CHOICE_DEPENDS,
    CHOICE_FINE_TUNE,
    CHOICE_MEASURE_PROMPTING,
    CHOICE_NOT_GOOD_ENOUGH,
    CHOICE_PROMPT,
    CHOICE_RETRIEVAL,
    CHOICE_UNDECIDABLE,
    Recommendation,
    Situation,
    Verdict,
    best,
    undecidable,
)


def _llm_verdict(
    prompt: MethodEvidence | None, tuned: MethodEvidence | None, s: Situation, c: Comparison | None
) -> Verdict | None:
    """Rules 4-6 between the best viable prompt and the best viable fine-tuned method."""
    label, v = s.metric.label, Volume(s.volume_per_day, s.horizon_days)
    if prompt is None and tuned is None:
        return None
    if tuned is None:
        assert prompt is not None
        return Verdict(
            CHOICE_PROMPT,
            prompt,
            f"Ship the prompt: {prompt.name}",
            [
                f"{prompt.name} is the best prompt ({prompt.score:.3f} {label}) and no fine-tuned method "
                f"doing the task was measured; setup {format_usd(prompt.cost.setup)}, "
                f"{format_usd(prompt.cost.per_request)}/request"
            ],
        )
    if prompt is None:
        return Verdict(
            CHOICE_FINE_TUNE,
            tuned,
            f"Fine-tune: {tuned.name}",
            [
                f"no prompt does the task (every prompting method is degenerate); {tuned.name} reaches "
                f"{tuned.score:.3f} {label}",
                f"fine-tuning costs {format_usd(tuned.cost.setup)} to set up and "
                f"{format_usd(tuned.cost.per_request)}/request",
            ],
        )
    assert c is not None
    if not c.paired:
        return undecidable(c, {m.name: m for m in (prompt, tuned)})
    be = break_even(prompt.cost, tuned.cost)
    cost = cost_reason(prompt, tuned, v, be)
    low_volume = [low_volume_reason(prompt, tuned, v)] if s.volume_per_day < LOW_VOLUME_PER_DAY else []
    lead = c.lead_points
    if not c.significant:
        return Verdict(
            CHOICE_PROMPT,
            prompt,
            f"Ship the prompt: {prompt.name} (no significant difference from fine-tuning)",
            [
                not_significant(c, label),
                "without a proven gain the prompt is the simpler option: no training, no adapter to serve, "
                "changed by editing text",
                cost,
                *low_volume,
            ],
        )
    if not c.ahead_by_more_than(MARGIN_POINTS):
        if lead < 0:
            where = "ahead of"
        elif c.within(MARGIN_POINTS):
            where = f"shown to be within {MARGIN_POINTS:.0f} points of"
        else:  # the interval straddles the margin: a lead above it is not shown
            where = f"not shown to be more than {MARGIN_POINTS:.0f} points behind"
        return Verdict(
            CHOICE_PROMPT,
            prompt,
            f"Ship the prompt: {prompt.name}",
            [f"the best prompt is {where} the best fine-tuned method: {versus(c, label)}", cost, *low_volume],
        )
    if c.ahead_by_more_than(FINE_TUNE_LEAD_POINTS):
        reasons = [
            f"fine-tuning is shown to be more than {FINE_TUNE_LEAD_POINTS:.0f} points ahead (the paired "
            f"interval's lower bound is above it): {versus(c, label)}"
        ]
        if s.kappa.get(prompt.name, 1.0) < NEAR_CHANCE_KAPPA:
            reasons.append(
                f"the best prompt is near chance (Cohen's kappa {s.kappa[prompt.name]:.2f}): it is not doing "
                "the task at any volume, so there is no cheaper option to protect"
            )
        if s.volume_per_day >= HIGH_VOLUME_PER_DAY:
            reasons.append(
                f"{s.volume_per_day:,.0f} calls/day is at or above ~{HIGH_VOLUME_PER_DAY:,}/day, where "
                "fine-tuning's per-request saving adds up too"
            )
        reasons += [cost, *low_volume]
        return Verdict(CHOICE_FINE_TUNE, tuned, f"Fine-tune: {tuned.name}", reasons)
    value = value_of_correct(prompt, tuned, v)
    why = (
        f"fine-tuning is shown to be more than {MARGIN_POINTS:.0f} points ahead, but not more than "
        f"{FINE_TUNE_LEAD_POINTS:.0f}: {versus(c, label)}"
    )
    reasons = [why, value_reason(value, tuned.name, v, label), cost, *low_volume]
    per = value.break_even_value
    if per is None:
        return Verdict(CHOICE_FINE_TUNE, tuned, f"Fine-tune: {tuned.name}", reasons)
    if s.value_per_correct is not None:
        pays = s.value_per_correct >= per
        reasons.insert(
            2,
            f"you value one more correct answer at {format_usd(s.value_per_correct)} (--value-per-correct), "
            f"{'at or above' if pays else 'below'} the {format_usd(per)} at which fine-tuning pays",
        )
        if pays:
            return Verdict(CHOICE_FINE_TUNE, tuned, f"Fine-tune: {tuned.name}", reasons)
        return Verdict(CHOICE_PROMPT, prompt, f"Ship the prompt: {prompt.name}", reasons)
    return Verdict(
        CHOICE_DEPENDS,
        None,
        f"It depends: {tuned.name} is {lead:.1f} points ahead of {prompt.name}; fine-tuning pays if one more "
        f"correct answer is worth at least {format_usd(per)}",
        reasons,
    )


def recommend(s: Situation) -> Recommendation:
    """Apply the rules (module docstring) to one run's evidence."""
    caveats = list(s.extra_caveats)
    if not s.volume_given:
        caveats.insert(0, f"no --volume-per-day given: costs assume {s.volume_per_day:,.0f} calls/day")
    label = s.metric.label
    prompts = [m for m in s.methods if m.kind == PROMPT]
    if not any(m.shots >= MIN_PROMPT_SHOTS for m in prompts):
        measured = ", ".join(m.name for m in s.methods)
        return Recommendation(
            CHOICE_MEASURE_PROMPTING,
            None,
            f"Measure prompting with at least {MIN_PROMPT_SHOTS} examples before deciding",
            [
                f"no prompting method with {MIN_PROMPT_SHOTS} or more examples was measured (measured: "
                f"{measured}); it is always measured first because it often closes the gap with no "
                f"training: re-run with --shots 0,{MIN_PROMPT_SHOTS} (or more) and few-shot in --methods"
            ],
            caveats,
            metric=s.metric.name,
            metric_reason=s.metric_reason,
        )
    degenerate = {m.name: m.degenerate for m in s.methods if m.degenerate}
    caveats += [degenerate_caveat(m, s.class_balance) for m in s.methods if m.degenerate]
    viable = [m for m in s.methods if m.viable]
    prompt = best([m for m in viable if m.kind == PROMPT])
    tuned = best([m for m in viable if m.kind == FINE_TUNED])
    reference = best([m for m in viable if m.kind == REFERENCE])
    comparisons: list[Comparison] = []
    tuned, full_ft_reasons = weigh_full_ft(viable, tuned, s, comparisons)
    prompts_viable = [m for m in viable if m.kind == PROMPT]
    tuned_viable = [m for m in viable if m.kind == FINE_TUNED]
    c = (
        compare_selected(prompts_viable, tuned_viable, prompt, tuned, s.metric, s.seed)
        if prompt and tuned
        else None
    )
    if c is not None:
        comparisons.append(c)
    verdict: Verdict | None
    if s.gap == "knowledge":
        figures = ", ".join(f"{m.name} {m.score:.3f}" for m in (prompt, tuned, reference) if m)
        verdict = Verdict(
            CHOICE_RETRIEVAL,
            None,
            "Add retrieval (RAG) rather than fine-tuning: you stated a knowledge gap",
            [
                "you stated the model lacks knowledge (--gap knowledge), not behaviour",
                f"measured {label}: {figures}; fine-tuning on a few hundred examples teaches format and "
                "behaviour more reliably than new facts, while retrieval puts the missing facts in the "
                "prompt",
            ],
        )
    else:
        verdict = retrieval_verdict(viable, tuned, s, comparisons) or _llm_verdict(prompt, tuned, s, c)
        if reference is not None and (verdict is None or verdict.choice != CHOICE_UNDECIDABLE):
            # The reference is held against what the LLM verdict ships (the better LLM method when it
            # ships none: "it depends"), never merely against the best-scoring row.
            shipped = verdict.method if verdict is not None and verdict.method is not None else None
            against = shipped or best([m for m in (prompt, tuned) if m])
            llm_rows = [m for m in viable if m.kind in (PROMPT, FINE_TUNED)]
            references = [m for m in viable if m.kind == REFERENCE]
            shipped_reference = reference_verdict(reference, against, s, comparisons, references, llm_rows)
            top_llm = best(llm_rows)
            if shipped_reference is not None:
                if verdict is not None and top_llm is not None and top_llm is not against:
                    # A higher-scoring LLM row was set aside between the LLM methods: say why, or the
                    # reader sees the top row of the table passed over without a word.
                    higher = f"{top_llm.name} scores higher ({top_llm.score:.3f} {label})"
                    shipped_reference.reasons.insert(
                        1, f"{higher} but was set aside among the LLM methods: {verdict.reasons[0]}"
                    )
                verdict = shipped_reference
    top = best(viable)
    steps = low_steps(s.methods, s.kappa, s.class_balance, prompt, top)
    kappa = s.kappa.get(top.name) if top else None
    if verdict is None or top is None:
        verdict = Verdict(
            CHOICE_NOT_GOOD_ENOUGH,
            None,
            "Not good enough yet: no method does the task",
            [f"every method is degenerate: {'; '.join(f'{k}: {v}' for k, v in degenerate.items())}"],
        )
    elif kappa is not None and kappa < GOOD_ENOUGH_KAPPA and s.gap != "knowledge":
        leaning = f" (the verdict between them would be: {verdict.headline})" if verdict.method else ""
        verdict = Verdict(
            CHOICE_NOT_GOOD_ENOUGH,
            top,
            f"Not good enough yet: the best, {top.name}, reaches {top.score:.3f} {label}",
            [
                f"{top.name} agrees with the gold labels only slightly or fairly beyond chance "
                f"(Cohen's kappa {kappa:.2f}, below {GOOD_ENOUGH_KAPPA:.1f}, 'moderate' in Landis & Koch "
                f"1977); shipping any method now ships a weak one{leaning}",
                *verdict.reasons,
            ],
        )
    if s.floor is not None and verdict.choice not in (CHOICE_NOT_GOOD_ENOUGH, CHOICE_UNDECIDABLE):
        verdict = _floor_verdict(verdict, top, s, comparisons) or verdict
    verdict.reasons.extend(full_ft_reasons)
    caveats += [
        f"{x.candidate} vs {x.baseline}: {x.selection}"
        for x in comparisons
        if x.candidates > 1 and x.selection
    ][:1]
    steps = _steps(s, verdict, tuned, prompt) + steps
    be = break_even(prompt.cost, tuned.cost) if prompt and tuned else None
    return Recommendation(
        verdict.choice,
        verdict.method.name if verdict.method else None,
        verdict.headline,
        verdict.reasons,
        caveats,
        list(dict.fromkeys(steps)),
        s.metric.name,
        s.metric_reason,
        c,
        comparisons,
        degenerate,
        be,
    )


def _floor_verdict(
    verdict: Verdict, top: MethodEvidence | None, s: Situation, out: list[Comparison]
) -> Verdict | None:
    """Open outputs' quality floor (kappa's counterpart): the method that would ship must be significantly
    better than an output that needs no model; otherwise it is not good enough yet."""
    chosen = verdict.method or top
    if chosen is None or s.floor is None:
        return None
    c = compare(s.floor, chosen, s.metric, s.seed)
    out.append(c)
    if c.paired and c.significantly_ahead:
        return None
    label = s.metric.label
    why = (
        f"{chosen.name} is not significantly better than {s.floor.name}, which needs no model: "
        f"{versus(c, label)}"
        if c.paired
        else f"{chosen.name} cannot be compared with {s.floor.name} on the same rows (no per-row predictions)"
    )
    leaning = f" (the verdict among the methods would be: {verdict.headline})" if verdict.method else ""
    return Verdict(
        CHOICE_NOT_GOOD_ENOUGH,
        chosen,
        f"Not good enough yet: the best, {chosen.name}, does no better than {s.floor.name}",
        [why + leaning, *verdict.reasons],
    )


def _steps(
    s: Situation, verdict: Verdict, tuned: MethodEvidence | None, prompt: MethodEvidence | None
) -> list[str]:
    """Learning-curve steps for the family the verdict leans on."""
    label = s.metric.label
    steps = []
    lora = [(m.train_examples or 0, m.score) for m in s.methods if m.kind == FINE_TUNED and m.shots == 0]
    sizes = sorted({m.train_examples or 0 for m in s.methods if m.kind == FINE_TUNED})
    if verdict.choice in (CHOICE_FINE_TUNE, CHOICE_DEPENDS, CHOICE_NOT_GOOD_ENOUGH) and sizes:
        step = data_step(trend("lora", "training examples", lora), sizes, label)
        if step:
            steps.append(step)
    chosen = verdict.method
    if chosen is not None and chosen.kind == PROMPT and chosen.demo_selection:
        same = [
            (m.shots, m.score)
            for m in s.methods
            if m.kind == PROMPT and m.demo_selection == chosen.demo_selection and not m.calibrated
        ]
        step = shots_step(trend(f"few-shot {chosen.demo_selection}", "shots", same), label)
        if step:
            steps.append(step)
    return steps
