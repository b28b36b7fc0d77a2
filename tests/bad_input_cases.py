"""The bad-input harness: a case is files, a command line and the words its one-line error must say; every
case exits 2 with one line on stderr, never a traceback, and leaves the user's files as they were."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

GOOD = "".join(json.dumps({"text": f"row {i} {w}", "label": w}) + "\n" for i in range(6) for w in ("a", "b"))


@dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, str | bytes]
    """Files to write under the case folder (``{dir}`` in a value is that folder)."""
    args: list[str]
    """Command line after ``fewtune`` (``{dir}`` is the case folder)."""
    words: str
    """What the one-line error must say: fragments separated by " | " (``{dir}`` is the case folder)."""


def data_case(
    name: str, content: str | bytes, words: str, suffix: str = ".jsonl", line: int | None = 1
) -> list[Case]:
    """The same bad file as --data, and as --test beside a good --data."""
    where = f"{{dir}}/bad{suffix}" + (f":{line}:" if line else ":")
    return [
        Case(
            f"data: {name}",
            {f"bad{suffix}": content},
            ["run", "--data", f"{{dir}}/bad{suffix}"],
            f"{where} | {words}",
        ),
        Case(
            f"test: {name}",
            {f"bad{suffix}": content, "good.jsonl": GOOD},
            ["run", "--data", "{dir}/good.jsonl", "--test", f"{{dir}}/bad{suffix}"],
            f"{where} | {words}",
        ),
    ]


def row(**fields: object) -> str:
    return json.dumps(fields) + "\n"


def check_one_line(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fewtune.cli import commands as cli

    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{dir}", str(tmp_path)), encoding="utf-8")
    args = [a.replace("{dir}", str(tmp_path)) for a in case.args]
    if args[0] == "run" and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr("sys.argv", ["fewtune", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    message = " ".join(captured.err.split())
    assert "Traceback" not in captured.err + captured.out
    assert exit_info.value.code == 2, captured.err + captured.out
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    for fragment in case.words.replace("{dir}", str(tmp_path)).split(" | "):
        assert fragment in message, message
    assert {p: p.read_bytes() for p in before} == before  # nothing of the user's was changed or removed
