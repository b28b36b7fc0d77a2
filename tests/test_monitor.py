"""The monitor's judgement on request-log windows, and canary routes (sticky, persisted)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from fewtune.errors import ConfigError
from fewtune.release.monitor import FAIL, MARGINAL, MIN_REQUESTS, NOT_ENOUGH, PASS, judge, newcombe, read_log
from fewtune.release.policy import Policy
from fewtune.serve.routes import BASELINE, CANDIDATE, Route, RouteTable, parse_route

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def log_lines(
    n: int, seed: int, slower: float = 1.0, error_share: float = 0.0, costlier: float = 1.0
) -> list[dict]:
    """``n`` requests per arm: lognormal latencies around 80 ms, 0.5% baseline errors, tokens-priced cost."""
    rng = np.random.default_rng(seed)
    lines = []
    for arm, factor, errors, cost in (
        ("baseline", 1.0, 0.005, 1.0),
        ("candidate", slower, error_share or 0.005, costlier),
    ):
        for i in range(n):
            failed = rng.random() < errors
            lines.append(
                {
                    "time": (NOW - timedelta(seconds=n - i)).isoformat(),
                    "route": "support",
                    "arm": arm,
                    "latency_ms": float(rng.lognormal(np.log(80 * factor), 0.3)),
                    "status": 502 if failed else 200,
                    "cost_usd": 0.0 if failed else float(2e-5 * cost * rng.uniform(0.9, 1.1)),
                }
            )
    return lines


def decide(lines: list[dict], policy: Policy | None = None) -> dict[str, str]:
    watch = judge(lines, "support", policy or Policy(), NOW - timedelta(hours=1), NOW)
    return {v.metric.split(" (")[0]: v.status for v in watch.verdicts} | {"overall": watch.decision}


def test_a_candidate_equal_to_the_baseline_passes_over_seeds() -> None:
    for seed in range(20):
        assert decide(log_lines(200, seed))["overall"] == PASS, seed


@pytest.mark.parametrize(
    ("fault", "metric"),
    [
        ({"slower": 2.0}, "p95 latency"),
        ({"error_share": 0.10}, "error rate"),
        ({"costlier": 1.6}, "cost per request"),
    ],
)
def test_each_fault_fails_its_own_metric(fault: dict, metric: str) -> None:
    result = decide(log_lines(200, seed=3, **fault))
    assert result[metric] == FAIL and result["overall"] == FAIL
    assert [m for m, s in result.items() if s == FAIL and m != "overall"] == [metric]


def test_too_few_requests_is_not_judged() -> None:
    result = decide(log_lines(MIN_REQUESTS - 1, seed=0, slower=5.0))
    assert result == {"all": NOT_ENOUGH, "overall": NOT_ENOUGH}


def test_a_slight_slowdown_within_the_tolerance_is_not_an_alarm() -> None:
    """Significant but small (1.2x, under the 1.5x factor) on many requests: Kayenta's lesson."""
    assert decide(log_lines(2000, seed=1, slower=1.2))["p95 latency"] == PASS


def test_newcombe_matches_the_published_examples() -> None:
    """Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10."""
    low, high = newcombe(56, 70, 48, 80, 1.959964)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    low, high = newcombe(9, 10, 3, 10, 1.959964)
    assert (round(low, 4), round(high, 4)) == (0.1705, 0.8090)


def test_the_log_reader_keeps_the_window_and_the_route_and_skips_a_torn_line(tmp_path: Path) -> None:
    lines = log_lines(70, seed=0)
    lines[0]["time"] = (NOW - timedelta(hours=3)).isoformat()  # outside the window
    lines[1]["route"] = "other"
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"time": "2026-12-02T11:', encoding="utf-8")
    kept = read_log(path, "support", NOW - timedelta(hours=1), NOW + timedelta(seconds=1))
    assert len(kept) == len(lines) - 2


def test_routes_are_sticky_and_a_lower_weight_only_moves_callers_back() -> None:
    route = Route("support", "few-shot k=8 balanced", "lora n=200", 0.3)
    callers = [f"user-{i}" for i in range(2000)]
    arms = [route.arm_for(c) for c in callers]
    assert arms == [route.arm_for(c) for c in callers]  # sticky
    assert 0.25 < arms.count(CANDIDATE) / len(arms) < 0.35
    lower = Route("support", route.baseline, route.candidate, 0.1)
    moved = [(a, lower.arm_for(c)) for a, c in zip(arms, callers, strict=True) if a != lower.arm_for(c)]
    assert moved and all(before == CANDIDATE for before, _ in moved)
    assert {Route("support", "a", "b", 0.0).arm_for(c) for c in callers} == {BASELINE}


def test_a_restart_keeps_a_rolled_back_weight_unless_the_arms_changed(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    given = parse_route("support=few-shot k=8 balanced,lora n=200:0.2")
    table = RouteTable(path, [given])
    table.set_weight("support", 0.0, "alice")
    again = RouteTable(path, [given])
    assert again.get("support").weight == 0.0 and again.get("support").changed_by == "alice"
    changed = RouteTable(path, [parse_route("support=few-shot k=8 balanced,lora n=500:0.2")])
    assert changed.get("support").weight == 0.2


def test_route_flags_parse_urls_and_refuse_bad_values() -> None:
    route = parse_route("big=few-shot k=8 balanced@http://127.0.0.1:9000/v1#gemma,lora n=200@http://h:1/v1#x")
    assert route.baseline == "few-shot k=8 balanced@http://127.0.0.1:9000/v1#gemma"
    assert route.candidate == "lora n=200@http://h:1/v1#x" and route.weight == 0.05
    for bad in ("support", "support=onlyone", "s=a,b:1.5"):
        with pytest.raises(ConfigError):
            parse_route(bad)


def test_a_slowdown_past_the_factor_on_few_requests_is_marginal_not_a_rollback() -> None:
    """1.7x on 60 requests an arm: past the 1.5x factor, but the interval still reaches below it."""
    result = decide(log_lines(MIN_REQUESTS, seed=2, slower=1.7))
    assert result["p95 latency"] == MARGINAL and result["overall"] == MARGINAL
