"""The runbook under abuse: parallel writers, a rollback's reason, YAML aliases; and policy numbers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gate_helpers import fewtune
from route_server import RouteState, route_server

from fewtune.errors import ConfigError
from fewtune.release import runbook
from fewtune.release.policy import load_policy
from fewtune.release.runbook import Entry, append, entries

AT = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def an_entry(subject: str) -> Entry:
    return Entry("gate", "pass", subject, "alice", "few-shot", [("check",), ("ok",)], ["p95"], None, at=AT)


def test_six_parallel_entries_in_the_same_second_are_six_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six gates at once: every writer picks its name before any has written (the barrier holds them)."""
    together = threading.Barrier(6, timeout=10)
    render = runbook.render

    def slow_render(entry: Entry) -> str:
        together.wait()
        return render(entry)

    monkeypatch.setattr(runbook, "render", slow_render)
    with ThreadPoolExecutor(6) as pool:
        paths = list(pool.map(lambda i: append(tmp_path, an_entry(f"gate {i}")), range(6)))
    assert len(set(paths)) == 6 and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in paths
    )
    assert sorted(e["subject"] for e in entries(tmp_path)) == [f"gate {i}" for i in range(6)]


def test_a_rollback_keeps_its_reason_in_the_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = RouteState(weight=0.3)
    reason = "p95 regression in eu-west"
    with route_server(state) as url:
        code = fewtune(
            monkeypatch, "rollback", "--server", url, "--route", "support", "--reason", reason,
            "--owner", "alice", "--runbook", str(tmp_path / "book"),
        )  # fmt: skip
    assert code == 0 and state.weight == 0.0 and state.reasons == [reason]
    (entry,) = entries(tmp_path / "book")
    assert entry["reason"] == reason and entry["decision"] == "rolled back"


BOMB = "\n".join(
    ["kind: gate", 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcde", "bcdef", strict=False)]
)


@pytest.mark.parametrize("front", ["kind: gate\nowner: &who alice\nsubject: *who", BOMB])
def test_runbook_front_matter_with_aliases_is_refused(tmp_path: Path, front: str) -> None:
    """A 300-odd-byte alias bomb would expand to millions of nodes: an alias is refused, in one line."""
    (tmp_path / "20261202T120000Z-gate-pass.md").write_text(f"---\n{front}\n---\n# Gate\n", encoding="utf-8")
    (found,) = entries(tmp_path)
    assert found["decision"] == "unreadable"
    assert "aliases (*name) are not allowed" in found["subject"] and "\n" not in found["subject"]


@pytest.mark.parametrize(("text", "line"), [("margin_points: 2\np95_ratio: .nan\n", 2),
                                            ("cost_ratio: .inf\n", 1), ("alpha: -.inf\n", 1),
                                            ("class_floors: {refund: .nan}\n", 1)])  # fmt: skip
def test_policy_numbers_must_be_finite(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="finite number") as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_policy_aliases_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("margin_points: &m 2\nclass_drop_points: *m\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"policy.yaml:2: invalid YAML \(YAML aliases"):
        load_policy(path)
