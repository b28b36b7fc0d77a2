"""Data checks that can change the verdict: possibly mislabelled rows, near duplicates, classes too small.

- **Label issues** (Northcutt et al. 2021, "Confident Learning", the ``cleanlab`` package), from out-of-sample
  probabilities of the project's no-LLM classifier (MiniLM embeddings + logistic regression, as in
  :mod:`fewtune.strategies.reference`): stratified K-fold over the pool (a sample when it is large), and a
  classifier fit on the whole pool for the test rows. Mislabelled test rows cap every method's accuracy;
  mislabelled pool rows become wrong demos and training targets.
- **Near duplicates** (cosine of the same embeddings): pool pairs with different labels teach contradictory
  answers; a pool text that nearly repeats a test text makes test scores optimistic (exact repeats were
  already removed by :func:`fewtune.data.split.prepare_data`).
- **Class sizes**: the practitioners' guides ask for 50 examples per label at least, 200+ for fine-tuning.

Everything is seeded and deterministic; heavy imports (scikit-learn, cleanlab) happen on first use.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.backends.base import ProgressFn
from fewtune.data.check_record import (
    CheckedRow,
    CheckSettings,
    ConflictPair,
    DataChecks,
    LabelIssue,
    LeakPair,
)
from fewtune.data.load import Example
from fewtune.data.near_duplicates import NEAR_DUPLICATE_COSINE, near_pairs
from fewtune.data.split import stratified_sample
from fewtune.embeddings import Embedder

# The no-LLM reference's logistic regression, which the label-issue check fits too. Inverse L2 strength: on
# unit-length MiniLM vectors scikit-learn's default C=1 underfits small training sets (trec, 300 test rows:
# n=50 0.57 at C=1 vs 0.66 at C=10; n=400 0.79 at both; sst2 within a point), and C=10 was never worse by
# more than 1.5 points there.
REFERENCE_C = 10.0
REFERENCE_MAX_ITER = 2000

# The practitioners' guides: "at least 50 examples per class, 200+ is better" for fine-tuning a classifier.
MIN_EXAMPLES_PER_CLASS = 50
GOOD_EXAMPLES_PER_CLASS = 200
# Out-of-sample folds for the pool's label check (fewer when the smallest class has fewer rows).
LABEL_CHECK_FOLDS = 5
# Pool rows the label check cross-validates at most (a seeded stratified sample above it). Embedding is most
# of the checks' cost (2 idle CPU cores: sst2's 8,730 pool and test texts 43 s, banking77's 13,072 40 s) and
# covers the whole pool, since a sample hides near duplicates (banking77: 940 test rows have a pool twin; a
# 4,000-row sample finds 565, a 2,000-row one 331). The label check (six logistic regressions) is what a
# sample bounds: with 2,000 rows, 2 s for sst2 and 8 s for banking77's 77 labels.
MAX_LABEL_CHECK_ROWS = 2000
# Labels listed by name in a class-size warning before "and N more".
LABELS_LISTED = 6


@dataclass(frozen=True)
class _Split:
    """Rows of one split under check, their positions in that split and their unit vectors."""

    name: str
    rows: list[Example]
    positions: list[int]
    vectors: np.ndarray

    def subset(self, keep: list[int]) -> _Split:
        return _Split(
            self.name, [self.rows[k] for k in keep], [self.positions[k] for k in keep], self.vectors[keep]
        )


def write_label_issues(path: Path, checks: DataChecks) -> None:
    """Every flagged row, worst first, one JSON object a line (an empty file when none)."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for issue in checks.label_issues:
            handle.write(json.dumps(issue, ensure_ascii=False) + "\n")


def pool_sample(pool: Sequence[Example], seed: int = 0) -> list[int]:
    """Positions of the pool rows the label check cross-validates: all, or a seeded stratified sample."""
    if len(pool) <= MAX_LABEL_CHECK_ROWS:
        return list(range(len(pool)))
    position = {id(ex): i for i, ex in enumerate(pool)}
    return [position[id(ex)] for ex in stratified_sample(pool, MAX_LABEL_CHECK_ROWS, seed)[0]]


def check_steps(pool_size: int, test_size: int, pool_embedded: bool = False) -> int:
    """The units :func:`run_data_checks` reports to ``progress``: rows embedded, label-checked, compared."""
    embedded = test_size if pool_embedded else pool_size + test_size
    return embedded + min(pool_size, MAX_LABEL_CHECK_ROWS) + test_size + pool_size


def run_data_checks(
    pool: Sequence[Example],
    test: Sequence[Example],
    labels: Sequence[str],
    embedder: Embedder,
    seed: int = 0,
    progress: ProgressFn | None = None,
    *,
    pool_vectors: np.ndarray | None = None,
) -> DataChecks:
    """Embed the pool and the test rows once, then run every check.

    ``pool_vectors`` are the pool's embeddings when the caller has them already (nearest-neighbour demos).
    ``progress`` gets :func:`check_steps` units.
    """
    advance = progress or (lambda n: None)
    sample = pool_sample(pool, seed)
    texts = [ex.text for ex in pool] if pool_vectors is None else []
    vectors = _unit(embedder.embed(texts + [ex.text for ex in test], progress=advance))
    pool_vectors = vectors[: len(texts)] if pool_vectors is None else _unit(pool_vectors)
    pool_part = _Split("pool", list(pool), list(range(len(pool))), pool_vectors)
    test_part = _Split("test", list(test), list(range(len(test))), vectors[len(texts) :])
    settings = CheckSettings(
        embedding_model=embedder.name,
        classifier=repr(_classifier(seed)),
        near_duplicate_cosine=NEAR_DUPLICATE_COSINE,
        min_examples_per_class=MIN_EXAMPLES_PER_CLASS,
        good_examples_per_class=GOOD_EXAMPLES_PER_CLASS,
    )
    if len(sample) < len(pool):
        settings["pool_sample"] = len(sample)
    checked = pool_part.subset(sample)
    issues, rows_checked = _label_issues(checked, pool_part, test_part, list(labels), seed, advance, settings)
    conflicts, leaks, near = _near_duplicates(pool_part, test_part, advance)
    sizes = sorted(Counter(ex.label for ex in pool).items())
    checks = DataChecks(
        label_issues=issues,
        label_issue_counts={split: sum(i["split"] == split for i in issues) for split in ("pool", "test")},
        rows_checked=rows_checked,
        near_duplicate_conflicts=conflicts,
        near_duplicate_leaks=leaks,
        near_duplicate_counts=near,
        small_classes={label: n for label, n in sizes if n < MIN_EXAMPLES_PER_CLASS},
        thin_classes={
            label: n for label, n in sizes if MIN_EXAMPLES_PER_CLASS <= n < GOOD_EXAMPLES_PER_CLASS
        },
        warnings=[],
        settings=settings,
    )
    checks.warnings = _warnings(checks, len(pool), len(test), seed)
    return checks


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def _classifier(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=REFERENCE_C, max_iter=REFERENCE_MAX_ITER, random_state=seed)


def _probabilities(classifier: Any, vectors: np.ndarray, columns: dict[str, int], width: int) -> np.ndarray:
    """``predict_proba`` with its columns placed at the run's label positions (zeros for unseen labels)."""
    out = np.zeros((len(vectors), width))
    probs = classifier.predict_proba(vectors)
    for i, label in enumerate(classifier.classes_):
        out[:, columns[str(label)]] = probs[:, i]
    return out


def _label_issues(
    checked: _Split,
    pool: _Split,
    test: _Split,
    labels: list[str],
    seed: int,
    advance: ProgressFn,
    settings: CheckSettings,
) -> tuple[list[LabelIssue], dict[str, int]]:
    """Flag rows whose given label cleanlab finds unlikely; returns (issues worst first, rows checked).

    ``checked`` (the pool or its sample) gets out-of-sample probabilities; ``test`` those of a classifier
    fit on the whole ``pool``."""
    columns = {label: j for j, label in enumerate(labels)}
    pool_labels = sorted({ex.label for ex in pool.rows})
    rows_checked = {"pool": 0, "test": 0}
    if len(pool_labels) < 2:
        settings["label_check_skipped"] = f"the pool has one label ('{pool_labels[0]}')"
        advance(len(checked.rows) + len(test.rows))
        return [], rows_checked
    issues: list[LabelIssue] = []
    agreement: dict[str, float] = {}
    given = [ex.label for ex in checked.rows]
    smallest = min(Counter(given).values())
    if smallest < 2:
        settings["label_check_skipped"] = "a pool label has one row, too few for out-of-sample folds"
        advance(len(given))
    else:
        from sklearn.model_selection import StratifiedKFold

        folds = min(LABEL_CHECK_FOLDS, smallest)
        settings["label_check_folds"] = folds
        probs = np.zeros((len(given), len(labels)))
        # sklearn's cross_val_predict(method="predict_proba"), written out for a progress step per fold.
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for train_idx, held_idx in splitter.split(checked.vectors, given):
            classifier = _classifier(seed).fit(checked.vectors[train_idx], [given[i] for i in train_idx])
            probs[held_idx] = _probabilities(classifier, checked.vectors[held_idx], columns, len(labels))
            advance(len(held_idx))
        issues += _flag(checked, probs, labels, sorted(set(given)))
        rows_checked["pool"] = len(given)
        agreement["pool"] = _agreement(probs, given, labels)
    # Test: labels the pool lacks cannot be judged.
    judged = test.subset([k for k, ex in enumerate(test.rows) if ex.label in pool_labels])
    if judged.rows:
        classifier = _classifier(seed).fit(pool.vectors, [ex.label for ex in pool.rows])
        probs = _probabilities(classifier, judged.vectors, columns, len(labels))
        issues += _flag(judged, probs, labels, pool_labels)
        rows_checked["test"] = len(judged.rows)
        agreement["test"] = _agreement(probs, [ex.label for ex in judged.rows], labels)
    settings["classifier_agreement"] = agreement
    if len(judged.rows) < len(test.rows):
        settings["test_rows_not_judged"] = len(test.rows) - len(judged.rows)  # labels not in the pool
    advance(len(test.rows))
    issues.sort(key=lambda issue: (issue["quality"], issue["split"] != "test", issue["row"]))
    return issues, rows_checked


def _agreement(probs: np.ndarray, given: Sequence[str], labels: list[str]) -> float:
    """Share of rows whose given label is the classifier's top label (its accuracy against these labels)."""
    top = probs.argmax(axis=1)
    return round(float(np.mean([labels[k] == label for k, label in zip(top, given, strict=True)])), 4)


def _flag(split: _Split, probs: np.ndarray, labels: list[str], known: list[str]) -> list[LabelIssue]:
    """cleanlab over the ``known`` labels (the classifier's; it has no others); one dict per flagged row."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rows = split.rows
    given = np.array([known.index(ex.label) for ex in rows])
    known_probs = probs[:, [labels.index(label) for label in known]]
    known_probs /= np.clip(known_probs.sum(axis=1, keepdims=True), 1e-12, None)
    with warnings.catch_warnings():
        # cleanlab warns about every class with few rows; the class-size check reports those instead.
        warnings.simplefilter("ignore")
        # One process: cleanlab's worker pool would inherit the CLI's SIGTERM handler and print tracebacks.
        flagged = find_label_issues(given, known_probs, n_jobs=1)
        quality = get_label_quality_scores(given, known_probs)
    return [
        LabelIssue(
            split=split.name,
            row=split.positions[i],
            line=rows[i].line,
            path=rows[i].path,
            text=rows[i].text,
            label=rows[i].label,
            suggested=known[int(known_probs[i].argmax())],
            quality=round(float(quality[i]), 4),
        )
        for i in np.flatnonzero(flagged).tolist()
    ]


def _near_duplicates(
    pool: _Split, test: _Split, advance: ProgressFn
) -> tuple[list[ConflictPair], list[LeakPair], dict[str, int]]:
    """Pool pairs with different labels and pool/test pairs at or above the threshold; and their counts."""
    conflicts, conflict_count, _ = near_pairs(pool.vectors, pool.vectors, [ex.label for ex in pool.rows])
    advance(len(pool.rows) // 2)
    leaks, leak_count, leaked_rows = near_pairs(pool.vectors, test.vectors)
    advance(len(pool.rows) - len(pool.rows) // 2)
    counts = {"conflicts": conflict_count, "leaks": leak_count, "leaked_test_rows": leaked_rows}
    return (
        [ConflictPair(a=_row(pool.rows[i]), b=_row(pool.rows[j]), cosine=cos) for cos, i, j in conflicts],
        [LeakPair(pool=_row(pool.rows[i]), test=_row(test.rows[j]), cosine=cos) for cos, i, j in leaks],
        counts,
    )


def _row(ex: Example) -> CheckedRow:
    return CheckedRow(text=ex.text, label=ex.label, line=ex.line)


def _share(count: int, total: int, split: str) -> str:
    return f"{count:,} of {total:,} {split} rows ({count / total:.1%})"


def _listed(classes: dict[str, int]) -> str:
    smallest = sorted(classes.items(), key=lambda item: (item[1], item[0]))
    shown = ", ".join(f"{label}: {n}" for label, n in smallest[:LABELS_LISTED])
    more = len(smallest) - LABELS_LISTED
    return shown + (f", and {more} more" if more > 0 else "")


def _labels(count: int) -> str:
    return f"{count} label has" if count == 1 else f"{count} labels have"


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _warnings(checks: DataChecks, pool_size: int, test_size: int, seed: int) -> list[str]:
    out = []
    sample = checks.settings.get("pool_sample")
    if sample:
        out.append(
            f"label check cross-validated a seeded stratified sample of {sample:,} of the {pool_size:,} pool "
            f"rows (seed {seed}) to stay fast; mislabelled rows among the others are not listed"
        )
    if "label_check_skipped" in checks.settings:
        out.append(f"label check skipped: {checks.settings['label_check_skipped']}")
    counts, checked = checks.label_issue_counts, checks.rows_checked
    if counts["pool"] or counts["test"]:
        parts = [_share(counts[split], checked[split], split) for split in ("pool", "test") if checked[split]]
        agreement = checks.settings.get("classifier_agreement", {})
        basis = (
            f"its embedding classifier agrees with {agreement['pool']:.1%} of the pool's labels "
            "out-of-sample, so some flags are its own mistakes"
            if "pool" in agreement
            else "from an embedding classifier fit on the pool"
        )
        out.append(
            f"cleanlab flags {' and '.join(parts)} as possibly mislabelled ({basis}); mislabelled test rows "
            "cap every method's accuracy: review the worst first in label_issues.jsonl"
        )
    near = checks.near_duplicate_counts
    if near["conflicts"]:
        first = checks.near_duplicate_conflicts[0]
        out.append(
            f"{near['conflicts']:,} pairs of near-duplicate pool texts (cosine ≥ {NEAR_DUPLICATE_COSINE}) "
            f"have different labels, e.g. line {first['a']['line']} '{_short(first['a']['text'])}' "
            f"({first['a']['label']}) vs line {first['b']['line']} ({first['b']['label']})"
        )
    if near["leaks"]:
        out.append(
            f"{near['leaked_test_rows']:,} of {test_size:,} test rows "
            f"({near['leaked_test_rows'] / test_size:.1%}) have a near-duplicate in the pool "
            f"(cosine ≥ {NEAR_DUPLICATE_COSINE}; {near['leaks']:,} pairs); test scores may be optimistic"
        )
    if checks.small_classes:
        out.append(
            f"{_labels(len(checks.small_classes))} fewer than {MIN_EXAMPLES_PER_CLASS} pool examples "
            f"({_listed(checks.small_classes)}); guides: {MIN_EXAMPLES_PER_CLASS} minimum, "
            f"{GOOD_EXAMPLES_PER_CLASS}+ better"
        )
    if checks.thin_classes:
        out.append(
            f"{_labels(len(checks.thin_classes))} {MIN_EXAMPLES_PER_CLASS}-{GOOD_EXAMPLES_PER_CLASS - 1} "
            f"pool examples ({_listed(checks.thin_classes)}); guides: {GOOD_EXAMPLES_PER_CLASS}+ per label "
            "is better for fine-tuning"
        )
    return out
