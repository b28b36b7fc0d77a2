"""The shot and training-size curves, and the crossover where LoRA first matches the best prompt."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fewtune.decide.curves import (
    build_curves,
    crossover,
    has_shot_curve,
    has_train_curve,
    shot_curve,
    train_curve,
)


def row(method: str, accuracy: float, shots: int = 0, n: int = 0, **extra: Any) -> dict[str, Any]:
    name = extra.pop("name", None) or " ".join(
        [method, *([f"n={n}"] if n else []), *([f"k={shots}"] if shots else [])]
    )
    return {
        "method": method,
        "name": name,
        "shots": shots,
        "train_examples": n,
        "accuracy": accuracy,
        "accuracy_ci95": [accuracy - 0.05, accuracy + 0.05],
        **extra,
    }


def lora_curve(*points: tuple[int, float]) -> list[dict[str, Any]]:
    return train_curve([row("lora", acc, n=n) for n, acc in points])


PROMPT = row("few-shot", 0.80, shots=8, demo_selection="random")

# (LoRA points, expected reached, expected n, expected bracket)
CROSSOVER_CASES = [
    ([(50, 0.60), (100, 0.70), (200, 0.90)], True, math.exp((math.log(100) + math.log(200)) / 2), [100, 200]),
    ([(50, 0.85), (100, 0.90)], True, 50.0, [None, 50]),
    ([(50, 0.60), (100, 0.80), (200, 0.95)], True, 100.0, [50, 100]),
    ([(50, 0.60), (100, 0.70), (400, 0.75)], False, None, None),
    # Not monotone: the first size that reaches the prompt counts.
    ([(50, 0.70), (100, 0.82), (200, 0.78), (400, 0.90)], True, None, [50, 100]),
]


@pytest.mark.parametrize("points, reached, n, between", CROSSOVER_CASES)
def test_crossover_interpolates_in_log_n(
    points: list[tuple[int, float]], reached: bool, n: float | None, between: list[int | None] | None
) -> None:
    cross = crossover(lora_curve(*points), PROMPT)
    assert cross is not None
    assert cross["reached"] is reached and cross["between"] == between
    assert cross["prompt"] == "few-shot k=8" and cross["prompt_accuracy"] == 0.80
    if n is not None:
        assert cross["n"] == pytest.approx(n)
    if not reached:
        assert cross["n"] is None and "does not match" in cross["statement"]
        assert "more than 400 labelled examples" in cross["statement"]
    elif between and between[0] is None:
        assert "already at the smallest size tried, n=50" in cross["statement"]
    else:
        assert "labelled examples to match the best prompt" in cross["statement"]


def test_crossover_needs_both_a_prompt_and_a_lora_size() -> None:
    assert crossover([], PROMPT) is None
    assert crossover(lora_curve((50, 0.9)), None) is None


def test_the_best_prompt_is_judged_by_its_mean_over_demo_draws() -> None:
    methods = [
        row("few-shot", 0.90, shots=4, demo_selection="random", accuracy_mean=0.70, accuracy_std=0.2),
        row("few-shot", 0.80, shots=4, demo_selection="nearest", name="few-shot k=4 nearest"),
        row("lora", 0.75, n=100),
    ]
    cross = build_curves(methods)["crossover"]
    assert cross["prompt"] == "few-shot k=4 nearest" and cross["reached"] is False


def test_shot_curve_has_one_line_per_selection_starting_at_zero_shot() -> None:
    methods = [
        row("zero-shot", 0.40),
        row("zero-shot", 0.45, calibrated=True, name="zero-shot calibrated"),
        row("few-shot", 0.60, 4, demo_selection="random", accuracy_mean=0.55, accuracy_std=0.05),
        row("few-shot", 0.62, 4, demo_selection="random", calibrated=True, name="cal4"),
        row("few-shot", 0.80, 4, demo_selection="nearest", name="near4"),
        row("few-shot", 0.70, 8, demo_selection="random", accuracy_mean=0.66, accuracy_std=0.02),
        row("lora", 0.9, n=100),
        row("reference", 0.7, n=100),
    ]
    curve = shot_curve(methods)
    assert [(p["strategy"], p["k"], p["mean"]) for p in curve] == [
        ("random", 0, 0.40),
        ("random", 4, 0.55),
        ("random", 8, 0.66),
        ("random calibrated", 0, 0.45),
        ("random calibrated", 4, 0.62),
        ("nearest", 0, 0.40),
        ("nearest", 4, 0.80),
    ]
    assert curve[1]["std"] == 0.05 and curve[0]["std"] is None
    curves = build_curves(methods)
    assert [p["n"] for p in curves["train_examples"]] == [100]
    assert [p["n"] for p in curves["reference"]] == [100]
    assert has_shot_curve(curves) and not has_train_curve(curves)


def test_rows_written_before_selections_existed_count_as_balanced() -> None:
    curve = shot_curve([row("zero-shot", 0.5), row("few-shot", 0.7, 5)])
    assert [(p["strategy"], p["k"]) for p in curve] == [("balanced", 0), ("balanced", 5)]
