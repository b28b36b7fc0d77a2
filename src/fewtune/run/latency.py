"""Single-request latency, the one timing loop every method's row uses: requests one at a time, as a
deployment serving single calls sees them, after warm-up requests that are run and discarded (so one-off
costs such as allocations and kernel selection don't count)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from fewtune.results.record import Latency


def untimed() -> Latency:
    return {"p50": None, "p95": None, "mean": None, "requests": 0}


def time_requests(
    run_one: Callable[[str], float],
    texts: Sequence[str],
    requests: int,
    *,
    warmup: int,
    budget_seconds: float | None = None,
    min_requests: int = 0,
) -> Latency:
    """``latency_ms`` of ``requests`` single requests over ``texts`` (cycled): ``run_one(text)`` answers one
    and returns its seconds. With ``budget_seconds``, timing stops once that much time has passed and at
    least ``min_requests`` are timed (long generated outputs); ``requests`` says how many were."""
    if requests <= 0 or not texts:
        return untimed()
    timings: list[float] = []
    began = time.perf_counter()
    for i in range(requests + warmup):
        spent = time.perf_counter() - began
        if budget_seconds is not None and len(timings) >= min_requests and spent > budget_seconds:
            break
        seconds = run_one(texts[i % len(texts)])
        if i >= warmup:
            timings.append(seconds * 1000)
    if not timings:
        return untimed()
    p50, p95 = np.percentile(timings, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "mean": float(np.mean(timings)), "requests": len(timings)}


def wall_seconds(call: Callable[[], object]) -> float:
    """Seconds ``call()`` takes on this machine (a model with no backend of its own, e.g. the reference)."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start
