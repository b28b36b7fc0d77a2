"""Clean the pool, guard against test leakage, and split or sample test rows, all seeded."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fewtune.data.load import Example, load_examples
from fewtune.errors import DataError

# Without --test, this share of the pool is held out (stratified); 20% is the common default.
DEFAULT_TEST_FRACTION = 0.2
# A label needs this many rows so that a split leaves at least one in each side.
MIN_ROWS_PER_LABEL_TO_SPLIT = 2


@dataclass
class DataReport:
    """What was done to the data, for results.json's ``dataset`` block."""

    pool_size: int
    test_size: int
    label_counts: dict[str, dict[str, int]]
    duplicates_removed: int
    conflicting_labels: int
    leaks_removed: int
    test_source: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class PreparedData:
    pool: list[Example]
    test: list[Example]
    labels: list[str]
    report: DataReport


def dedupe(examples: Sequence[Example]) -> tuple[list[Example], int, int]:
    """Drop exact duplicate texts, keeping the first. Returns (kept, duplicates, conflicting labels)."""
    seen: dict[str, str] = {}
    kept, conflicts = [], 0
    for ex in examples:
        if ex.text in seen:
            conflicts += seen[ex.text] != ex.label
            continue
        seen[ex.text] = ex.label
        kept.append(ex)
    return kept, len(examples) - len(kept), conflicts


def stratified_sample(examples: Sequence[Example], n: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded sample of ``n`` examples keeping label proportions (largest remainder); returns (chosen, rest).

    Every label present gets at least one row when ``n`` allows it.
    """
    if n >= len(examples):
        return list(examples), []
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    labels = sorted(by_label)
    for label in labels:
        rng.shuffle(by_label[label])
    quota = {label: n * len(by_label[label]) / len(examples) for label in labels}
    take = {label: int(quota[label]) for label in labels}
    if n >= len(labels):
        for label in labels:
            take[label] = max(take[label], 1)
    remainder = sorted(labels, key=lambda lab: (take[lab] - quota[lab], lab))
    while sum(take.values()) < n:
        for label in remainder:
            if sum(take.values()) < n and take[label] < len(by_label[label]):
                take[label] += 1
    while sum(take.values()) > n:
        label = max(labels, key=lambda lab: (take[lab] - quota[lab], lab))
        take[label] -= 1
    chosen = sorted(i for label in labels for i in by_label[label][: take[label]])
    chosen_set = set(chosen)
    return [examples[i] for i in chosen], [ex for i, ex in enumerate(examples) if i not in chosen_set]


def _check_splittable(examples: Sequence[Example], path: str) -> None:
    counts = Counter(ex.label for ex in examples)
    for label, count in sorted(counts.items()):
        if count < MIN_ROWS_PER_LABEL_TO_SPLIT:
            row = next(ex for ex in examples if ex.label == label)
            raise DataError(
                path,
                row.line,
                f"label '{label}' has only {count} row; a held-out split needs at least "
                f"{MIN_ROWS_PER_LABEL_TO_SPLIT} per label (add rows or pass --test)",
            )


def _check_two_labels(pool: Sequence[Example], test: Sequence[Example], data: str | Path) -> None:
    """One label in pool and test together makes every method trivially right; refuse it up front."""
    labels = {ex.label for ex in [*pool, *test]}
    if len(labels) == 1:
        where = f"the data and {test[0].path}" if test else "the data"
        raise DataError(
            data,
            pool[0].line,
            f"only one label ('{labels.pop()}') in {where}; a classifier needs at least two",
        )


def prepare_data(
    data: str | Path,
    test: str | Path | None = None,
    *,
    input_field: str = "text",
    label_field: str = "label",
    max_test: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> PreparedData:
    """Load the pool (and test file), drop duplicates and leaks, split or sample the test rows."""
    pool_raw = load_examples(data, input_field, label_field)
    test_raw = load_examples(test, input_field, label_field) if test is not None else []
    _check_two_labels(pool_raw, test_raw, data)
    pool, duplicates, conflicts = dedupe(pool_raw)
    warnings = []
    if test is not None:
        test_rows, test_dupes, test_conflicts = dedupe(test_raw)
        duplicates += test_dupes
        conflicts += test_conflicts
        test_source = str(test)
    else:
        _check_splittable(pool, str(data))
        n_test = max(len(set(ex.label for ex in pool)), round(len(pool) * test_fraction))
        test_rows, pool = stratified_sample(pool, n_test, seed)
        test_source = f"stratified {test_fraction:.0%} split of {data} (seed {seed})"
    if max_test is not None and max_test < len(test_rows):
        test_rows, _ = stratified_sample(test_rows, max_test, seed)
        test_source += f", stratified sample of {max_test} (seed {seed})"
    # Leakage guard: a pool text that is also a test text would let demos or training see the answer.
    test_texts = {ex.text for ex in test_rows}
    leaks = [ex for ex in pool if ex.text in test_texts]
    pool = [ex for ex in pool if ex.text not in test_texts]
    if not pool:
        raise DataError(data, None, "no examples left in the pool after removing duplicates and test leaks")
    pool_labels = {ex.label for ex in pool}
    unseen = sorted({ex.label for ex in test_rows} - pool_labels)
    if unseen:
        warnings.append(
            f"test labels never seen in the pool (no demos or training rows): {', '.join(unseen)}"
        )
    if conflicts:
        warnings.append(f"{conflicts} duplicate texts had a different label; the first label was kept")
    labels = sorted(pool_labels | {ex.label for ex in test_rows})
    report = DataReport(
        pool_size=len(pool),
        test_size=len(test_rows),
        label_counts={
            "pool": dict(sorted(Counter(ex.label for ex in pool).items())),
            "test": dict(sorted(Counter(ex.label for ex in test_rows).items())),
        },
        duplicates_removed=duplicates,
        conflicting_labels=conflicts,
        leaks_removed=len(leaks),
        test_source=test_source,
        warnings=warnings,
    )
    return PreparedData(pool=pool, test=test_rows, labels=labels, report=report)
