"""The monitor's loop and the rollback: judge a route's window, roll back through the server on a fail, and
write each decision to the runbook."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from fewtune.errors import ConfigError, FewtuneError
from fewtune.release.monitor import FAIL, Watch, judge, read_feedback, read_log, window_of
from fewtune.release.policy import Policy
from fewtune.release.runbook import Entry, append, next_review

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 90 * 86400
"""The longest --window: a canary is judged on recent traffic, and request logs are rotated well before."""
MAX_INTERVAL_S = 7 * 86400
"""The longest --interval between checks (a weekly check; cron with --once for anything rarer)."""
RETRY_DELAYS_S = (2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Waits before each retry of a server call that failed transiently (refused, timed out, HTTP 5xx): a
server restart of up to about 4 minutes does not end the watching; after these the monitor gives up."""


class ServerUnavailable(FewtuneError):
    """The server could not be reached, timed out or answered 5xx: worth trying again."""


def seconds_of(text: str, flag: str, most: float) -> float:
    """``"24h"``, ``"15m"``, ``"30s"``, ``"90"`` -> seconds, at most ``most`` (a one-line error otherwise)."""
    match = DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{flag} takes a duration such as 24h, 15m, 30s or 90 (seconds), got {text!r}")
    seconds = float(match.group(1)) * SECONDS[match.group(2)]
    if not seconds <= most:
        raise ConfigError(f"{flag} must be at most {most / 86400:g} days, got {text.strip()!r}")
    return seconds


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
        raise ServerUnavailable(f"{url}: cannot reach the server ({type(err).__name__})") from None
    if reply.status_code >= 500:
        raise ServerUnavailable(f"{url}: HTTP {reply.status_code}")
    if reply.status_code != 200:
        try:
            message = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.text[:200]
        raise FewtuneError(f"{url}: HTTP {reply.status_code}: {message}")
    try:
        result: Mapping[str, Any] = reply.json()
        float(result["weight"])
    except (ValueError, KeyError, TypeError):
        raise FewtuneError(f"{url}: the server's answer is not a route") from None
    return result


def get_route(server: str, route: str, api_key: str | None) -> Mapping[str, Any]:
    """The route as ``GET /v1/routes`` lists it (its ``weight`` a number)."""
    from fewtune.http_client import httpx

    url = f"{server.rstrip('/')}/v1/routes"
    try:
        reply = httpx.get(url, headers=_key(api_key), timeout=30)
    except httpx.HTTPError as err:
        raise ServerUnavailable(f"{url}: cannot reach the server ({type(err).__name__})") from None
    if reply.status_code >= 500:
        raise ServerUnavailable(f"{url}: HTTP {reply.status_code}")
    if reply.status_code != 200:
        raise FewtuneError(f"{url}: HTTP {reply.status_code}")
    try:
        routes = {r["name"]: r for r in reply.json()["routes"]}
        for r in routes.values():
            float(r["weight"])
    except (ValueError, KeyError, TypeError):
        raise FewtuneError(f"{url}: cannot read the server's routes") from None
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
    retry_delays_s: Sequence[float] = RETRY_DELAYS_S
    """Waits before each retry of a transient server failure (:data:`RETRY_DELAYS_S`)."""
    warn: Callable[[str], None] | None = None
    """Told of each transient failure and the wait before the next try."""


def retrying(settings: MonitorSettings, call: Callable[[], Any]) -> Any:
    """``call()``, tried again after each of ``settings.retry_delays_s`` while it fails transiently
    (:class:`ServerUnavailable`); the last failure, with the number of tries, once they are spent."""
    for attempt, delay in enumerate([*settings.retry_delays_s, None], start=1):
        try:
            return call()
        except ServerUnavailable as err:
            if delay is None:
                raise ServerUnavailable(f"{err} (gave up after {attempt} tries)") from None
            if settings.warn:
                tries = len(settings.retry_delays_s) + 1
                settings.warn(f"{err}; trying again in {delay:g} s (try {attempt + 1} of {tries})")
            time.sleep(delay)
    raise AssertionError("unreachable")


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
    written (None without a runbook) and whether it rolled back. A route whose candidate weight is already
    0 is judged but left alone: no rollback and no runbook entry (``watch.rolled_back_already``)."""
    start, end = window_of(settings.window_s, now)
    lines, skipped = read_log(settings.log, settings.route, start, end)
    watch = judge(lines, settings.route, settings.policy, start, end, read_feedback(settings.feedback))
    route = retrying(settings, lambda: get_route(settings.server, settings.route, settings.api_key))
    watch = replace(watch, skipped_lines=skipped, candidate_weight=float(route["weight"]))
    if watch.rolled_back_already:
        return watch, None, False
    rolled_back = False
    if watch.decision == FAIL:
        failing = ", ".join(v.metric for v in watch.verdicts if v.status == FAIL)
        retrying(
            settings,
            lambda: set_weight(
                settings.server, settings.route, 0.0, settings.owner, f"monitor: {failing}", settings.api_key
            ),
        )
        rolled_back = True
    written = None
    if settings.runbook is not None:
        written = append(settings.runbook, monitor_entry(settings, watch, route, rolled_back))
    return watch, written, rolled_back


def monitor_entry(
    settings: MonitorSettings, watch: Watch, route: Mapping[str, Any], rolled_back: bool
) -> Entry:
    notes = [
        f"window {watch.window_start} to {watch.window_end}: {watch.requests['candidate']} "
        f"candidate and {watch.requests['baseline']} baseline requests",
        "candidate weight set to 0 through the server; no request was dropped"
        if rolled_back
        else "no action taken",
    ]
    if watch.skipped_lines:
        notes.append(f"{watch.skipped_lines} malformed request-log lines skipped")
    return Entry(
        kind="monitor",
        decision="rolled back" if rolled_back else watch.decision,
        subject=(
            f"route {settings.route}: {route['candidate']} (weight {route['weight']}) vs {route['baseline']}"
        ),
        owner=settings.owner,
        rollback_target=route["baseline"],
        evidence=evidence(watch),
        triggers=triggers(settings.policy),
        next_review=None if rolled_back else next_review(settings.window_s / 3600),
        notes=notes,
        reason=f"monitor: {', '.join(v.metric for v in watch.verdicts if v.status == FAIL)}"
        if rolled_back
        else None,
    )


def loop(
    settings: MonitorSettings,
    report: Callable[[Watch, Path | None, bool], None],
    checks: int | None = None,
) -> Watch:
    """Check every ``interval_s`` until a rollback, a route found rolled back already (or ``checks``
    windows); the last watch."""
    done = 0
    while True:
        watch, written, rolled_back = check_once(settings)
        report(watch, written, rolled_back)
        done += 1
        if rolled_back or watch.rolled_back_already or (checks is not None and done >= checks):
            return watch
        time.sleep(settings.interval_s)
