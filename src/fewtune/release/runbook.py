"""The runbook: one markdown file per release decision, in a folder the team keeps in its repository.

``fewtune gate``, ``fewtune monitor`` and ``fewtune rollback`` each append one entry: what was decided, the
evidence table, the owner, the rollback target, the triggers in force and the next review time. The entry's
facts are also in a YAML front matter block, so ``fewtune runbook`` (and any other tool) can list them.
Entries are never rewritten: a new decision is a new file.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from fewtune.errors import FewtuneError
from fewtune.results.store import write_text_atomic

DEFAULT_RUNBOOK = Path("runbook")
FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


@dataclass(frozen=True)
class Entry:
    """One decision."""

    kind: str
    """gate, monitor or rollback."""
    decision: str
    """pass, fail, cannot judge, rolled back, ..."""
    subject: str
    """What changes, e.g. "lora n=200 (runs/a) replacing few-shot k=8 balanced (runs/b)"."""
    owner: str
    rollback_target: str
    """What to go back to if this change misbehaves."""
    evidence: Sequence[Sequence[str]]
    """Rows of the evidence table; the first is its header."""
    triggers: Sequence[str]
    """Rollback triggers and stop conditions in force after this decision."""
    next_review: datetime | None
    notes: Sequence[str] = field(default_factory=tuple)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def default_owner() -> str:
    """``git config user.name``, else the login name, else "unassigned"."""
    try:
        name = subprocess.run(
            ["git", "config", "user.name"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    if name:
        return name
    try:
        return os.environ.get("USER") or getpass.getuser() or "unassigned"
    except (OSError, KeyError):
        return "unassigned"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(entry: Entry) -> str:
    stamp = entry.at.strftime("%Y-%m-%dT%H:%M:%SZ")
    review = entry.next_review.strftime("%Y-%m-%dT%H:%M:%SZ") if entry.next_review else None
    front = {
        "kind": entry.kind,
        "decision": entry.decision,
        "subject": entry.subject,
        "owner": entry.owner,
        "at": stamp,
        "rollback_target": entry.rollback_target,
        "next_review": review,
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        f"# {entry.kind.capitalize()}: {entry.decision} - {entry.subject}",
        "",
        f"- **Owner:** {entry.owner}",
        f"- **Decided:** {stamp}",
        f"- **Rollback target:** {entry.rollback_target}",
        f"- **Next review:** {review or 'none set'}",
        "",
        "## Evidence",
        "",
    ]
    if entry.evidence:
        header, *rows = entry.evidence
        lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    lines += ["", "## Triggers in force", ""] + [f"- {t}" for t in entry.triggers]
    if entry.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in entry.notes]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "entry"


def append(folder: str | Path, entry: Entry) -> Path:
    """Write ``entry`` as a new file in ``folder`` (created if needed); an existing file is never replaced."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FewtuneError(f"{folder}: cannot create the runbook folder ({err.strerror})") from None
    if not folder.is_dir():
        raise FewtuneError(f"{folder}: the runbook must be a folder")
    base = f"{entry.at.strftime('%Y%m%dT%H%M%SZ')}-{entry.kind}-{_slug(entry.decision)}"
    path = folder / f"{base}.md"
    number = 2
    while path.exists():
        path = folder / f"{base}-{number}.md"
        number += 1
    write_text_atomic(path, render(entry))
    return path


def next_review(hours: float) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


def entries(folder: str | Path) -> list[dict[str, Any]]:
    """Every entry's front matter (with its ``file``), oldest first; a file that is not an entry is listed
    with ``decision: unreadable`` rather than stopping the listing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FewtuneError(f"{folder}: no runbook folder here (gate, monitor and rollback create it)")
    found = []
    for path in sorted(folder.glob("*.md")):
        try:
            match = FRONT_MATTER.match(path.read_text(encoding="utf-8"))
            meta = yaml.safe_load(match.group(1)) if match else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            meta = None
        if not isinstance(meta, dict):
            meta = {"decision": "unreadable", "subject": "not a fewtune runbook entry"}
        found.append({**{k: str(v) if v is not None else "" for k, v in meta.items()}, "file": path.name})
    return sorted(found, key=lambda e: (e.get("at", ""), e["file"]))
