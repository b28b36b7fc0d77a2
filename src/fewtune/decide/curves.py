"""The two curves behind "few-shot vs fine-tuning", and where they cross.

- **shots**: prompting accuracy as demos grow, one curve per demo selection (mean and std over demo draws);
  zero-shot is every curve's k=0 point.
- **train_examples**: LoRA accuracy as labelled training examples grow, with each point's 95% bootstrap
  interval; the embedding + logistic-regression reference on the same examples alongside.
- **crossover**: the fewest training examples with which LoRA matches the best prompt, i.e. how many labelled
  examples the prompt is worth (Le Scao & Rush 2021, "How Many Data Points is a Prompt Worth?", NAACL),
  interpolated linearly in log n between the sizes tried.

Everything is computed from results.json's method rows, so ``fewtune report`` adds it to older runs too.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from fewtune.methods import Method
from fewtune.results.record import MethodRow
from fewtune.results.rows import Row
from fewtune.results.views import CrossoverRecord, Curves, CurvesRecord, ShotRecord, SizePoint, SizeRecord

LORA_METHOD = Method.LORA.value
CALIBRATED_SUFFIX = " calibrated"


def accuracy_of(row: Row) -> float:
    """A label row's accuracy (the curves are drawn for label rows only, which always have one)."""
    if row.accuracy is None:
        raise KeyError(f"method row {row.name!r} has no accuracy")
    return row.accuracy


def mean_accuracy(row: Mapping[str, Any]) -> float:
    """Accuracy averaged over demo draws where there were several, else the row's accuracy."""
    typed = Row(row)
    mean = typed.accuracy_mean
    return accuracy_of(typed) if mean is None else float(mean)


def strategy(row: Mapping[str, Any]) -> str:
    """The shot curve a prompting row belongs to: its demo selection, plus " calibrated" when it is."""
    typed = Row(row)
    base = typed.demo_selection or "balanced"
    return base + (CALIBRATED_SUFFIX if typed.calibrated else "")


def draw_count(row: Row) -> int:
    """Demo draws behind the row's accuracy (1 without --demo-seeds)."""
    return len(row.accuracy_draws) or 1


def shot_curve(methods: Sequence[MethodRow]) -> list[ShotRecord]:
    """Rows of ``{strategy, k, mean, std, draws, name}``, by strategy (first seen first) then k."""
    prompting = [Row(m) for m in methods if Method.of(m).prompting]
    zero = {m.calibrated: m for m in prompting if not m.shots}
    few = [m for m in prompting if m.shots]
    strategies = list(dict.fromkeys(strategy(m.data) for m in few))
    rows = []
    for name in strategies:
        members = [m for m in few if strategy(m.data) == name]
        start = zero.get(name.endswith(CALIBRATED_SUFFIX))
        for row in ([start] if start else []) + sorted(members, key=lambda m: m.shots):
            rows.append(
                ShotRecord(
                    strategy=name,
                    k=row.shots,
                    mean=mean_accuracy(row.data),
                    std=row.accuracy_std,
                    draws=draw_count(row),
                    name=row.name,
                )
            )
    return rows


def train_curve(methods: Sequence[MethodRow], method: str = LORA_METHOD) -> list[SizeRecord]:
    """Rows of ``{n, accuracy, ci95, name}`` for ``method`` (lora or reference), by n."""
    rows = [row for row in map(Row, methods) if row.method == method and row.train_examples]
    return [
        SizeRecord(n=row.train_examples, accuracy=accuracy_of(row), ci95=row.accuracy_ci95, name=row.name)
        for row in sorted(rows, key=lambda row: row.train_examples)
    ]


def best_prompt(methods: Sequence[MethodRow]) -> MethodRow | None:
    """The prompting row with the highest accuracy (mean over draws where there are several)."""
    prompting = [m for m in methods if Method.of(m).prompting]
    return max(prompting, key=mean_accuracy) if prompting else None


def crossover(
    train: Sequence[Mapping[str, Any]], prompt: MethodRow | None, method: str = LORA_METHOD
) -> CrossoverRecord | None:
    """Where ``train`` (a :func:`train_curve`) first reaches the best prompt's accuracy.

    ``n`` is the smallest size tried whose accuracy is at least the prompt's, interpolated in log n from the
    size before it (``n`` is None when no size reaches it). ``between`` gives the two sizes bracketing it.
    """
    if prompt is None or not train:
        return None
    best = Row(prompt)
    target = mean_accuracy(prompt)
    out = CrossoverRecord(
        method=method,
        prompt=best.name,
        prompt_accuracy=target,
        prompt_draws=draw_count(best),
        reached=False,
        n=None,
        between=None,
    )
    previous = None
    for point in map(SizePoint, train):
        if point.accuracy >= target:
            out["reached"] = True
            if previous is None:
                out["n"] = float(point.n)
                out["between"] = [None, point.n]
            else:
                low, high = math.log(previous.n), math.log(point.n)
                share = (target - previous.accuracy) / (point.accuracy - previous.accuracy)
                out["n"] = math.exp(low + share * (high - low))
                out["between"] = [previous.n, point.n]
            break
        previous = point
    out["statement"] = crossover_statement(out, train)
    return out


def crossover_statement(cross: Mapping[str, Any], train: Sequence[Mapping[str, Any]]) -> str:
    """One sentence with the figures, for the report."""
    draws = cross.get("prompt_draws") or 1
    mean = f", mean of {draws} demo draws" if draws > 1 else ""
    prompt = f"the best prompt, {cross['prompt']} ({cross['prompt_accuracy']:.3f}{mean})"
    points = [SizePoint(p) for p in train]
    if not cross["reached"]:
        top = max(points, key=lambda p: p.accuracy)
        sizes = ", ".join(str(p.n) for p in points)
        return (
            f"LoRA does not match {prompt}, within the sizes tried ({sizes}): its best, n={top.n}, "
            f"reaches {top.accuracy:.3f}; the prompt is worth more than {points[-1].n} labelled "
            "examples here"
        )
    low, high = cross["between"]
    at_high = next(p for p in points if p.n == high)
    if low is None:
        return (
            f"LoRA matches {prompt}, already at the smallest size tried, n={high} "
            f"({at_high.accuracy:.3f}): "
            f"the prompt is worth {high} labelled examples or fewer; try smaller sizes to find the crossover"
        )
    at_low = next(p for p in points if p.n == low)
    return (
        f"LoRA needs about {cross['n']:,.0f} labelled examples to match {prompt}: n={low} reaches "
        f"{at_low.accuracy:.3f}, n={high} {at_high.accuracy:.3f} (interpolated in log n); the prompt "
        f"is worth about {cross['n']:,.0f} labelled examples"
    )


def build_curves(methods: Sequence[MethodRow]) -> CurvesRecord:
    """results.json's ``curves``: ``{shots, train_examples, reference, crossover}``."""
    train = train_curve(methods)
    return CurvesRecord(
        shots=shot_curve(methods),
        train_examples=train,
        reference=train_curve(methods, Method.REFERENCE),
        crossover=crossover(train, best_prompt(methods)),
    )


def has_shot_curve(curves: Mapping[str, Any]) -> bool:
    """At least one selection measured at two or more shot counts."""
    points: dict[str, int] = defaultdict(int)
    for row in Curves(curves).shots:
        points[row["strategy"]] += 1
    return any(count >= 2 for count in points.values())


def has_train_curve(curves: Mapping[str, Any]) -> bool:
    """LoRA or the reference measured at two or more training sizes."""
    typed = Curves(curves)
    return len(typed.train_examples) >= 2 or len(typed.reference) >= 2
