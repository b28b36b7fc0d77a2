"""The monitor's judgement on request-log windows, and canary routes (sticky, persisted)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from route_server import RouteState, route_server
from servers import free_port

from fewtune.cli import commands as cli
from fewtune.errors import ConfigError
from fewtune.release.monitor import FAIL, MARGINAL, MIN_REQUESTS, NOT_ENOUGH, PASS, judge, newcombe, read_log
from fewtune.release.policy import Policy
from fewtune.release.runbook import entries
from fewtune.release.watch import MonitorSettings, ServerUnavailable, check_once, loop, seconds_of
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
    kept, skipped = read_log(path, "support", NOW - timedelta(hours=1), NOW + timedelta(seconds=1))
    assert len(kept) == len(lines) - 2 and skipped == 1


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


ODD_LINES = [
    '{"time": "2026-12-02T11:59:00", "route": "support", "arm": "candidate", "status": 200}',  # no zone
    '{"time": "2026-12-02T11:59:00+00:00", "route": "support", "arm": "candidate", "status": "abc"}',
    '{"time": "2026-12-02T11:59:00+00:00", "route": "support", "arm": "baseline", "status": 200, '
    '"latency_ms": "fast"}',
    '{"time": "2026-12-02T11:59:00+00:00", "route": "support", "arm": "baseline", "status": 200, '
    '"latency_ms": NaN}',
    '{"time": 5, "route": "support", "arm": "baseline", "status": 200}',
    '{"time": "2026-12-02T11:59:00+00:00", "route": "support", "arm": ["candidate"], "status": 200}',
    "[1, 2]",
    '"just a string"',
    "{" * 5000,
]


def monitor_settings(url: str, tmp_path: Path, lines: list, **changes: object) -> MonitorSettings:
    log = tmp_path / "requests.jsonl"
    log.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    settings = MonitorSettings(
        server=url, route="support", log=log, feedback=None, window_s=3600, interval_s=0.01,
        policy=Policy(), owner="tester", runbook=tmp_path / "runbook", retry_delays_s=(0.01, 0.01, 0.01),
    )  # fmt: skip
    return MonitorSettings(**{**settings.__dict__, **changes})


def test_odd_log_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    with route_server(RouteState(weight=0.5)) as url:
        settings = monitor_settings(url, tmp_path, log_lines(200, seed=0) + ODD_LINES)
        watch, written, rolled = check_once(settings, now=NOW)
    assert watch.decision == PASS and not rolled and watch.skipped_lines == len(ODD_LINES)
    assert watch.requests == {"baseline": 200, "candidate": 200}
    assert (
        written is not None and f"{len(ODD_LINES)} malformed request-log lines skipped" in written.read_text()
    )


def test_the_monitor_retries_a_restarting_server(tmp_path: Path) -> None:
    """Two 503s (a server restarting) and then an answer: the check goes on, the waits are told."""
    told: list[str] = []
    state = RouteState(weight=0.5, failures_left=2)
    with route_server(state) as url:
        settings = monitor_settings(url, tmp_path, log_lines(80, seed=0, slower=3.0), warn=told.append)
        watch, _, rolled = check_once(settings, now=NOW)
    assert watch.decision == FAIL and rolled and state.weight == 0.0
    assert len(told) == 2 and "HTTP 503; trying again in 0.01 s (try 2 of 4)" in told[0]


def test_the_monitor_gives_up_after_repeated_failures_in_one_line(tmp_path: Path) -> None:
    settings = monitor_settings(f"http://127.0.0.1:{free_port()}", tmp_path, log_lines(80, seed=0))
    with pytest.raises(ServerUnavailable, match=r"cannot reach the server .*\(gave up after 4 tries\)$"):
        check_once(settings, now=NOW)


def test_a_rolled_back_route_is_left_alone_and_writes_no_entries(tmp_path: Path) -> None:
    """The candidate at weight 0 (rolled back by hand or by an earlier check): its old failures in the window
    are no new decision; the loop stops instead of writing a fail entry on every check."""
    state = RouteState(weight=0.0)
    reports: list = []
    with route_server(state) as url:
        settings = monitor_settings(url, tmp_path, log_lines(80, seed=0, slower=3.0))
        watch, written, rolled = check_once(settings, now=NOW)
        assert watch.decision == FAIL and watch.rolled_back_already and written is None and not rolled
        last = loop(settings, lambda *report: reports.append(report), checks=5)
    assert last.rolled_back_already and len(reports) == 1
    assert state.calls.count("put") == 0 and not (tmp_path / "runbook").exists()


@pytest.mark.parametrize(("flag", "value"), [("--window", "99999999999d"), ("--interval", "1" + "0" * 400),
                                             ("--window", "91d"), ("--interval", "8d")])  # fmt: skip
def test_monitor_durations_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    (tmp_path / "requests.jsonl").write_text("")
    argv = ["fewtune", "monitor", "--server", f"http://127.0.0.1:{free_port()}", "--route", "support"]
    monkeypatch.setattr("sys.argv", [*argv, "--log", str(tmp_path / "requests.jsonl"), flag, value])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert (
        exit_info.value.code == 2 and f"{flag} must be at most" in err and len(err.strip().splitlines()) == 1
    )
    assert seconds_of("90d", "--window", 90 * 86400) == 90 * 86400


def test_the_monitor_rolls_back_once_and_records_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewtune.release import monitor, watch

    monkeypatch.setattr(watch, "window_of", lambda seconds, now=None: monitor.window_of(seconds, NOW))
    state = RouteState(weight=0.5)
    with route_server(state) as url:
        settings = monitor_settings(url, tmp_path, log_lines(80, seed=0, slower=3.0))
        last = loop(settings, lambda *report: None, checks=3)
    found = entries(tmp_path / "runbook")
    assert len(found) == 1, found
    (entry,) = found
    assert last.decision == FAIL and state.reasons == ["monitor: p95 latency (ms)"]
    assert entry["decision"] == "rolled back" and entry["reason"] == "monitor: p95 latency (ms)"
