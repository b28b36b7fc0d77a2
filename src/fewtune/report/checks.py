"""The data checks (``results.json``'s ``dataset.checks``) as report tables and summary lines.

Pure functions over the saved dict, so a run folder from before the checks existed (no ``checks``) gives
empty tables and no lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fewtune.report.tables import Table

# Characters of a row's text shown in a table cell; the full text is in label_issues.jsonl.
TEXT_WIDTH = 80


def _short(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _row_cell(row: Mapping[str, Any]) -> str:
    return f"{_short(row.get('text', ''))} (line {row.get('line', '-')}, {row.get('label', '-')})"


def _share(count: int, total: int) -> str:
    return f"{count:,} of {total:,} ({count / total:.1%})" if total else f"{count:,}"


def label_issue_table(checks: Mapping[str, Any], top: int = 20) -> Table:
    """The ``top`` rows cleanlab finds least likely to carry their label, worst first."""
    headers = ["split", "line", "text", "label", "suggested", "quality"]
    rows = [
        [
            str(issue.get("split", "-")),
            str(issue.get("line", "-")),
            _short(issue.get("text", "")),
            str(issue.get("label", "-")),
            str(issue.get("suggested", "-")),
            f"{issue['quality']:.3f}" if issue.get("quality") is not None else "-",
        ]
        for issue in (checks.get("label_issues") or [])[:top]
    ]
    return headers, rows


def near_duplicate_table(checks: Mapping[str, Any]) -> Table:
    """Pool pairs with different labels, then pool rows that nearly repeat a test row, most similar first."""
    headers = ["kind", "cosine", "pool row (line, label)", "other row (line, label)"]
    rows = [
        ["different labels (pool/pool)", f"{pair['cosine']:.3f}", _row_cell(pair["a"]), _row_cell(pair["b"])]
        for pair in checks.get("near_duplicate_conflicts") or []
    ]
    rows += [
        ["test leak (pool/test)", f"{pair['cosine']:.3f}", _row_cell(pair["pool"]), _row_cell(pair["test"])]
        for pair in checks.get("near_duplicate_leaks") or []
    ]
    return headers, rows


def check_summary_lines(checks: Mapping[str, Any]) -> list[str]:
    """One sentence per check, with figures, including the checks that found nothing."""
    if not checks:
        return []
    settings = checks.get("settings") or {}
    counts = checks.get("label_issue_counts") or {}
    checked = checks.get("rows_checked") or {}
    lines = []
    if settings.get("label_check_skipped"):
        lines.append(f"Label check skipped: {settings['label_check_skipped']}.")
    if checked.get("pool") or checked.get("test"):
        agreement = settings.get("classifier_agreement") or {}
        found = "; ".join(
            f"{split} {_share(counts.get(split, 0), checked[split])}"
            for split in ("pool", "test")
            if checked.get(split)
        )
        sample = " on a seeded sample of the pool" if settings.get("pool_sample") else ""
        basis = f" (it agrees with {agreement['pool']:.1%} of pool labels)" if "pool" in agreement else ""
        lines.append(
            "Possibly mislabelled rows, by cleanlab over an embedding classifier's out-of-sample "
            f"probabilities{sample}{basis}: {found}; all of them, worst first, in label_issues.jsonl."
        )
    near = checks.get("near_duplicate_counts") or {}
    threshold = settings.get("near_duplicate_cosine")
    if near:
        lines.append(
            f"Near duplicates (cosine ≥ {threshold}): {near.get('conflicts', 0):,} pool pairs with different "
            f"labels; {near.get('leaked_test_rows', 0):,} test rows with a pool near-duplicate "
            f"({near.get('leaks', 0):,} pairs)."
        )
    small, thin = checks.get("small_classes") or {}, checks.get("thin_classes") or {}
    minimum, good = settings.get("min_examples_per_class", 50), settings.get("good_examples_per_class", 200)
    if small or thin:
        lines.append(
            f"Class sizes: {len(small)} labels under {minimum} pool examples, {len(thin)} with {minimum}-"
            f"{good - 1} (guides: {minimum} minimum, {good}+ better)."
        )
    else:
        lines.append(f"Class sizes: every label has {good}+ pool examples.")
    return lines
