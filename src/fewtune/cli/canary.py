"""``fewtune monitor`` and ``fewtune rollback``: the canary after release (registered by
:mod:`fewtune.cli.commands`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from fewtune.cli.console import plain_console, styled
from fewtune.release.runbook import DEFAULT_RUNBOOK

if TYPE_CHECKING:
    from fewtune.release.monitor import Watch

console = plain_console()
err_console = plain_console(stderr=True)
STYLE = {"pass": "green", "fail": "red", "marginal": "yellow", "not enough": "yellow", "not judged": "dim"}
Server = Annotated[str, typer.Option(help="The fewtune serve root, e.g. http://127.0.0.1:8000.")]
Route = Annotated[str, typer.Option(help="The route's name (fewtune serve --route NAME=...).")]
Owner = Annotated[
    str | None, typer.Option(help="Who owns this decision (default: git user.name, else the login).")
]
ApiKey = Annotated[str | None, typer.Option(help="The server's API key (default: FEWTUNE_API_KEY).")]
AdminKey = Annotated[
    str | None,
    typer.Option(help="The server's operator key, which route changes need (default: FEWTUNE_ADMIN_KEY)."),
]


def operator_key(admin_key: str | None, api_key: str | None) -> str | None:
    """The key the route calls send: the operator key (which the server also takes for reading routes),
    else the API key (a server without an operator key, serving without an API key)."""
    from fewtune.serve.operator import ADMIN_KEY_ENV

    return admin_key or os.environ.get(ADMIN_KEY_ENV) or api_key


def show_watch(watch: Watch, written: Path | None, rolled_back: bool) -> None:
    if watch.skipped_lines:
        console.print(
            styled("note:", "yellow", f" {watch.skipped_lines} malformed request-log lines skipped")
        )
    if watch.rolled_back_already:
        console.print(
            f"route {watch.route}: the candidate's weight is already 0 (rolled back): nothing to watch, "
            "no runbook entry"
        )
        return
    table = Table(
        title=f"route {watch.route}, {watch.window_start} to {watch.window_end}: "
        f"{watch.requests['candidate']} candidate / {watch.requests['baseline']} baseline requests",
        title_justify="left",
    )
    for column in ("metric", "baseline", "candidate", "candidate vs baseline", "threshold", "result", "why"):
        table.add_column(column, overflow="fold")
    for v in watch.verdicts:
        style = STYLE.get(v.status, "")
        table.add_row(
            v.metric, v.baseline, v.candidate, v.interval, v.threshold, Text(v.status, style=style), v.why
        )
    console.print(table)
    action = " -> rolled back (candidate weight 0)" if rolled_back else ""
    console.print(styled(f"monitor: {watch.decision}", STYLE.get(watch.decision, ""), action))
    if written:
        console.print(f"runbook: {written}")


def monitor(
    server: Server,
    route: Route,
    log: Annotated[Path, typer.Option(help="The server's request log (requests.jsonl).")],
    feedback: Annotated[
        Path | None, typer.Option(help="The server's feedback log, to judge quality where answers came back.")
    ] = None,
    window: Annotated[str, typer.Option(help="How far back each check looks: 24h, 15m, 30s.")] = "24h",
    interval: Annotated[str, typer.Option(help="Time between checks (loop mode).")] = "1h",
    once: Annotated[bool, typer.Option(help="Check one window and exit (for cron).")] = False,
    checks: Annotated[
        int | None, typer.Option(help="Stop after this many checks (default: until a rollback).")
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="YAML policy overriding the thresholds.")] = None,
    runbook: Annotated[
        Path, typer.Option(help="Runbook folder each decision is appended to.")
    ] = DEFAULT_RUNBOOK,
    no_runbook: Annotated[bool, typer.Option("--no-runbook", help="Do not write runbook entries.")] = False,
    owner: Owner = None,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each check as one JSON line.")] = False,
) -> None:
    """Compare the route's candidate with its baseline on the request log; roll back on a fail.

    Exit 0 when no check failed (or the candidate's weight was 0 already), 1 after a rollback, 2 on an error:
    a bad option, or a server still unreachable (or answering 5xx) after 7 tries over about 4 minutes.
    """
    from fewtune.release.policy import load_policy
    from fewtune.release.runbook import default_owner
    from fewtune.release.watch import MAX_INTERVAL_S, MAX_WINDOW_S, MonitorSettings, loop, seconds_of

    settings = MonitorSettings(
        server=server,
        route=route,
        log=log,
        feedback=feedback,
        window_s=seconds_of(window, "--window", MAX_WINDOW_S),
        interval_s=seconds_of(interval, "--interval", MAX_INTERVAL_S),
        policy=load_policy(policy),
        owner=owner or default_owner(),
        runbook=None if no_runbook else runbook,
        api_key=operator_key(admin_key, api_key),
        warn=lambda message: err_console.print(styled("retry:", "yellow", f" {message}"), highlight=False),
    )

    def report(watch: Watch, written: Path | None, rolled_back: bool) -> None:
        if as_json:
            payload = watch.to_dict() | {
                "rolled_back": rolled_back,
                "runbook_entry": str(written) if written else None,
            }
            typer.echo(json.dumps(payload))
        else:
            show_watch(watch, written, rolled_back)

    last = loop(settings, report, checks=1 if once else checks)
    raise typer.Exit(1 if last.decision == "fail" and not last.rolled_back_already else 0)


def rollback(
    server: Server,
    route: Route,
    reason: Annotated[str, typer.Option(help="Why: written to the runbook and the route's history.")],
    owner: Owner = None,
    runbook: Annotated[
        Path, typer.Option(help="Runbook folder the decision is appended to.")
    ] = DEFAULT_RUNBOOK,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
) -> None:
    """Send all of a route's traffic back to its baseline now (candidate weight 0), and record why."""
    from fewtune.release.runbook import Entry, append, default_owner
    from fewtune.release.watch import get_route, set_weight

    who = owner or default_owner()
    key = operator_key(admin_key, api_key)
    before = get_route(server, route, key)
    after = set_weight(server, route, 0.0, who, reason, key)
    entry = Entry(
        kind="rollback",
        decision="rolled back",
        subject=(
            f"route {route}: {before['candidate']} (weight {before['weight']} -> 0) back to "
            f"{before['baseline']}"
        ),
        owner=who,
        rollback_target=before["baseline"],
        evidence=[
            ("field", "before", "after"),
            ("candidate weight", str(before["weight"]), str(after["weight"])),
        ],
        triggers=["manual rollback: re-gate the candidate before raising its weight again"],
        next_review=None,
        notes=[reason],
        reason=reason,
    )
    written = append(runbook, entry)
    console.print(f"route {route}: candidate weight {before['weight']} -> 0; runbook: {written}")
