"""``fewtune gate``: each check passes what it should and fails what it guards against, with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gate_helpers import UNSETTLED, VERDICTS, Arm, labelled_rows, with_accuracy, write_run, write_verdict
from rich.console import Console

from fewtune.cli import commands as cli
from fewtune.release.gate import FAIL, PASS, UNKNOWN, run_gate
from fewtune.release.policy import Policy
from fewtune.release.sides import read_side
from fewtune.release.verdict import Verdict

CLASSES = {"a": 300, "b": 300, "c": 300, "rare": 30}
LABELS = sorted(CLASSES)


def gate_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict]:
    monkeypatch.setattr("sys.argv", ["fewtune", "gate", *args, "--json"])
    try:
        cli.main()
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    return code, json.loads(capsys.readouterr().out)


def statuses(payload: dict) -> dict[str, str]:
    """Check name -> status; the primary metric's check is keyed "non-inferiority"."""
    return {c["name"].split()[-1] if c["name"].endswith("non-inferiority") else c["name"]: c["status"]
            for c in payload["checks"]}  # fmt: skip


@pytest.fixture
def rows() -> tuple[list[str], list[str]]:
    return labelled_rows(CLASSES)


def two_arms(
    folder: Path, rows: tuple[list[str], list[str]], candidate: Arm, base_accuracy: float = 0.8
) -> Path:
    texts, gold = rows
    baseline = Arm("few-shot k=8 balanced", "few-shot", with_accuracy(gold, LABELS, base_accuracy, seed=1))
    return write_run(folder, texts, gold, [baseline, candidate])


def test_a_better_candidate_passes_and_writes_a_runbook_entry(
    tmp_path: Path, rows, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, gold = rows
    run = two_arms(
        tmp_path / "run", rows, Arm("lora n=200", "lora", with_accuracy(gold, LABELS, 0.9, seed=2))
    )
    book = tmp_path / "runbook"
    code, payload = gate_cli(
        monkeypatch, capsys, "--baseline", f"{run}:few-shot k=8 balanced", "--candidate", f"{run}:lora n=200",
        "--runbook", str(book), "--owner", "alice",
    )  # fmt: skip
    assert code == 0, payload
    assert payload["decision"] == PASS and set(statuses(payload).values()) == {PASS}
    entry = Path(payload["runbook_entry"]).read_text(encoding="utf-8")
    assert "owner: alice" in entry and "| macro-F1 non-inferiority |" in entry
    assert "rollback_target:" in entry and "next_review: '2" in entry  # a pass sets the next review


def test_a_candidate_worse_beyond_the_margin_fails_on_non_inferiority(
    tmp_path: Path, rows, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, gold = rows
    run = two_arms(
        tmp_path / "run", rows, Arm("lora n=200", "lora", with_accuracy(gold, LABELS, 0.6, seed=2))
    )
    code, payload = gate_cli(
        monkeypatch, capsys, "--baseline", f"{run}:few-shot k=8 balanced", "--candidate", f"{run}:lora n=200",
        "--no-runbook",
    )  # fmt: skip
    assert code == 1
    assert statuses(payload)["non-inferiority"] == FAIL


def test_a_collapsed_small_class_fails_its_floor_while_the_overall_metric_passes(
    tmp_path: Path, rows
) -> None:
    _, gold = rows
    base = with_accuracy(gold, LABELS, 0.85, seed=1)
    collapsed = [("a" if g == "rare" else p) for p, g in zip(base, gold, strict=True)]  # never says "rare"
    run = two_arms(tmp_path / "run", rows, Arm("lora n=200", "lora", collapsed), base_accuracy=0.85)
    sides = read_side(f"{run}:few-shot k=8 balanced"), read_side(f"{run}:lora n=200")
    assert run_gate(*sides, Policy()).checks[1].status == FAIL  # macro-F1 (the imbalanced default) sees it
    result = run_gate(*sides, Policy(metric="accuracy"))  # accuracy alone would not
    checks = {c.name: c for c in result.checks}
    assert checks["accuracy non-inferiority"].status == PASS  # 30 of 930 rows: under the 5-point margin
    assert checks["per-class recall floors"].status == FAIL
    assert "rare 0.00" in checks["per-class recall floors"].why
    assert result.exit_code == 1


def test_equal_candidates_do_not_fail_class_floors_over_seeds(tmp_path: Path) -> None:
    """Routine variance: the same 80%-accurate method drawn twice, 12 classes of 25-60 rows, 5 seeds."""
    classes = {f"c{i}": 25 + 5 * i for i in range(12)}
    labels = sorted(classes)
    failed = []
    for seed in range(5):
        texts, gold = labelled_rows(classes, seed)
        arms = [
            Arm("few-shot k=8 balanced", "few-shot", with_accuracy(gold, labels, 0.8, seed=100 + seed)),
            Arm("lora n=200", "lora", with_accuracy(gold, labels, 0.8, seed=200 + seed)),
        ]
        run = write_run(tmp_path / f"run{seed}", texts, gold, arms)
        result = run_gate(read_side(f"{run}:few-shot k=8 balanced"), read_side(f"{run}:lora n=200"), Policy())
        failed += [c.name for c in result.checks if c.name == "per-class recall floors" and c.status == FAIL]
    assert failed == []


def test_twice_the_p95_fails_the_latency_check_and_a_named_floor_is_used(tmp_path: Path, rows) -> None:
    texts, gold = rows
    same = with_accuracy(gold, LABELS, 0.8, seed=1)
    arms = [Arm("few-shot k=8 balanced", "few-shot", same), Arm("lora n=200", "lora", same, p95_ms=100.0)]
    run = write_run(tmp_path / "run", texts, gold, arms)
    baseline, candidate = read_side(f"{run}:few-shot k=8 balanced"), read_side(f"{run}:lora n=200")
    checks = {c.name: c for c in run_gate(baseline, candidate, Policy()).checks}
    assert checks["p95 latency"].status == FAIL and "2.00x" in checks["p95 latency"].measured
    assert checks["cost per request"].status == PASS
    strict = Policy(class_floors={"rare": 0.99}, p95_ratio=None)
    checks = {c.name: c for c in run_gate(baseline, candidate, strict).checks}
    assert (
        checks["per-class recall floors"].status == FAIL
        and "floor 0.99" in checks["per-class recall floors"].why
    )
    assert checks["p95 latency"].status == "not checked"


def test_runs_on_different_test_rows_cannot_be_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = labelled_rows(CLASSES, seed=0), labelled_rows(CLASSES, seed=1)
    a = write_run(tmp_path / "a", *first, [Arm("zero-shot", "zero-shot", first[1])])
    b = write_run(tmp_path / "b", *second, [Arm("zero-shot", "zero-shot", second[1])])
    code, payload = gate_cli(
        monkeypatch, capsys, "--baseline", f"{a}:zero-shot", "--candidate", f"{b}:zero-shot", "--no-runbook"
    )
    assert code == 3 and payload["decision"] == UNKNOWN  # 2 is a usage error's
    assert [c["name"] for c in payload["checks"]] == ["same test rows"]  # nothing else is comparable


@pytest.mark.parametrize("as_json", [True, False])
def test_the_decision_is_printed_before_a_runbook_that_cannot_be_written(
    tmp_path: Path, rows, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    _, gold = rows
    run = two_arms(
        tmp_path / "run", rows, Arm("lora n=200", "lora", with_accuracy(gold, LABELS, 0.9, seed=2))
    )
    book = tmp_path / "runbook"
    book.write_text("a file where the runbook folder should be")
    argv = [
        "fewtune",
        "gate",
        "--baseline",
        f"{run}:few-shot k=8 balanced",
        "--candidate",
        f"{run}:lora n=200",
    ]
    monkeypatch.setattr("sys.argv", [*argv, "--runbook", str(book), *(["--json"] if as_json else [])])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2  # the decision is not recorded: not a pass a script may act on
    assert "the gate decided pass, but" in err and "runbook" in err and len(err.strip().splitlines()) == 1
    if as_json:
        payload = json.loads(out)
        assert payload["decision"] == PASS and payload["runbook_entry"] is None and payload["runbook_error"]
    else:
        assert "gate: pass" in out


def test_an_interval_straddling_the_margin_cannot_be_judged(tmp_path: Path) -> None:
    texts, gold = labelled_rows({"a": 40, "b": 40})
    arms = [
        Arm("few-shot k=8 balanced", "few-shot", with_accuracy(gold, ["a", "b"], 0.85, seed=1)),
        Arm("lora n=200", "lora", with_accuracy(gold, ["a", "b"], 0.82, seed=3)),
    ]
    run = write_run(tmp_path / "run", texts, gold, arms)
    result = run_gate(read_side(f"{run}:few-shot k=8 balanced"), read_side(f"{run}:lora n=200"), Policy())
    check = next(c for c in result.checks if c.name.endswith("non-inferiority"))
    assert check.status == UNKNOWN and "cannot show non-inferiority" in check.why


def test_answers_that_are_no_label_fail_the_valid_answers_check(tmp_path: Path, rows) -> None:
    texts, gold = rows
    base = with_accuracy(gold, LABELS, 0.9, seed=1)
    broken = [("I think it is a" if i % 10 == 0 else p) for i, p in enumerate(base)]  # 10% unparsed
    arms = [Arm("few-shot k=8 balanced", "few-shot", base), Arm("lora n=200", "lora", broken)]
    run = write_run(tmp_path / "run", texts, gold, arms)
    result = run_gate(read_side(f"{run}:few-shot k=8 balanced"), read_side(f"{run}:lora n=200"), Policy())
    assert {c.name: c.status for c in result.checks}["valid answers"] == FAIL


def test_a_method_not_in_the_run_is_a_one_line_error(
    tmp_path: Path, rows, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = two_arms(tmp_path / "run", rows, Arm("lora n=200", "lora", rows[1]))
    monkeypatch.setattr("sys.argv", ["fewtune", "gate", "--baseline", f"{run}:nope", "--candidate", f"{run}"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no method 'nope'" in err and "lora n=200" in err and "Traceback" not in err


def test_a_method_gated_against_itself_is_a_one_line_error(
    tmp_path: Path, rows, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same method on both sides passes every check trivially: naming it twice is a slip, not a change."""
    run = two_arms(tmp_path / "run", rows, Arm("lora n=200", "lora", rows[1]))
    monkeypatch.chdir(tmp_path)
    argv = [
        "fewtune",
        "gate",
        "--baseline",
        "run:lora n=200",
        "--candidate",
        f"{run}:lora n=200",
        "--no-runbook",
    ]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "are the same method of the same run" in err and "Traceback" not in err


NOTE = (
    "note: {run}'s verdict is provisional: lora n=200 may be 7.2 points better than few-shot k=8 balanced "
    "(95% CI +1.0 to +13.4 at n=200; about 460 test rows would settle it)"
)


@pytest.mark.parametrize(
    ("verdict", "baseline", "noted", "settled"),
    [
        ("provisional", "", True, False),  # the recommended side, resolved: the note
        ("settled", "", False, True),
        ("old", "", False, None),  # a report older than the flag: unknown, no note
        ("provisional", ":few-shot k=8 balanced", False, None),  # METHOD named: not the run's verdict
    ],
)
def test_the_gate_notes_a_provisional_verdict_of_a_recommended_side(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    verdict: str,
    baseline: str,
    noted: bool,
    settled: bool | None,
) -> None:
    texts, gold = labelled_rows({"a": 40, "b": 40})
    arms = [Arm(name, name.split()[0], with_accuracy(gold, ["a", "b"], 0.8, seed=1))
            for name in ("few-shot k=8 balanced", "lora n=200")]  # fmt: skip
    run = write_verdict(write_run(tmp_path / "run", texts, gold, arms), VERDICTS[verdict])
    book = tmp_path / "book"
    args = ["--baseline", f"{run}{baseline}", "--candidate", f"{run}:lora n=200", "--runbook", str(book)]
    code, payload = gate_cli(monkeypatch, capsys, *args)
    assert code == 0, payload  # the same answers: the note informs, it never changes the decision
    side = payload["baseline"]
    assert (side["recommended"], side["settled"]) == (not baseline, settled)
    assert side["unsettled"] == (UNSETTLED if noted else None) and payload["candidate"]["settled"] is None
    assert payload["notes"] == ([NOTE.format(run=run).removeprefix("note: ")] if noted else [])
    monkeypatch.setattr("fewtune.cli.release.console", Console(markup=False, width=100))
    monkeypatch.setattr("sys.argv", ["fewtune", "gate", *args])
    with pytest.raises(SystemExit):
        cli.main()
    lines = capsys.readouterr().out.splitlines()
    assert (NOTE.format(run=run) in lines) == noted  # one line, however narrow the console
    assert [line for line in lines if line.startswith("note:")] == ([NOTE.format(run=run)] if noted else [])
    entry = Path(payload["runbook_entry"]).read_text(encoding="utf-8")
    assert ("verdict is provisional" in entry) == noted


@pytest.mark.parametrize(
    ("recommendation", "label", "note"),
    [
        (None, "-", None),
        ("not an object", "-", None),
        ({"method": "x", "settled": "yes"}, "-", None),  # not a bool: unknown
        ({"method": "x", "settled": True, "unsettled": UNSETTLED}, "settled", None),
        ({"method": "x", "settled": False, "unsettled": "junk"}, "provisional", "the report gives no detail"),
        (
            {"method": "x", "settled": False, "unsettled": UNSETTLED | {"lead_ci95": [1.0]}},
            "provisional",
            "the report gives no detail",
        ),
        (
            {"method": "x", "settled": False, "unsettled": UNSETTLED | {"rows": "many"}},
            "provisional",
            "the report gives no detail",
        ),
        (
            {
                "method": "x",
                "settled": False,
                "unsettled": UNSETTLED | {"lead_ci95": None, "rows_to_settle": None},
            },
            "provisional",
            "lora n=200 may be 7.2 points better than few-shot k=8 balanced (n=200)",
        ),
        (
            {
                "method": "x",
                "settled": False,
                "unsettled": UNSETTLED | {"lead_points": -2.5, "lead_ci95": [-7, 2]},
            },
            "provisional",
            "lora n=200 may do as well as few-shot k=8 balanced, 2.5 points behind (95% CI -7.0 to +2.0 at "
            "n=200;",
        ),
    ],
)
def test_a_verdict_is_read_from_any_recommendation_without_crashing(
    recommendation: object, label: str, note: str | None
) -> None:
    verdict = Verdict.of(recommendation)
    assert verdict.label == label
    line = verdict.note("runs/x")
    assert (line is None) == (note is None)
    assert note is None or (line is not None and note in line)
