"""What the data checks found, as typed records: :class:`DataChecks` and the rows, pairs and settings it
holds (``results.json``'s ``dataset.checks``, and ``label_issues.jsonl``'s lines)."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field

from typing_extensions import TypedDict


class LabelIssue(TypedDict):
    """A row the label check flags as possibly mislabelled (a line of label_issues.jsonl)."""

    split: str
    """pool or test."""
    row: int
    """Index in that split after duplicates and leaks are removed."""
    line: int
    """The row's line in its source file."""
    path: str
    """The row's source file."""
    text: str
    label: str
    """The label given."""
    suggested: str
    """The label the classifier prefers."""
    quality: float
    """cleanlab's label quality score (the out-of-sample probability of the given label); lower is worse."""


class CheckedRow(TypedDict):
    """One side of a near-duplicate pair."""

    text: str
    label: str
    line: int


class ConflictPair(TypedDict):
    """Two pool rows that nearly repeat each other with different labels."""

    a: CheckedRow
    b: CheckedRow
    cosine: float


class LeakPair(TypedDict):
    """A pool row that nearly repeats a test row."""

    pool: CheckedRow
    test: CheckedRow
    cosine: float


class CheckSettings(TypedDict, total=False):
    """How the checks ran: threshold, folds, pool sample, classifier, embedding model, skipped checks."""

    embedding_model: str
    classifier: str
    near_duplicate_cosine: float
    min_examples_per_class: int
    good_examples_per_class: int
    pool_sample: int
    """Pool rows the label check cross-validated, when it was a sample."""
    label_check_skipped: str
    """Why the label check did not run."""
    label_check_folds: int
    classifier_agreement: dict[str, float]
    """``{pool, test}``: share of rows whose given label is the classifier's top label."""
    test_rows_not_judged: int
    """Test rows whose labels the pool lacks."""


class ChecksRecord(TypedDict):
    """:class:`DataChecks` as JSON (``dataset.checks``), its three lists cut to their first entries."""

    label_issues: list[LabelIssue]
    label_issue_counts: dict[str, int]
    rows_checked: dict[str, int]
    near_duplicate_conflicts: list[ConflictPair]
    near_duplicate_leaks: list[LeakPair]
    small_classes: dict[str, int]
    thin_classes: dict[str, int]
    warnings: list[str]
    near_duplicate_counts: dict[str, int]
    settings: CheckSettings


@dataclass
class DataChecks:
    """What the checks found; :meth:`to_dict` is ``results.json``'s ``dataset.checks``."""

    label_issues: list[LabelIssue]  # every flagged row, worst (lowest quality) first
    label_issue_counts: dict[str, int]
    rows_checked: dict[str, int]
    near_duplicate_conflicts: list[ConflictPair]
    near_duplicate_leaks: list[LeakPair]
    small_classes: dict[str, int]
    thin_classes: dict[str, int]
    warnings: list[str]
    near_duplicate_counts: dict[str, int] = field(default_factory=dict)
    """``conflicts`` and ``leaks`` (pairs, complete even when the lists are cut), ``leaked_test_rows``."""
    settings: CheckSettings = field(default_factory=lambda: CheckSettings())
    """How the checks ran: threshold, folds, pool sample, classifier, embedding model, skipped checks."""

    def to_dict(self, top: int = 20) -> ChecksRecord:
        """JSON-ready (a copy); the three lists are cut to their first ``top`` entries, counts stay
        complete."""
        return deepcopy(
            ChecksRecord(
                label_issues=self.label_issues[:top],
                label_issue_counts=self.label_issue_counts,
                rows_checked=self.rows_checked,
                near_duplicate_conflicts=self.near_duplicate_conflicts[:top],
                near_duplicate_leaks=self.near_duplicate_leaks[:top],
                small_classes=self.small_classes,
                thin_classes=self.thin_classes,
                warnings=self.warnings,
                near_duplicate_counts=self.near_duplicate_counts,
                settings=self.settings,
            )
        )
