"""The release commands (``fewtune gate``, ``runbook``, ``runs``), registered on the app by
:mod:`fewtune.cli.commands`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fewtune.cli.console import plain_console, styled
from fewtune.decide.thresholds import (
    CANARY_HOURS,
    ROLLBACK_COST_FACTOR,
    ROLLBACK_ERROR_RATE,
)
from fewtune.errors import FewtuneError
from fewtune.release.runbook import DEFAULT_RUNBOOK

if TYPE_CHECKING:
    from fewtune.release.gate import GateResult
    from fewtune.release.runbook import Entry

console = plain_console()
STYLE = {"pass": "green", "fail": "red", "cannot judge": "yellow", "not checked": "dim"}


def gate(
    baseline: Annotated[
        str,
        typer.Option(help="RUN[:METHOD]: a run folder (or run id) and a method name as the report shows it."),
    ],
    candidate: Annotated[
        str, typer.Option(help="RUN[:METHOD] of the method that would replace the baseline.")
    ],
    policy: Annotated[
        Path | None, typer.Option(help="YAML file overriding the thresholds (docs/release.md).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON only.")] = False,
    runbook: Annotated[
        Path, typer.Option(help="Runbook folder the decision is appended to.")
    ] = DEFAULT_RUNBOOK,
    no_runbook: Annotated[bool, typer.Option("--no-runbook", help="Do not write a runbook entry.")] = False,
    owner: Annotated[
        str | None, typer.Option(help="Who owns this change (default: git user.name, else the login).")
    ] = None,
) -> None:
    """Pre-deploy check: may CANDIDATE replace BASELINE? Exit 0 pass, 1 fail, 3 cannot judge; 2 a usage
    error (a bad flag, run, method or policy file, or a runbook entry that could not be written)."""
    from fewtune.release import runbook as book
    from fewtune.release.gate import run_gate
    from fewtune.release.policy import load_policy
    from fewtune.release.registry import resolve

    rules = load_policy(policy)
    old, new = resolve(baseline), resolve(candidate)
    if (old.folder.resolve(), old.method) == (new.folder.resolve(), new.method):
        raise FewtuneError(
            f"--candidate {candidate} and --baseline {baseline} are the same method of the same run: "
            "a gate compares a change with what it replaces"
        )
    result = run_gate(old, new, rules)
    if not as_json:  # the decision first: a runbook that cannot be written must not hide it
        show_gate(result)
    written, failed = None, None
    if not no_runbook:
        try:
            written = book.append(runbook, gate_entry(result, owner or book.default_owner()))
        except FewtuneError as err:
            failed = err
    if as_json:
        payload = result.to_dict() | {
            "runbook_entry": str(written) if written else None,
            "runbook_error": str(failed) if failed else None,
        }
        typer.echo(json.dumps(payload, indent=2))
    elif written:
        console.print(f"runbook: {written}")
    if failed:
        raise FewtuneError(f"the gate decided {result.decision}, but {failed}")
    raise typer.Exit(result.exit_code)


def show_gate(result: GateResult) -> None:
    table = Table(title=f"{result.candidate.spec} replacing {result.baseline.spec}", title_justify="left")
    for column in ("check", "measured", "threshold", "result", "why"):
        table.add_column(column, overflow="fold")
    for c in result.checks:
        style = STYLE.get(c.status, "")
        table.add_row(c.name, c.measured, c.threshold, Text(c.status, style=style), c.why)
    console.print(table)
    style = STYLE[result.decision]
    failing = ", ".join(c.name for c in result.failing())
    console.print(styled(f"gate: {result.decision}", style, f" ({failing})" if failing else ""))
    for note in result.notes():
        console.print(styled("note:", "yellow", f" {note}"), soft_wrap=True, highlight=False)


def gate_entry(result: GateResult, owner: str) -> Entry:
    from fewtune.release.gate import PASS
    from fewtune.release.runbook import Entry, next_review

    rules, base = result.policy, result.baseline
    p95 = base.p95_ms
    triggers = [
        f"p95 latency above {rules.p95_ratio:g}x the baseline's"
        + (f" ({p95 * rules.p95_ratio:.0f} ms on the run's hardware)" if p95 and rules.p95_ratio else ""),
        f"error rate above {ROLLBACK_ERROR_RATE:.0%} of requests",
        f"cost per request above {rules.cost_ratio or ROLLBACK_COST_FACTOR:g}x the baseline's",
        f"{result.metric} on a labelled live sample more than {rules.margin_points:g} points below the "
        "baseline",
    ]
    return Entry(
        kind="gate",
        decision=result.decision,
        subject=f"{result.candidate.spec} replacing {result.baseline.spec}",
        owner=owner,
        rollback_target=base.spec,
        evidence=[("check", "measured", "threshold", "result", "why")]
        + [(c.name, c.measured, c.threshold, c.status, c.why) for c in result.checks],
        triggers=triggers,
        next_review=next_review(CANARY_HOURS) if result.decision == PASS else None,
        notes=[
            f"canary the candidate and review after {CANARY_HOURS} h (`fewtune monitor`)"
            if result.decision == PASS
            else "do not release: fix the failing checks and gate again",
            *result.notes(),
        ],
    )


def runbook_list(
    folder: Annotated[Path, typer.Argument(help="The runbook folder.")] = DEFAULT_RUNBOOK,
    as_json: Annotated[bool, typer.Option("--json", help="Print the entries as JSON.")] = False,
) -> None:
    """List the release decisions in the runbook, oldest first."""
    from fewtune.release.runbook import entries

    found = entries(folder)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table(title=f"runbook {folder}: {len(found)} decisions", title_justify="left")
    for column in ("at", "kind", "decision", "owner", "subject", "next review", "file"):
        table.add_column(column, overflow="fold")
    for e in found:
        style = STYLE.get(e.get("decision", ""), "")
        decision = Text(e.get("decision", ""), style=style)
        table.add_row(
            e.get("at", ""), e.get("kind", ""), decision, e.get("owner", ""), e.get("subject", ""),
            e.get("next_review", ""), e["file"],
        )  # fmt: skip
    console.print(table)


runs_app = typer.Typer(
    help="The run registry: list, show and compare recorded runs.",
    no_args_is_help=False,
    add_completion=False,
)
RootOption = Annotated[
    Path,
    typer.Option(help="Runs root holding fewtune-runs.sqlite (FEWTUNE_REGISTRY names the file instead)."),
]


def _fmt(value: object, digits: str = ".3f") -> str:
    return "-" if value is None else format(value, digits) if isinstance(value, float) else str(value)


def _verdict(run: Mapping[str, Any]) -> Text:
    """A registry row's ``settled`` column in words: settled, provisional (in yellow) or - (unknown)."""
    from fewtune.release.verdict import PROVISIONAL, settled_label

    words = settled_label(run.get("settled"))  # absent: a read-only registry older than the column
    return Text(words, style="yellow" if words == PROVISIONAL else "")


@runs_app.callback(invoke_without_command=True)
def runs_list(ctx: typer.Context, root: RootOption = Path("runs")) -> None:
    """List the recorded runs (oldest first)."""
    if ctx.invoked_subcommand is not None:
        return
    from fewtune.release.registry import list_runs, registry_path

    path = registry_path(root)
    found = list_runs(path)
    table = Table(title=f"{path}: {len(found)} runs", title_justify="left")
    for column in (
        "run id", "started", "status", "task", "model", "test rows", "recommended", "verdict", "folder"
    ):  # fmt: skip
        table.add_column(column, overflow="fold")
    for r in found:
        table.add_row(
            r["run_id"], r["started_at"] or "-", r["status"] or "-", r["task"] or "-", r["model"] or "-",
            _fmt(r["test_rows"]), r["recommended"] or "-", _verdict(r), r["folder"],
        )  # fmt: skip
    console.print(table)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix) or run folder.")],
    root: RootOption = Path("runs"),
) -> None:
    """One run's hashes and its methods' metric, interval, p95 latency and cost per request."""
    from fewtune.decide.cost import format_usd
    from fewtune.release.registry import find_run, registry_path

    found = find_run(registry_path(root), run)
    r = found.columns
    for key in ("run_id", "folder", "started_at", "finished_at", "status", "task", "model", "seed",
                "config_sha256", "data_sha256", "test_sha256", "test_rows", "recommended"):  # fmt: skip
        console.print(styled(key, "bold", f": {_fmt(r[key])}"), highlight=False)
    console.print(Text.assemble(("verdict", "bold"), ": ", _verdict(r)), highlight=False)
    table = Table(title_justify="left")
    for column in ("method", "metric", "value", "95% CI", "p95 ms", "cost/request", "adapter sha256"):
        table.add_column(column, overflow="fold")
    for m in found.methods:
        ci = f"{m['ci_low']:.3f}-{m['ci_high']:.3f}" if m["ci_low"] is not None else "-"
        cost = format_usd(m["cost_per_request"]) if m["cost_per_request"] is not None else "-"
        adapter = (m["adapter_sha256"] or "-")[:16]
        table.add_row(
            m["name"], m["metric"] or "-", _fmt(m["value"]), ci, _fmt(m["p95_ms"], ".0f"), cost, adapter
        )
    console.print(table)


@runs_app.command("compare")
def runs_compare(
    first: Annotated[str, typer.Argument(help="Run id or folder.")],
    second: Annotated[str, typer.Argument(help="Run id or folder.")],
    root: RootOption = Path("runs"),
) -> None:
    """Two runs side by side: whether they share test rows and settings, and each method's figures."""
    from fewtune.release.registry import find_run, registry_path

    path = registry_path(root)
    first_run, second_run = find_run(path, first), find_run(path, second)
    a, b = first_run.columns, second_run.columns
    for key in ("task", "model", "seed", "config_sha256", "data_sha256", "test_sha256", "test_rows"):
        same = Text("same") if a[key] == b[key] else Text("differs", style="yellow")
        line = styled(key, "bold", f": {_fmt(a[key])[:16]} / {_fmt(b[key])[:16]} (")
        console.print(Text.assemble(line, same, ")"), highlight=False)
    table = Table(title_justify="left")
    for column in ("method", f"{a['run_id']} value", f"{b['run_id']} value", "p95 ms", "cost ratio"):
        table.add_column(column, overflow="fold")
    theirs = {m["name"]: m for m in second_run.methods}
    names = [m["name"] for m in first_run.methods] + [
        n for n in theirs if n not in {m["name"] for m in first_run.methods}
    ]
    mine = {m["name"]: m for m in first_run.methods}
    for name in names:
        x, y = mine.get(name, {}), theirs.get(name, {})
        p95 = f"{_fmt(x.get('p95_ms'), '.0f')} / {_fmt(y.get('p95_ms'), '.0f')}"
        ratio = (
            f"{y['cost_per_request'] / x['cost_per_request']:.2f}x"
            if x.get("cost_per_request") and y.get("cost_per_request")
            else "-"
        )
        table.add_row(name, _fmt(x.get("value")), _fmt(y.get("value")), p95, ratio)
    console.print(table)
    if a["test_sha256"] != b["test_sha256"]:
        console.print("the runs read different test files: their scores are not paired", style="yellow")
