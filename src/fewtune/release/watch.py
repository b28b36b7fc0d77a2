"""The monitor's loop and the rollback: judge a route's window, roll back through the server on a fail, and
write each decision to the runbook."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fewtune.errors import ConfigError, FewtuneError
from fewtune.release.monitor import FAIL, Watch, judge, read_feedback, read_log, window_of
from fewtune.release.policy import Policy
from fewtune.release.runbook import Entry, append, next_review

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds_of(text: str, flag: str) -> float:
    """``"24h"``, ``"15m"``, ``"30s"``, ``"90"`` -> seconds (a one-line error otherwise)."""
    match = DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{flag} takes a duration such as 24h, 15m, 30s or 90 (seconds), got {text!r}")
    return float(match.group(1)) * SECONDS[match.group(2)]


def _key(api_key: str | None) -> dict[str, str]:
    key = api_key or os.environ.get("FEWTUNE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def set_weight(
    server: str, route: str, weight: float, by: str, reason: str, api_key: str | None
) -> Mapping[str, Any]:
    """``PUT /v1/routes/ROUTE`` on a running ``fewtune serve``; one-line errors when it cannot be done."""
    from fewtune.http_client import httpx

    url = f"{server.rstrip('/')}/v1/routes/{route}"
    try:
        reply = httpx.put(
            url, json={"weight": weight, "by": by, "reason": reason}, headers=_key(api_key), timeout=30
        )
    except httpx.HTTPError as err:
        raise FewtuneError(f"{url}: cannot reach the server ({type(err).__name__})") from None
    if reply.status_code != 200:
        try:
            message = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.text[:200]
        raise FewtuneError(f"{url}: HTTP {reply.status_code}: {message}")
    result: Mapping[str, Any] = reply.json()
    return result


def get_route(server: str, route: str, api_key: str | None) -> Mapping[str, Any]:
    from fewtune.http_client import httpx

    url = f"{server.rstrip('/')}/v1/routes"
    try:
        reply = httpx.get(url, headers=_key(api_key), timeout=30)
        routes = {r["name"]: r for r in reply.json()["routes"]} if reply.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        raise FewtuneError(f"{url}: cannot read the server's routes") from None
    if routes is None:
        raise FewtuneError(f"{url}: HTTP {reply.status_code}")
    if route not in routes:
        raise FewtuneError(f"{url}: no route {route!r}; routes: {', '.join(routes) or 'none'}")
    return routes[route]


@dataclass(frozen=True)
class MonitorSettings:
    server: str
    route: str
    log: Path
    feedback: Path | None
    window_s: float
    interval_s: float
    policy: Policy
    owner: str
    runbook: Path | None
    api_key: str | None = None


def evidence(watch: Watch) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("metric", "baseline", "candidate", "candidate vs baseline", "threshold", "result", "why")
    ]
    rows += [
        (v.metric, v.baseline, v.candidate, v.interval, v.threshold, v.status, v.why) for v in watch.verdicts
    ]
    return rows


def triggers(policy: Policy) -> list[str]:
    return [
        f"p95 latency shown above {policy.p95_ratio:g}x the baseline's"
        if policy.p95_ratio
        else "p95: not checked",
        f"error rate shown more than {policy.unparsed_points:g} points above the baseline's",
        f"cost per request shown above {policy.cost_ratio:g}x the baseline's"
        if policy.cost_ratio
        else "cost: not checked",
        f"quality on feedback shown more than {policy.margin_points:g} points below the baseline",
    ]


def check_once(settings: MonitorSettings, now: datetime | None = None) -> tuple[Watch, Path | None, bool]:
    """Judge one window; on a fail set the candidate's weight to 0. Returns the watch, the runbook entry
    written (None without a runbook) and whether it rolled back."""
    start, end = window_of(settings.window_s, now)
    lines = read_log(settings.log, settings.route, start, end)
    watch = judge(lines, settings.route, settings.policy, start, end, read_feedback(settings.feedback))
    rolled_back = False
    route = get_route(settings.server, settings.route, settings.api_key)
    if watch.decision == FAIL and float(route["weight"]) > 0:
        failing = ", ".join(v.metric for v in watch.verdicts if v.status == FAIL)
        set_weight(
            settings.server, settings.route, 0.0, settings.owner, f"monitor: {failing}", settings.api_key
        )
        rolled_back = True
    written = None
    if settings.runbook is not None:
        decision = "rolled back" if rolled_back else watch.decision
        entry = Entry(
            kind="monitor",
            decision=decision,
            subject=(
                f"route {settings.route}: {route['candidate']} (weight {route['weight']}) vs "
                f"{route['baseline']}"
            ),
            owner=settings.owner,
            rollback_target=route["baseline"],
            evidence=evidence(watch),
            triggers=triggers(settings.policy),
            next_review=None if rolled_back else next_review(settings.window_s / 3600),
            notes=[
                f"window {watch.window_start} to {watch.window_end}: {watch.requests['candidate']} "
                f"candidate and {watch.requests['baseline']} baseline requests",
                "candidate weight set to 0 through the server; no request was dropped"
                if rolled_back
                else "no action taken",
            ],
        )
        written = append(settings.runbook, entry)
    return watch, written, rolled_back


def loop(
    settings: MonitorSettings,
    report: Callable[[Watch, Path | None, bool], None],
    checks: int | None = None,
) -> Watch:
    """Check every ``interval_s`` until a rollback (or ``checks`` windows); the last watch."""
    done = 0
    while True:
        watch, written, rolled_back = check_once(settings)
        report(watch, written, rolled_back)
        done += 1
        if rolled_back or (checks is not None and done >= checks):
            return watch
        time.sleep(settings.interval_s)
