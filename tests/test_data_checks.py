"""Data checks on crafted rows whose answer is known: a fake embedder maps each text to a chosen vector."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fewtune.backends.base import ProgressFn
from fewtune.data import checks as data_checks
from fewtune.data import near_duplicates
from fewtune.data.checks import (
    NEAR_DUPLICATE_COSINE,
    DataChecks,
    check_steps,
    run_data_checks,
    write_label_issues,
)
from fewtune.data.load import Example
from fewtune.embeddings import Embedder
from fewtune.report.checks import check_summary_lines, label_issue_table, near_duplicate_table

DIM = 64
LABELS = ("a", "b", "c")


class ChosenVectors(Embedder):
    """Each text's vector is the one the test chose for it; records which texts were embedded."""

    name = "chosen-vectors"

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.embedded: list[str] = []

    def embed(
        self, texts: Sequence[str], batch_size: int = 64, progress: ProgressFn | None = None
    ) -> np.ndarray:
        self.embedded += list(texts)
        if progress:
            progress(len(texts))
        out = np.array([self.vectors[t] for t in texts], dtype=np.float32).reshape(len(texts), DIM)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class Rows:
    """Builds clustered rows: a label's rows point along its own axis, plus a random direction of norm 0.6 in
    the last DIM - 3 axes, so rows of one label have cosine about 0.74 (well under the near-duplicate
    threshold) and rows of different labels about 0, which a linear classifier separates perfectly."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.vectors: dict[str, np.ndarray] = {}

    def vector(self, cluster: str) -> np.ndarray:
        noise = self.rng.normal(size=DIM - len(LABELS))
        vector = np.zeros(DIM)
        vector[LABELS.index(cluster)] = 1.0
        vector[len(LABELS) :] = 0.6 * noise / np.linalg.norm(noise)
        return vector

    def add(self, text: str, vector: np.ndarray) -> str:
        self.vectors[text] = vector
        return text

    def cluster(self, split: str, counts: dict[str, int], path: str = "") -> list[Example]:
        rows = [
            Example(self.add(f"{split} {label} {i}", self.vector(label)), label, path or f"{split}.jsonl")
            for label, n in counts.items()
            for i in range(n)
        ]
        return [Example(ex.text, ex.label, ex.path, line) for line, ex in enumerate(rows, start=1)]

    def embedder(self) -> ChosenVectors:
        return ChosenVectors(self.vectors)


def prototype(rows: Rows, text: str, cluster: str) -> None:
    """Make ``text`` the clearest member of ``cluster``: cleanlab counts a row as confidently of a class
    only when its probability reaches that class's average, and these clusters make every row near-certain."""
    rows.vectors[text] = np.eye(DIM)[LABELS.index(cluster)]


def relabel(rows: list[Example], index: int, label: str) -> list[Example]:
    rows = list(rows)
    ex = rows[index]
    rows[index] = Example(ex.text, label, ex.path, ex.line)
    return rows


def near_copy(rows: Rows, text: str, new_text: str, cosine: float) -> str:
    """A vector at exactly ``cosine`` to ``text``'s (rotated towards a fresh direction)."""
    base = rows.vectors[text] / np.linalg.norm(rows.vectors[text])
    other = rows.rng.normal(size=DIM)
    other -= other @ base * base
    other /= np.linalg.norm(other)
    return rows.add(new_text, cosine * base + np.sqrt(1 - cosine**2) * other)


def check(pool: list[Example], test: list[Example], rows: Rows, **kwargs: object) -> DataChecks:
    labels = sorted({ex.label for ex in [*pool, *test]})
    return run_data_checks(pool, test, labels, rows.embedder(), seed=0, **kwargs)  # type: ignore[arg-type]


def test_clean_clusters_flag_no_rows_and_no_pairs() -> None:
    rows = Rows()
    pool = rows.cluster("pool", {"a": 60, "b": 60, "c": 60})
    test = rows.cluster("test", {"a": 10, "b": 10, "c": 10})
    checks = check(pool, test, rows)
    assert checks.label_issue_counts == {"pool": 0, "test": 0} and checks.label_issues == []
    assert checks.rows_checked == {"pool": 180, "test": 30}
    assert checks.near_duplicate_counts == {"conflicts": 0, "leaks": 0, "leaked_test_rows": 0}
    assert checks.settings["classifier_agreement"] == {"pool": 1.0, "test": 1.0}
    assert not any("mislabelled" in w or "near-duplicate" in w for w in checks.warnings)


def test_flipped_labels_are_flagged_in_pool_and_test_with_the_label_the_classifier_prefers() -> None:
    rows = Rows()
    pool = relabel(rows.cluster("pool", {"a": 60, "b": 60, "c": 60}), 7, "b")  # an "a" row labelled b
    test = relabel(rows.cluster("test", {"a": 10, "b": 10, "c": 10}), 25, "a")  # a "c" row labelled a
    prototype(rows, "pool a 7", "a")
    prototype(rows, "test c 5", "c")
    checks = check(pool, test, rows)
    flagged = {(issue["split"], issue["row"]): issue for issue in checks.label_issues}
    assert set(flagged) == {("pool", 7), ("test", 25)}
    assert checks.label_issue_counts == {"pool": 1, "test": 1}
    pool_issue = flagged[("pool", 7)]
    assert pool_issue["line"] == 8 and pool_issue["path"] == "pool.jsonl" and pool_issue["text"] == "pool a 7"
    assert (pool_issue["label"], pool_issue["suggested"]) == ("b", "a") and pool_issue["quality"] < 0.2
    assert (flagged[("test", 25)]["label"], flagged[("test", 25)]["suggested"]) == ("a", "c")
    qualities = [issue["quality"] for issue in checks.label_issues]
    assert qualities == sorted(qualities)  # worst first
    warning = next(w for w in checks.warnings if "mislabelled" in w)
    assert "1 of 180 pool rows (0.6%)" in warning and "1 of 30 test rows (3.3%)" in warning
    assert "label_issues.jsonl" in warning


def test_near_duplicate_pool_pair_with_different_labels_is_a_conflict(tmp_path: Path) -> None:
    rows = Rows()
    pool = rows.cluster("pool", {"a": 60, "b": 60, "c": 60})
    twin = near_copy(rows, "pool a 3", "pool twin of a 3", 0.97)
    same_label = near_copy(rows, "pool b 4", "pool twin of b 4", 0.97)  # a near duplicate, same label
    below = near_copy(rows, "pool a 5", "pool cousin of a 5", 0.93)  # under the threshold
    pool += [Example(twin, "c", "pool.jsonl", 181), Example(same_label, "b", "pool.jsonl", 182)]
    pool += [Example(below, "b", "pool.jsonl", 183)]
    test = rows.cluster("test", {"a": 10, "b": 10, "c": 10})
    checks = check(pool, test, rows)
    assert checks.near_duplicate_counts["conflicts"] == 1
    [pair] = checks.near_duplicate_conflicts
    assert pair["a"] == {"text": "pool a 3", "label": "a", "line": 4}
    assert pair["b"] == {"text": twin, "label": "c", "line": 181}
    assert pair["cosine"] == pytest.approx(0.97, abs=1e-3)
    assert any(
        w.startswith("1 pairs of near-duplicate pool texts") and "line 4" in w for w in checks.warnings
    )


def test_near_duplicate_of_a_test_row_in_the_pool_is_a_leak() -> None:
    rows = Rows()
    pool = rows.cluster("pool", {"a": 60, "b": 60, "c": 60})
    test = rows.cluster("test", {"a": 10, "b": 10, "c": 10})
    leak = near_copy(rows, "test b 2", "pool paraphrase of test b 2", 0.96)
    pool.append(Example(leak, "b", "pool.jsonl", 181))
    checks = check(pool, test, rows)
    assert checks.near_duplicate_counts == {"conflicts": 0, "leaks": 1, "leaked_test_rows": 1}
    [pair] = checks.near_duplicate_leaks
    assert pair["pool"]["line"] == 181 and pair["test"] == {"text": "test b 2", "label": "b", "line": 13}
    assert pair["cosine"] >= NEAR_DUPLICATE_COSINE
    assert any(
        "1 of 30 test rows (3.3%) have a near-duplicate" in w and "optimistic" in w for w in checks.warnings
    )


def test_small_and_thin_classes_are_reported_with_their_counts() -> None:
    rows = Rows()
    pool = rows.cluster("pool", {"a": 12, "b": 120, "c": 200})
    test = rows.cluster("test", {"a": 5, "b": 5, "c": 5})
    checks = check(pool, test, rows)
    assert checks.small_classes == {"a": 12} and checks.thin_classes == {"b": 120}
    assert (
        "1 label has fewer than 50 pool examples (a: 12); guides: 50 minimum, 200+ better" in checks.warnings
    )
    assert any(w.startswith("1 label has 50-199 pool examples (b: 120)") for w in checks.warnings)


def test_labels_only_in_test_are_not_judged_and_columns_line_up() -> None:
    rows = Rows()
    pool = rows.cluster("pool", {"a": 30, "c": 30})  # no "b" in the pool
    test = relabel(rows.cluster("test", {"a": 5, "b": 5, "c": 5}), 0, "c")
    prototype(rows, "test a 0", "a")
    checks = check(pool, test, rows)
    assert checks.rows_checked == {"pool": 60, "test": 10}
    assert checks.settings["test_rows_not_judged"] == 5
    [issue] = checks.label_issues
    assert (issue["split"], issue["row"], issue["label"], issue["suggested"]) == ("test", 0, "c", "a")


def test_a_single_row_label_skips_the_pool_check_with_a_warning() -> None:
    rows = Rows()
    pool = rows.cluster("pool", {"a": 30, "b": 30, "c": 1})
    test = relabel(rows.cluster("test", {"a": 5, "b": 5}), 0, "b")
    prototype(rows, "test a 0", "a")
    checks = check(pool, test, rows)
    assert checks.rows_checked == {"pool": 0, "test": 10}
    assert any(w.startswith("label check skipped: a pool label has one row") for w in checks.warnings)
    assert [(i["split"], i["row"]) for i in checks.label_issues] == [("test", 0)]


def test_large_pools_are_label_checked_on_a_seeded_stratified_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_checks, "MAX_LABEL_CHECK_ROWS", 90)
    rows = Rows()
    pool = rows.cluster("pool", {"a": 60, "b": 60, "c": 60})
    test = rows.cluster("test", {"a": 10, "b": 10, "c": 10})
    first, again = check(pool, test, rows), check(pool, test, rows)
    assert first.rows_checked == {"pool": 90, "test": 30} and first.settings["pool_sample"] == 90
    assert first.to_dict() == again.to_dict()
    assert any("sample of 90 of the 180 pool rows (seed 0)" in w for w in first.warnings)


def test_blocked_similarities_match_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = Rows()
    pool = rows.cluster("pool", {"a": 20, "b": 20, "c": 20})
    for i in range(0, 60, 6):  # near twins with another label, spread over several blocks
        twin = near_copy(rows, pool[i].text, f"twin {i}", 0.96 + i / 10_000)
        pool.append(Example(twin, LABELS[(LABELS.index(pool[i].label) + 1) % 3], "pool.jsonl", 100 + i))
    test = rows.cluster("test", {"a": 5, "b": 5, "c": 5})
    whole = check(pool, test, rows)
    monkeypatch.setattr(near_duplicates, "SIMILARITY_BLOCK_ROWS", 7)
    monkeypatch.setattr(near_duplicates, "MAX_PAIRS_KEPT", 4)
    blocked = check(pool, test, rows)
    assert whole.near_duplicate_counts["conflicts"] == blocked.near_duplicate_counts["conflicts"] == 10
    assert blocked.near_duplicate_conflicts == whole.near_duplicate_conflicts[:4]
    cosines = [pair["cosine"] for pair in whole.near_duplicate_conflicts]
    assert cosines == sorted(cosines, reverse=True)


def test_progress_adds_up_and_given_pool_vectors_are_not_embedded_again() -> None:
    rows = Rows()
    pool = rows.cluster("pool", {"a": 30, "b": 30, "c": 30})
    test = rows.cluster("test", {"a": 5, "b": 5, "c": 5})
    done: list[int] = []
    embedder = rows.embedder()
    run_data_checks(pool, test, list(LABELS), embedder, progress=done.append)
    assert sum(done) == check_steps(len(pool), len(test))
    done.clear()
    embedder = rows.embedder()
    vectors = embedder.embed([ex.text for ex in pool])
    embedder.embedded.clear()
    checks = run_data_checks(pool, test, list(LABELS), embedder, progress=done.append, pool_vectors=vectors)
    assert embedder.embedded == [ex.text for ex in test]
    assert sum(done) == check_steps(len(pool), len(test), pool_embedded=True)
    assert checks.rows_checked == {"pool": 90, "test": 15}


def test_to_dict_cuts_lists_but_keeps_counts_and_the_jsonl_has_every_issue(tmp_path: Path) -> None:
    rows = Rows()
    pool = rows.cluster("pool", {"a": 60, "b": 60, "c": 60})
    for i in (1, 2, 3, 61, 62):
        pool = relabel(pool, i, "c")
        prototype(rows, pool[i].text, "a" if i < 60 else "b")
    test = rows.cluster("test", {"a": 10, "b": 10, "c": 10})
    checks = check(pool, test, rows)
    assert checks.label_issue_counts["pool"] == 5
    cut = json.loads(json.dumps(checks.to_dict(top=2)))
    assert len(cut["label_issues"]) == 2 and cut["label_issue_counts"] == {"pool": 5, "test": 0}
    assert set(cut) >= {
        "label_issues",
        "label_issue_counts",
        "rows_checked",
        "near_duplicate_conflicts",
        "near_duplicate_leaks",
        "small_classes",
        "thin_classes",
        "warnings",
    }
    write_label_issues(tmp_path / "label_issues.jsonl", checks)
    lines = [json.loads(line) for line in (tmp_path / "label_issues.jsonl").read_text().splitlines()]
    assert lines == checks.label_issues and len(lines) == 5


def test_report_tables_and_summary_show_what_the_checks_found() -> None:
    rows = Rows()
    pool = relabel(rows.cluster("pool", {"a": 60, "b": 60, "c": 200}), 7, "b")
    prototype(rows, "pool a 7", "a")
    twin = near_copy(rows, "pool c 0", "pool twin of c 0 " + "long " * 30, 0.97)
    pool.append(Example(twin, "a", "pool.jsonl", 241))
    test = rows.cluster("test", {"a": 10, "b": 10, "c": 10})
    pool.append(Example(near_copy(rows, "test a 1", "pool twin of test a 1", 0.98), "a", "pool.jsonl", 242))
    saved = json.loads(json.dumps(check(pool, test, rows).to_dict()))
    headers, issue_rows = label_issue_table(saved, top=1)
    assert headers == ["split", "line", "text", "label", "suggested", "quality"]
    assert issue_rows[0][:5] == ["pool", "8", "pool a 7", "b", "a"] and len(issue_rows) == 1
    headers, pair_rows = near_duplicate_table(saved)
    assert [row[0] for row in pair_rows] == ["different labels (pool/pool)", "test leak (pool/test)"]
    assert pair_rows[0][2] == "pool c 0 (line 121, c)" and pair_rows[0][3].endswith("… (line 241, a)")
    assert len(pair_rows[0][3]) < 100 and pair_rows[1][1] == "0.980"
    lines = check_summary_lines(saved)
    # The "a"-labelled twin of a "c" row is flagged too.
    assert any(
        "pool 2 of 322 (0.6%); test 0 of 30" in line and "label_issues.jsonl" in line for line in lines
    )
    assert any("1 pool pairs with different labels; 1 test rows" in line for line in lines)
    assert any(
        line.startswith("Class sizes: 0 labels under 50 pool examples, 2 with 50-199") for line in lines
    )


def test_report_functions_accept_a_run_without_checks() -> None:
    assert label_issue_table({}) == (["split", "line", "text", "label", "suggested", "quality"], [])
    assert near_duplicate_table({})[1] == [] and check_summary_lines({}) == []
