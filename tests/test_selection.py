"""Choosing the best of several rows on the test rows, and then testing it: the max-t correction."""

from __future__ import annotations

import numpy as np

from fewtune.decide.cost import MethodCost
from fewtune.decide.evidence import FINE_TUNED, PROMPT, MethodEvidence, compare
from fewtune.decide.metric import ACCURACY_METRIC
from fewtune.decide.selection import compare_selected

COST = MethodCost(setup=0.0, per_request=0.0)


def evidence(name: str, kind: str, right: np.ndarray) -> MethodEvidence:
    stats = np.stack([np.zeros(len(right), dtype=int), (~right).astype(int)], axis=1)
    return MethodEvidence(name, kind, float(right.mean()), COST, stats=stats)


def test_one_pair_is_the_plain_paired_test() -> None:
    rng = np.random.default_rng(1)
    a, b = evidence("p", PROMPT, rng.random(200) < 0.7), evidence("l", FINE_TUNED, rng.random(200) < 0.8)
    assert compare_selected([a], [b], a, b, ACCURACY_METRIC) == compare(a, b, ACCURACY_METRIC)


def test_the_best_of_many_equal_prompts_is_not_declared_ahead() -> None:
    """A seed where the best of 12 equally good prompts beats an equally good LoRA row by the plain test
    (the winner's curse); the simultaneous interval over the 12 pairs covers zero."""
    for seed in range(200):
        rng = np.random.default_rng(seed)
        ease = rng.beta(3, 1, 300)
        prompts = [evidence(f"prompt {j}", PROMPT, rng.random(300) < ease) for j in range(12)]
        lora = evidence("lora", FINE_TUNED, rng.random(300) < ease)
        best = max(prompts, key=lambda m: m.score)
        plain = compare(best, lora, ACCURACY_METRIC)
        if plain.significant and plain.lead_points < 0:
            break
    else:
        raise AssertionError("no seed showed the winner's curse")
    adjusted = compare_selected(prompts, [lora], best, lora, ACCURACY_METRIC)
    assert adjusted.candidates == 12 and "12 pairs" in (adjusted.selection or "")
    assert not adjusted.significant and adjusted.lead_ci95 is not None
    assert adjusted.lead_ci95[0] < 0 < adjusted.lead_ci95[1]
    assert plain.lead_ci95 is not None and adjusted.lead_ci95[0] < plain.lead_ci95[0]  # wider, not moved


def test_a_real_gap_survives_the_correction() -> None:
    rng = np.random.default_rng(3)
    ease = rng.beta(3, 1, 400)
    prompts = [evidence(f"prompt {j}", PROMPT, rng.random(400) < ease * 0.7) for j in range(4)]
    lora = evidence("lora", FINE_TUNED, rng.random(400) < ease)
    best = max(prompts, key=lambda m: m.score)
    adjusted = compare_selected(prompts, [lora], best, lora, ACCURACY_METRIC)
    assert adjusted.significant and adjusted.lead_points > 15
