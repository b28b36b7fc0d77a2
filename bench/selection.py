"""Selection benchmark: how often does the best of N prompt rows read "significantly ahead" of a LoRA row
that is just as good, and how often is a real gap found?

No model: seeded synthetic per-row outcomes. Each test row has an ease e ~ Beta(3, 1) (mean 0.75, so the
methods' errors are correlated, as real prompt variants' are), and each method is right on it with
probability e (the LoRA row: min(1, e + gap)). The best of N prompt rows (picked on the same rows) is then
compared with the LoRA row, plainly (the exact McNemar test, as if the pair had been chosen in advance) and
as fewtune compares it (simultaneous max-t bootstrap intervals over every pair, fewtune.decide.selection).

    .venv/bin/python bench/selection.py                  # 400 trials per cell, 300 test rows (~5 min)
    .venv/bin/python bench/selection.py --trials 100

False positive rate: share of trials, with every method equally good, in which the best prompt is declared
significantly ahead (p < 0.05 and ahead). Power: share of trials, with LoRA truly +5 or +10 points, in which
LoRA is declared significantly ahead of the best prompt. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from fewtune.decide.cost import MethodCost
from fewtune.decide.evidence import FINE_TUNED, PROMPT, MethodEvidence, compare
from fewtune.decide.metric import ACCURACY_METRIC
from fewtune.decide.selection import compare_selected

CANDIDATES = (1, 4, 12, 24)
GAPS = (0.0, 0.05, 0.10)
COST = MethodCost(setup=0.0, per_request=0.0)


def evidence(name: str, kind: str, right: np.ndarray) -> MethodEvidence:
    stats = np.stack([np.zeros(len(right), dtype=int), (~right).astype(int)], axis=1)
    score = float(right.mean())
    return MethodEvidence(name, kind, score, COST, stats=stats, accuracy=score)


def trial(rng: np.random.Generator, candidates: int, gap: float, rows: int, seed: int) -> tuple[bool, ...]:
    ease = rng.beta(3, 1, rows)
    prompts = [evidence(f"prompt {j}", PROMPT, rng.random(rows) < ease) for j in range(candidates)]
    lora = evidence("lora", FINE_TUNED, rng.random(rows) < np.minimum(1.0, ease + gap))
    best = max(prompts, key=lambda m: m.score)
    plain = compare(best, lora, ACCURACY_METRIC, seed)
    adjusted = compare_selected(prompts, [lora], best, lora, ACCURACY_METRIC, seed)
    return (
        plain.significant and plain.lead_points < 0,
        adjusted.significant and adjusted.lead_points < 0,
        plain.significant and plain.lead_points > 0,
        adjusted.significant and adjusted.lead_points > 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    table: dict[str, dict[str, dict[str, float]]] = {"false_positive_rate": {}, "power": {}}
    print(f"{args.trials} trials per cell, {args.rows} test rows, seed {args.seed}")
    print(
        "| prompt rows (N) | false 'prompt ahead', plain | fewtune | power +5, plain | fewtune | "
        "power +10, plain | fewtune |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in CANDIDATES:
        cells = []
        for gap in GAPS:
            outcomes = np.array([trial(rng, n, gap, args.rows, args.seed + t) for t in range(args.trials)])
            if gap == 0:
                plain, ours = outcomes[:, 0].mean(), outcomes[:, 1].mean()
                table["false_positive_rate"][str(n)] = {"plain": float(plain), "fewtune": float(ours)}
            else:
                plain, ours = outcomes[:, 2].mean(), outcomes[:, 3].mean()
                table["power"].setdefault(str(n), {})[f"+{gap * 100:.0f}"] = float(ours)
                table["power"][str(n)][f"+{gap * 100:.0f} plain"] = float(plain)
            cells += [f"{plain:.1%}", f"{ours:.1%}"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
