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
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from fewtune.config_yaml import NoAliasLoader
from fewtune.errors import FewtuneError

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
    reason: str | None = None
    """Why, in the words of whoever decided (``fewtune rollback --reason``); kept in the front matter."""


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
    if entry.reason is not None:
        front["reason"] = entry.reason
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
        *([f"- **Reason:** {_cell(entry.reason)}"] if entry.reason is not None else []),
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
    """Write ``entry`` as a new file in ``folder`` (created if needed); an existing file is never replaced.

    The name is claimed exclusively (a hard link of the finished file, which fails when the name exists), so
    gates writing in the same second, in parallel, each get their own file, and a reader never sees half an
    entry."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FewtuneError(f"{folder}: cannot create the runbook folder ({err.strerror})") from None
    if not folder.is_dir():
        raise FewtuneError(f"{folder}: the runbook must be a folder")
    base = f"{entry.at.strftime('%Y%m%dT%H%M%SZ')}-{entry.kind}-{_slug(entry.decision)}"
    text = render(entry)
    try:
        return _claim(folder, base, text)
    except OSError as err:
        raise FewtuneError(f"{folder}: cannot write the runbook entry ({err.strerror or err})") from None


def _claim(folder: Path, base: str, text: str) -> Path:
    """``folder/base.md``, else ``base-2.md``, ``base-3.md``...: the first name no one holds, holding
    ``text``."""
    fd, tmp = tempfile.mkstemp(prefix=f".fewtune-{base}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        number = 1
        while True:
            path = folder / (f"{base}.md" if number == 1 else f"{base}-{number}.md")
            try:
                os.link(tmp, path)  # atomic, and never over an existing name (unlike a rename)
                return path
            except FileExistsError:
                number += 1
    finally:
        Path(tmp).unlink(missing_ok=True)


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
            # No aliases: a few hundred bytes of nested aliases expand to gigabytes (a "billion laughs").
            meta = yaml.load(match.group(1), Loader=NoAliasLoader) if match else None
        except yaml.YAMLError as err:
            meta = {"decision": "unreadable", "subject": f"front matter: {_yaml_problem(err)}"}
        except (OSError, UnicodeDecodeError):
            meta = None
        if not isinstance(meta, dict):
            meta = {"decision": "unreadable", "subject": "not a fewtune runbook entry"}
        found.append({**{k: str(v) if v is not None else "" for k, v in meta.items()}, "file": path.name})
    return sorted(found, key=lambda e: (e.get("at", ""), e["file"]))


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 2}: " if mark else ""  # + 1 for 1-based, + 1 for the opening ---
    return where + str(getattr(err, "problem", None) or err)
