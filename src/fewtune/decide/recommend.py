"""Pure decision rules: the measured evidence and the costs at the user's volume -> what to ship, and why.

The guides' rules of thumb are the backbone; they assume that both options do the task, so the evidence is
checked first (numbers are the guides' unless marked as fewtune's own):

1. prompting with at least 5 examples is always measured first;
2. a method that is not doing the task (one label for every row, macro-F1 no better than the majority
   guess) is flagged degenerate and never recommended;
3. the verdict is decided on the primary metric (accuracy, or macro-F1 on imbalanced labels), and a
   difference counts only when a paired test on the same test rows finds it (p < 0.05);
4. the options (the best prompt, the best fine-tuned method, the no-LLM reference, retrieved demos when
   retrieval is shown to help) are ordered by their total cost at the run's volume over the horizon, and
   the cheapest one ships unless a dearer one is shown to be more than the guides' 5-point margin ahead
   (totals within 20% of each other: the higher score) -- one rule for every kind, in
   :mod:`fewtune.decide.options`; a lead past the margin that is not shown makes the verdict provisional;
5. with ``--value-per-correct`` the option with the best value net of cost ships instead;
6. retrieval only on evidence: the user says the gap is knowledge, or retrieved labelled examples in the
   prompt (nearest-neighbour demos) significantly beat both fixed demos and fine-tuning;
7. when even the best method agrees with the gold labels only "fairly" beyond chance (Cohen's kappa below
   0.4, Landis & Koch 1977), it is not good enough yet, and the next steps say what the evidence supports.
"""

from __future__ import annotations

from dataclasses import replace

from fewtune.decide.alternatives import Retrieval, retrieval_evidence
from fewtune.decide.cost import break_even
from fewtune.decide.curve import data_step, shots_step, trend
from fewtune.decide.evidence import (
    FINE_TUNED,
    PROMPT,
    REFERENCE,
    Comparison,
    MethodEvidence,
    compare,
    versus,
)
from fewtune.decide.full_ft import weigh_full_ft
from fewtune.decide.money import Volume, cost_reason, low_volume_reason
from fewtune.decide.options import Candidate, Ordering, Step, by_value, candidate, order, rows_to_settle
from fewtune.decide.selection import compare_selected
from fewtune.decide.steps import degenerate_caveat, low_steps
from fewtune.decide.thresholds import (
    CLOSE_COST_SHARE,
    GOOD_ENOUGH_KAPPA,
    LOW_VOLUME_PER_DAY,
    MIN_PROMPT_SHOTS,
    NEAR_CHANCE_KAPPA,
)
from fewtune.decide.verdict import (
    CHOICE_FINE_TUNE,
    CHOICE_MEASURE_PROMPTING,
    CHOICE_NOT_GOOD_ENOUGH,
    CHOICE_PROMPT,
    CHOICE_REFERENCE,
    CHOICE_RETRIEVAL,
    CHOICE_UNDECIDABLE,
    Recommendation,
    Situation,
    Verdict,
    best,
    undecidable,
)
from fewtune.methods import Method

HEADLINES = {
    CHOICE_PROMPT: "Ship the prompt: {}",
    CHOICE_FINE_TUNE: "Fine-tune: {}",
    CHOICE_REFERENCE: "Ship the no-LLM classifier: {}",
    CHOICE_RETRIEVAL: "Retrieve examples into the prompt: {} (nearest-neighbour demos)",
}


def _candidates(
    viable: list[MethodEvidence], tuned: MethodEvidence | None, s: Situation, out: list[Comparison]
) -> tuple[list[Candidate], Retrieval | None]:
    """The options the rule orders, one per family that does the task (the retrieved-demos prompt in the
    prompt's place when retrieval is shown to help), each with the rows it was picked among. A family's
    option is the row the same rule picks among its rows: the best-scoring one unless a cheaper row is not
    shown past the margin behind it (8 demos in every call against none, at a volume where that counts)."""
    v = Volume(s.volume_per_day, s.horizon_days)
    family = {kind: [m for m in viable if m.kind == kind] for kind in (PROMPT, FINE_TUNED, REFERENCE)}
    retrieval = retrieval_evidence(viable, tuned, s, out)

    def pick(rows: list[MethodEvidence], choice: str) -> Candidate | None:
        options = [candidate(m, choice, rows, v) for m in rows]
        return order(options, s, []).shipped if options else None

    prompt = (
        candidate(retrieval.method, CHOICE_RETRIEVAL, retrieval.rows, v)
        if retrieval is not None
        else pick(family[PROMPT], CHOICE_PROMPT)
    )
    # The fine-tuned rows weighed as one family, except a whole-model row the adapter stands in for.
    tuned_rows = [m for m in family[FINE_TUNED] if not m.whole_model or m is tuned]
    fine_tuned = pick(tuned_rows, CHOICE_FINE_TUNE)
    if fine_tuned is not None:
        fine_tuned = replace(fine_tuned, rows=tuple(family[FINE_TUNED]))
    chosen = [prompt, fine_tuned, pick(family[REFERENCE], CHOICE_REFERENCE)]
    return [x for x in chosen if x is not None], retrieval


def _other_side(step: Step, shipped: Candidate) -> tuple[Candidate, float, tuple[float, float] | None]:
    """The open pair's other option, its lead over the shipped one (points) and that lead's interval."""
    c = step.comparison
    assert c is not None and c.lead_ci95 is not None
    low, high = c.lead_ci95
    if step.dearer is not shipped:  # the comparison is dearer minus cheaper
        return step.dearer, c.lead_points, (low, high)
    return step.cheaper, -c.lead_points, (-high, -low)


def _open_pair(ordering: Ordering) -> dict[str, object] | None:
    step, shipped = ordering.open_step, ordering.shipped
    if step is None or step.comparison is None:
        return None
    other, lead, interval = _other_side(step, shipped)
    return {
        "shipped": shipped.name,
        "other": other.name,
        "lead_points": lead,
        "lead_ci95": list(interval) if interval else None,
        "rows": step.comparison.rows,
        "rows_to_settle": rows_to_settle(step),
        "margin_points": abs(step.margin),
    }


def _headline(ordering: Ordering, value_given: bool) -> str:
    shipped, step = ordering.shipped, ordering.open_step
    if step is None or step.comparison is None:
        return HEADLINES[shipped.choice].format(shipped.name)
    other, lead, _ = _other_side(step, shipped)
    rows = step.comparison.rows
    if value_given:
        why = "the best value net of cost"
    elif shipped.total <= other.total:
        why = "cheaper"
    else:
        why = f"higher-scoring; the two cost within {CLOSE_COST_SHARE:.0%} of each other"
    may = f"may be {lead:.1f} points better" if lead > 0 else "may do as well"
    return f"Provisional: ship {shipped.name} ({why}); {other.name} {may}, not settled at n={rows}"


def _family_notes(viable: list[MethodEvidence], methods: tuple[MethodEvidence, ...]) -> list[str]:
    """Options the order could not weigh because none of their rows does the task, or none was measured."""
    notes = []
    for kind, words in ((PROMPT, "prompt"), (FINE_TUNED, "fine-tuned method")):
        if any(m.kind == kind for m in viable):
            continue
        measured = any(m.kind == kind for m in methods)
        notes.append(
            f"no {words} doing the task was measured"
            + (f" (every {words} is degenerate)" if measured else "")
        )
    return notes


def _ordered_verdict(
    viable: list[MethodEvidence], tuned: MethodEvidence | None, s: Situation, out: list[Comparison]
) -> Verdict | None:
    """The verdict from the order of options (decide/options.py), with its reasons and figures."""
    options, retrieval = _candidates(viable, tuned, s, out)
    if not options:
        return None
    if s.value_per_correct is not None and len(options) > 1:
        ordering = by_value(options, s.value_per_correct, s, out)
    else:
        ordering = order(options, s, out)
    unpaired = ordering.unpaired
    if unpaired is not None and unpaired.comparison is not None:
        return undecidable(unpaired.comparison, {x.name: x.method for x in options})
    shipped = ordering.shipped
    label, v = s.metric.label, Volume(s.volume_per_day, s.horizon_days)
    steps = sorted(ordering.steps, key=lambda x: (x.settled, -x.loser.score))
    reasons = [x.reason for x in steps]
    if len(options) == 1:
        reasons.append(f"{shipped.name} is the only option doing the task ({shipped.score:.3f} {label})")
    if shipped.choice == CHOICE_RETRIEVAL and retrieval is not None:
        reasons = retrieval.reasons + reasons
    reasons += _family_notes(viable, s.methods)
    for x in ordering.steps:
        kappa = s.kappa.get(x.loser.name)
        if x.loser is not shipped and kappa is not None and kappa < NEAR_CHANCE_KAPPA:
            reasons.append(
                f"{x.loser.name} is near chance (Cohen's kappa {kappa:.2f}): it is not doing the task at any "
                "volume, so its lower cost protects nothing"
            )
    prompt = next((x.method for x in options if x.method.kind == PROMPT), None)
    be = break_even(prompt.cost, tuned.cost) if prompt and tuned else None
    reasons.append(cost_reason([x.method for x in options], v, be))
    if prompt and tuned and s.volume_per_day < LOW_VOLUME_PER_DAY:
        reasons.append(low_volume_reason(prompt, tuned, v))
    return Verdict(
        shipped.choice,
        shipped.method,
        _headline(ordering, s.value_per_correct is not None),
        reasons,
        settled=ordering.settled,
        unsettled=_open_pair(ordering),
    )


def recommend(s: Situation) -> Recommendation:
    """Apply the rules (module docstring) to one run's evidence."""
    caveats = list(s.extra_caveats)
    if not s.volume_given:
        caveats.insert(0, f"no --volume-per-day given: costs assume {s.volume_per_day:,.0f} calls/day")
    first = _measure_prompting_first(s, caveats)
    if first is not None:
        return first
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
        verdict = _knowledge_gap_verdict(s, [m for m in (prompt, tuned, reference) if m])
    else:
        verdict = _ordered_verdict(viable, tuned, s, comparisons)
    top = best(viable)
    steps = low_steps(s.methods, s.kappa, s.class_balance, prompt, top)
    verdict = _good_enough(verdict, top, degenerate, s)
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
    unique = {(x.baseline, x.candidate, x.candidates): x for x in comparisons}
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
        list(unique.values()),
        degenerate,
        be,
        verdict.settled,
        verdict.unsettled,
    )


def _measure_prompting_first(s: Situation, caveats: list[str]) -> Recommendation | None:
    """Rule 1: without a prompting row of at least 5 examples there is nothing to decide yet."""
    if any(m.shots >= MIN_PROMPT_SHOTS for m in s.methods if m.kind == PROMPT):
        return None
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
        settled=None,
    )


def _knowledge_gap_verdict(s: Situation, bests: list[MethodEvidence]) -> Verdict:
    """Rule 6, on the user's word: a stated knowledge gap is retrieval's, whatever the scores."""
    figures = ", ".join(f"{m.name} {m.score:.3f}" for m in bests)
    return Verdict(
        CHOICE_RETRIEVAL,
        None,
        "Add retrieval (RAG) rather than fine-tuning: you stated a knowledge gap",
        [
            "you stated the model lacks knowledge (--gap knowledge), not behaviour",
            f"measured {s.metric.label}: {figures}; fine-tuning on a few hundred examples teaches format and "
            "behaviour more reliably than new facts, while retrieval puts the missing facts in the "
            "prompt",
        ],
    )


def _good_enough(
    verdict: Verdict | None, top: MethodEvidence | None, degenerate: dict[str, str], s: Situation
) -> Verdict:
    """Rules 2 and 7: 'not good enough yet' when no method does the task, or when the best agrees with the
    gold labels only fairly beyond chance (the verdict it would have been kept among the reasons)."""
    kappa = s.kappa.get(top.name) if top else None
    if verdict is None or top is None:
        return Verdict(
            CHOICE_NOT_GOOD_ENOUGH,
            None,
            "Not good enough yet: no method does the task",
            [f"every method is degenerate: {'; '.join(f'{k}: {v}' for k, v in degenerate.items())}"],
        )
    if kappa is not None and kappa < GOOD_ENOUGH_KAPPA and s.gap != "knowledge":
        leaning = f" (the verdict between them would be: {verdict.headline})" if verdict.method else ""
        return Verdict(
            CHOICE_NOT_GOOD_ENOUGH,
            top,
            f"Not good enough yet: the best, {top.name}, reaches {top.score:.3f} {s.metric.label}",
            [
                f"{top.name} agrees with the gold labels only slightly or fairly beyond chance "
                f"(Cohen's kappa {kappa:.2f}, below {GOOD_ENOUGH_KAPPA:.1f}, 'moderate' in Landis & Koch "
                f"1977); shipping any method now ships a weak one{leaning}",
                *verdict.reasons,
            ],
        )
    return verdict


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
    """What would settle a provisional verdict first, then the learning-curve steps for the family the
    verdict leans on."""
    label = s.metric.label
    steps = []
    open_pair = verdict.unsettled or {}
    if open_pair.get("rows_to_settle"):
        rows, needed = open_pair["rows"], open_pair["rows_to_settle"]
        steps.append(
            f"settle {open_pair['shipped']} vs {open_pair['other']}: about {needed:,} test rows "
            f"({needed - rows:,} more than the {rows} measured) would show whether the "
            f"{open_pair['lead_points']:+.1f}-point gap clears {open_pair['margin_points']:.1f} points, if "
            "it holds (80% power)"
        )
    open_names = {open_pair.get("shipped"), open_pair.get("other")}
    tuned_open = any(m.name in open_names for m in s.methods if m.kind == FINE_TUNED)
    lora = [(m.train_examples or 0, m.score) for m in s.methods if m.kind == FINE_TUNED and m.shots == 0]
    sizes = sorted({m.train_examples or 0 for m in s.methods if m.kind == FINE_TUNED})
    if (verdict.choice in (CHOICE_FINE_TUNE, CHOICE_NOT_GOOD_ENOUGH) or tuned_open) and sizes:
        step = data_step(trend(Method.LORA.value, "training examples", lora), sizes, label)
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
