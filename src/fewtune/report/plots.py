"""The report's figures as PNG bytes (matplotlib, Agg backend, imported only when a report is drawn)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.decide.cost import BreakEven, MethodCost, format_count, format_usd
from fewtune.methods import Method
from fewtune.results.rows import Row
from fewtune.results.views import SizePoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fewtune.report.analysis import BestPrompt

PROMPT_COLOUR = "#2b6cb0"
TUNED_COLOUR = "#c05621"
REFERENCE_COLOUR = "#718096"
CROSSOVER_COLOUR = "#2f855a"
# One colour per demo selection in the shots plot; a calibrated curve is dashed in its selection's colour.
SELECTION_COLOURS = {"balanced": PROMPT_COLOUR, "random": "#805ad5", "nearest": "#2c7a7b"}
# Horizontal offset between selections' points at the same k, so error bars do not hide each other.
SHOTS_JITTER_POINTS = 5
DPI = 110
# The cost plot runs from this share of the horizon's requests to past the break-even point (log scale).
COST_PLOT_START_SHARE = 1e-3
# Past the break-even, but never beyond this many horizons (a break-even decades away is annotated instead).
COST_PLOT_MAX_HORIZONS = 50


def _figure(rows: int, width: float = 8.0) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, max(2.2, 0.55 * rows + 1.3)), dpi=DPI, layout="constrained")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _colour(row: Row) -> str:
    method = row.kind
    if method is Method.REFERENCE:
        return REFERENCE_COLOUR
    return TUNED_COLOUR if method.trained else PROMPT_COLOUR


def accuracy_plot(methods: Sequence[Row], chance: float, floor: float, chosen: str | None) -> bytes:
    """Accuracy per method with its 95% bootstrap interval; chance and the good-enough floor marked."""
    fig = _figure(len(methods))
    ax = fig.add_subplot()
    names = [m.name for m in methods][::-1]
    for y, row in enumerate(methods[::-1]):
        low, high = row.accuracy_ci95
        acc = row.accuracy
        if acc is None:  # a classification row always has one
            continue
        ax.errorbar(
            acc, y, xerr=[[acc - low], [high - acc]], fmt="o", color=_colour(row), capsize=4, markersize=7
        )
        ax.annotate(
            f"{acc:.3f}", (acc, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=8
        )
    ax.axvline(chance, color="#718096", linestyle="--", linewidth=1, label=f"chance {chance:.2f}")
    floor_label = f"good-enough floor (kappa 0.4) {floor:.2f}"
    ax.axvline(floor, color="#a0aec0", linestyle=":", linewidth=1, label=floor_label)
    ax.set_yticks(range(len(names)), [f"{n}  *" if n == chosen else n for n in names])
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.6, len(names) - 0.3)
    ax.set_xlabel("accuracy on the same test rows (95% bootstrap CI); * = recommended")
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def cost_plot(
    methods: Sequence[Row],
    costs: dict[str, MethodCost],
    horizon_requests: float,
    horizon_label: str,
    pair: tuple[str, str] | None,
    be: BreakEven | None,
) -> bytes:
    """Total cost (setup + per request x requests) vs requests for each method, break-even marked."""
    end = horizon_requests * 3
    if be and be.requests:
        end = max(end, min(be.requests * 3, horizon_requests * COST_PLOT_MAX_HORIZONS))
    start = max(horizon_requests * COST_PLOT_START_SHARE, 1.0)
    requests = np.geomspace(start, end, 200)
    fig = _figure(4, width=8.0)
    ax = fig.add_subplot()
    styles = ["-", "--", "-.", ":"]
    for i, row in enumerate(methods):
        cost = costs[row.name]
        totals = np.maximum(cost.setup + cost.per_request * requests, 0.01)
        ax.plot(requests, totals, styles[i % 4], color=_colour(row), label=row.name, linewidth=1.8)
    ax.axvline(horizon_requests, color="#4a5568", linewidth=1, linestyle=":")
    ax.annotate(
        horizon_label,
        (horizon_requests, 1),
        xycoords=("data", "axes fraction"),
        xytext=(4, -12),
        textcoords="offset points",
        fontsize=8,
        color="#4a5568",
    )
    if pair and be and be.requests:
        cost = costs[pair[1]]
        x = be.requests
        y = max(cost.total(x), 0.01)
        if x <= end:
            ax.plot([x], [y], marker="*", markersize=16, color="#2f855a", zorder=5, linestyle="none")
            ax.annotate(
                f"break-even\n{format_count(x)} requests",
                (x, y),
                xytext=(-10, 14),
                ha="right",
                textcoords="offset points",
                fontsize=8,
                color="#2f855a",
            )
        else:
            ax.annotate(
                f"break-even at {format_count(x)} requests, off the chart",
                (1, 0.04),
                xycoords="axes fraction",
                ha="right",
                fontsize=8,
                color="#2f855a",
            )
    elif pair and be:
        ax.annotate(
            "no break-even: fine-tuning never cheaper"
            if be.requests is None
            else "fine-tuning cheaper throughout",
            (1, 0.04),
            xycoords="axes fraction",
            ha="right",
            fontsize=8,
            color="#2f855a",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(lambda value, _: format_usd(value))
    ax.set_xlabel("requests served")
    ax.set_ylabel("total cost (setup + requests)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _png(fig)


def latency_plot(methods: Sequence[Row]) -> bytes:
    """Per-request latency per method: p50 to p95 bar with the mean marked (one request at a time)."""
    fig = _figure(len(methods))
    ax = fig.add_subplot()
    names = []
    for y, row in enumerate(methods[::-1]):
        names.append(row.name)
        p50, p95, mean = row.p50, row.p95, row.latency_mean
        if p50 is None or p95 is None:
            ax.annotate("not measured", (0, y), fontsize=8, va="center")
            continue
        ax.plot([p50, p95], [y, y], color=_colour(row), linewidth=6, solid_capstyle="butt", alpha=0.6)
        ax.plot([p50], [y], "|", color=_colour(row), markersize=16)
        if mean is not None:
            ax.plot([mean], [y], "x", color="#1a202c", markersize=7)
        ax.annotate(
            f"p50 {p50:.0f} / p95 {p95:.0f} ms",
            (p95, y),
            xytext=(6, -3),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(left=0, right=ax.get_xlim()[1] * 1.35)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("milliseconds per request (bar: p50 to p95, x: mean; single requests)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def confusion_plot(labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str) -> bytes:
    """Counts of gold (rows) vs predicted (columns) labels."""
    size = max(3.2, 0.7 * len(labels) + 2)
    fig = _figure(1, width=size + 1)
    fig.set_size_inches(size + 1, size)
    ax = fig.add_subplot()
    data = np.asarray(matrix, dtype=float)
    ax.imshow(data, cmap="Blues")
    peak = data.max() if data.size else 0
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if peak and data[i, j] > peak / 2 else "#1a202c"
            ax.text(j, i, f"{int(data[i, j])}", ha="center", va="center", color=colour, fontsize=10)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def shots_plot(curve: Sequence[Mapping[str, Any]], chance: float) -> bytes:
    """Accuracy vs demos per prompt, one line per selection: mean over demo draws, error bars +-1 std."""
    from matplotlib.transforms import offset_copy

    fig = _figure(6, width=8.0)
    ax = fig.add_subplot()
    strategies = list(dict.fromkeys(r["strategy"] for r in curve))
    for i, name in enumerate(strategies):
        points = [r for r in curve if r["strategy"] == name]
        base = name.removesuffix(" calibrated")
        colour = SELECTION_COLOURS.get(base, PROMPT_COLOUR)
        shift = (i - (len(strategies) - 1) / 2) * SHOTS_JITTER_POINTS
        transform = offset_copy(ax.transData, fig=fig, x=shift, y=0, units="points")
        draws = max(r["draws"] for r in points)
        label = name + (f" (mean ± std of {draws} draws)" if draws > 1 else "")
        ax.errorbar(
            [r["k"] for r in points],
            [r["mean"] for r in points],
            yerr=[r["std"] or 0.0 for r in points],
            fmt="o-" if base == name else "s--",
            color=colour,
            capsize=4,
            markersize=6,
            linewidth=1.6,
            label=label,
            transform=transform,
        )
    ticks = sorted({r["k"] for r in curve})
    ax.axhline(chance, color="#718096", linestyle="--", linewidth=1, label=f"chance {chance:.2f}")
    ax.set_xscale("symlog", base=2, linthresh=1)
    ax.set_xlim(-0.5, max(ticks) * 1.3 + 0.5)
    ax.set_xticks(ticks, [str(k) for k in ticks])
    return _finish_accuracy_curve(fig, ax, "demos in the prompt (k); k=0 is zero-shot")


def _finish_accuracy_curve(fig: Figure, ax: Any, xlabel: str) -> bytes:
    """The shared finish of both accuracy curves: 0-1 y axis, labels, grid, legend, encoded PNG."""
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy on the test rows")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _png(fig)


def train_plot(
    lora: Sequence[SizePoint],
    reference: Sequence[SizePoint],
    prompt: BestPrompt | None,
    cross: Mapping[str, Any] | None,
    chance: float,
) -> bytes:
    """LoRA accuracy vs training examples with its 95% band, the reference, the best prompt and the
    crossover where LoRA first matches it."""
    fig = _figure(6, width=8.0)
    ax = fig.add_subplot()
    if lora:
        sizes = [p.n for p in lora]
        ax.fill_between(
            sizes, [p.ci95[0] for p in lora], [p.ci95[1] for p in lora], color=TUNED_COLOUR, alpha=0.15
        )
        ax.plot(sizes, [p.accuracy for p in lora], "o-", color=TUNED_COLOUR, label="LoRA (95% CI band)")
    if reference:
        ax.plot(
            [p.n for p in reference],
            [p.accuracy for p in reference],
            "d--",
            color=REFERENCE_COLOUR,
            label="reference: sentence embeddings + logistic regression",
        )
    if prompt is not None:
        ax.axhline(
            prompt.accuracy,
            color=PROMPT_COLOUR,
            linewidth=1.4,
            label=f"best prompt: {prompt.name} ({prompt.accuracy:.3f}"
            + (f", mean of {prompt.draws} demo draws)" if prompt.draws > 1 else ")"),
        )
    ax.axhline(chance, color="#718096", linestyle=":", linewidth=1, label=f"chance {chance:.2f}")
    if cross and cross.get("reached") and cross.get("n"):
        x, y = cross["n"], cross["prompt_accuracy"]
        ax.axvline(x, color=CROSSOVER_COLOUR, linestyle="--", linewidth=1)
        ax.plot([x], [y], marker="*", markersize=16, color=CROSSOVER_COLOUR, zorder=5, linestyle="none")
        ax.annotate(
            f"crossover ≈ {x:,.0f} examples",
            (x, y),
            xytext=(8, -16),
            textcoords="offset points",
            fontsize=9,
            color=CROSSOVER_COLOUR,
        )
    elif cross:
        ax.annotate(
            "LoRA does not reach the best prompt within the sizes tried",
            (0.98, 0.04),
            xycoords="axes fraction",
            ha="right",
            fontsize=9,
            color=CROSSOVER_COLOUR,
        )
    ticks = sorted({p.n for p in [*lora, *reference]})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(n) for n in ticks])
    return _finish_accuracy_curve(fig, ax, "labelled training examples (log scale)")
