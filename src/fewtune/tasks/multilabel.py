"""Multi-label classification: a row's target is a non-empty list of labels (``["billing", "refund"]``).

Rendering. The output text is the row's labels joined by ", " in canonical order, which is alphabetical
(Python's ``sorted``). Alphabetical rather than by pool frequency: it does not depend on which rows the pool
sampled (an adapter trained on one pool reads the same targets another pool renders), it has no ties to
break, it is known before ``fit`` (``read_target`` renders the final text; ``rerender`` changes nothing), and
it is the order a reader scans the prompt's label list in. A label may not hold a comma, semicolon or line
break, since those separate labels in the output.

Scoring: generate and parse. The model writes a comma-separated label list on one line and ``parse`` reads
it back (case-, space- and underscore-insensitive). One short generation per row, instead of scoring each of
the L labels by log-likelihood, which costs L forward passes (or a token tree) per row and needs a per-label
decision threshold fit on held-out rows that a few-shot run does not have; the generated list also says how
many labels apply, which a ranking of label likelihoods does not.

Metrics (definitions as in scikit-learn, and cross-checked against it in the tests): from per-row true
positives (labels in both the output and the target), false positives (output only) and false negatives
(target only), summed per label and over labels:
- micro-F1 = 2TP / (2TP + FP + FN) over every (row, label) decision: the primary metric by default. Macro-F1
  is dominated by rare labels (GoEmotions' grief, pride, relief have a handful of test rows), so its interval
  is wide and it moves with one row; micro-F1 weights every tag decision equally, which is what a team
  tagging tickets pays for. ``--metric macro-f1`` or ``example-f1`` decide instead.
- macro-F1: ``f1_score(average="macro", labels=<labels present in the test gold>, zero_division=0)``: the mean
  per-label F1 over the labels the test rows hold (a label that is only ever predicted, never gold, is not
  averaged in; its false positives still lower micro-F1).
- example-F1 (``average="samples"``): the mean per-row 2|P∩G| / (|P| + |G|), 1 when both are empty.
- micro precision and recall (0 where undefined), exact match (subset accuracy), hamming loss
  (mislabelled (row, label) pairs / (rows x labels); lower is better), parse rate (a known label found) and
  valid rate (every item a known label as written, none repeated).
An unparseable output predicts no labels. Each metric carries a seeded bootstrap 95% interval over rows.

Strata: a row's rarest label (fewest rows among those read so far; ties by name). Stratifying by the whole
label set gives hundreds of one-row strata on skewed data; by the rarest label, the rare labels are spread
between pool and test in proportion, which is what iterative stratification aims for (Sechidis et al. 2011,
"On the stratification of multi-label data"). Splits are drawn before ``fit``, so ``read_target`` tallies
the labels it reads and ``fit`` replaces the tally with the pool's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.decide.metric import PrimaryMetric
from fewtune.errors import ConfigError, DataError
from fewtune.tasks.base import ClassHits, Metric, Parsed, Task, TaskExample, add_hit, bootstrap_ci
from fewtune.tasks.multilabel_text import SEPARATOR, SEPARATORS, STRIP_CHARS, Embed, normalise, render

__all__ = ["MULTI_LABEL", "MultiLabelTask", "is_multi_label_value", "normalise", "render"]

if TYPE_CHECKING:
    from fewtune.config import RunConfig
    from fewtune.tasks.multilabel_reference import MultiLabelReference

MULTI_LABEL = "multi-label"
DEFAULT_INSTRUCTION = "Tag the input with every label that applies."
MICRO_F1, MACRO_F1, EXAMPLE_F1 = "micro-f1", "macro-f1", "example-f1"
METRIC_CHOICES = (MICRO_F1, MACRO_F1, EXAMPLE_F1)
# primary_stats layout: four row totals, then (tp, fp, fn) for each label of the row universe.
TOTALS = 4
# Degenerate outputs: the same label set on at least this share of the parsed rows (while the test rows'
# own most common set holds less), or a known label on fewer than this share of rows.
SAME_SET_SHARE = 0.95
MIN_PARSE_RATE = 0.5
# A label with fewer pool rows than this is too rare to learn or to measure (a data_summary warning).
RARE_LABEL_ROWS = 10


def is_multi_label_value(value: Any) -> bool:
    """Whether a target value is a list of label texts (what task inference reads as multi-label)."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _f1(tp: float, fp: float, fn: float) -> float:
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def _share(tp: float, wrong: float) -> float:
    """Precision (wrong = false positives) or recall (false negatives); 0 where undefined."""
    return float(tp / (tp + wrong)) if tp + wrong else 0.0


def _micro_f1(stats: np.ndarray) -> float:
    if not len(stats):
        return float("nan")
    tp, fp, fn = stats[:, :3].sum(axis=0)
    return _f1(tp, fp, fn) if 2 * tp + fp + fn else 1.0


def _macro_f1(stats: np.ndarray) -> float:
    per_label = stats[:, TOTALS:].sum(axis=0).reshape(-1, 3)
    present = [row for row in per_label if row[0] + row[2] > 0]  # gold support: tp + fn
    return float(np.mean([_f1(*row) for row in present])) if present else float("nan")


def _example_f1(stats: np.ndarray) -> float:
    return float(stats[:, 3].mean()) if len(stats) else float("nan")


PRIMARY_METRICS = {
    MICRO_F1: PrimaryMetric(MICRO_F1, "micro-F1", _micro_f1, per_row_correct=False),
    MACRO_F1: PrimaryMetric(MACRO_F1, "macro-F1", _macro_f1, per_row_correct=False),
    EXAMPLE_F1: PrimaryMetric(EXAMPLE_F1, "example-F1", _example_f1, per_row_correct=False),
}


def read_labels(value: Any, path: Path, line: int, field: str) -> tuple[str, ...]:
    """A target value as labels: a non-empty list of non-empty texts, stripped, repeats dropped."""
    if not isinstance(value, list):
        raise DataError(
            path,
            line,
            f"field '{field}' must be a list of labels for multi-label, got {type(value).__name__}",
        )
    if not value:
        raise DataError(path, line, f"field '{field}' is an empty list; every row needs at least one label")
    labels: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(path, line, f"field '{field}': item {i} must be text, got {type(item).__name__}")
        label = item.strip()
        if not label:
            raise DataError(path, line, f"field '{field}': item {i} is empty")
        if any(s in label for s in SEPARATORS):
            raise DataError(
                path, line, f"field '{field}': label {label!r} holds a comma, semicolon or line break"
            )
        if label not in labels:
            labels.append(label)
    return tuple(labels)


class MultiLabelTask(Task):
    name = MULTI_LABEL
    default_instruction = DEFAULT_INSTRUCTION
    metric_choices = METRIC_CHOICES
    stop = "\n"  # the label list is one line
    metrics_note = (
        "Micro-F1 counts every (row, label) decision; macro-F1 averages per-label F1 over the labels the "
        "test rows hold; example-F1 averages each row's F1 between its predicted and gold label sets. "
        "Exact match: the whole set right; Hamming loss: wrong (row, label) decisions over rows x labels "
        "(lower is better). Parse rate: outputs naming a known label; valid rate: every item a known label. "
        "An unparseable output predicts no labels; the reference is one-vs-rest logistic regression on "
        "sentence embeddings."
    )

    def __init__(self, metric: str | None = None) -> None:
        self.metric = metric or MICRO_F1
        if self.metric not in METRIC_CHOICES:
            raise ConfigError(f"--metric for multi-label takes {', '.join(METRIC_CHOICES)}")
        self.primary = PRIMARY_METRICS[self.metric]
        self.labels: list[str] = []
        """The pool's labels in canonical order (after ``fit``): what the prompt lists and parse accepts."""
        self._lookup: dict[str, str] = {}
        self._counts: Counter[str] = Counter()

    has_reference = True
    target_field = "labels"

    @classmethod
    def claims(cls, values: Sequence[Any], field: str) -> str | None:
        if any(is_multi_label_value(v) for v in values):
            return f"the target field '{field}' holds lists of labels"
        return None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> MultiLabelTask:
        return cls(cfg.cost.metric)

    @classmethod
    def from_record(cls, block: Mapping[str, Any]) -> MultiLabelTask:
        task = cls(block.get("primary_metric"))
        task.labels = list(block.get("labels") or [])
        return task

    def row_details(
        self, test: Sequence[TaskExample], parsed: Sequence[Parsed], scores: Any
    ) -> dict[str, Any]:
        return {"per_label": self.per_label(scores)}

    def read_target(
        self, value: Any, record: Mapping[str, Any], path: Path, line: int, field: str = "target"
    ) -> TaskExample:
        labels = read_labels(value, path, line, field)
        self._counts.update(labels)
        return TaskExample(text="", label=render(labels), target=labels, path=str(path), line=line)

    def fit(self, pool: Sequence[TaskExample]) -> None:
        self._counts = Counter(label for ex in pool for label in ex.target)
        self.labels = sorted(self._counts)
        # Sorted order decides between labels that only differ in case or underscores (a summary warning).
        self._lookup = {}
        for label in self.labels:
            self._lookup.setdefault(normalise(label), label)

    def rerender(self, example: TaskExample) -> TaskExample:
        """The example's output text in canonical order (already so: the order is alphabetical)."""
        return replace(example, label=render(example.target))

    def stratum(self, example: TaskExample) -> str:
        return min(example.target, key=lambda label: (self._counts.get(label, 0), label))

    def output_format(self) -> str:
        if not self.labels:
            return "Answer with one or more labels, separated by commas."
        return f"Answer with one or more of these labels, separated by commas: {SEPARATOR.join(self.labels)}."

    def parse(self, text: str) -> Parsed:
        """Labels from a comma- (or semicolon-, line-) separated list, matched case-, space- and
        underscore-insensitively; ``ok`` when one is known, ``valid`` when every item is a known label as
        written (no wrapping quotes or brackets) and none repeats; ``value``: the sorted known labels."""
        for separator in SEPARATORS[1:]:
            text = text.replace(separator, SEPARATORS[0])
        items = [item for item in text.split(SEPARATORS[0]) if item.strip(STRIP_CHARS)]
        exact = [self._lookup.get(normalise(item)) for item in items]
        known = [
            label or self._lookup.get(normalise(item.strip(STRIP_CHARS)))
            for label, item in zip(exact, items, strict=True)
        ]
        found = [label for label in known if label is not None]
        if not found:
            return Parsed(None, ok=False, valid=False)
        valid = None not in exact and len(set(found)) == len(found)
        return Parsed(tuple(sorted(set(found))), ok=True, valid=valid)

    def score_rows(
        self, examples: Sequence[TaskExample], parsed: Sequence[Parsed], outputs: Sequence[str]
    ) -> list[dict[str, float]]:
        """Row totals and, for each label the row's target or output holds, ``tp:<label>``, ``fp:<label>``,
        ``fn:<label>`` (a missing key is 0)."""
        universe = set(self.labels) | {label for ex in examples for label in ex.target}
        rows = []
        for example, result in zip(examples, parsed, strict=True):
            gold = set(example.target)
            found = set(result.value) if result.ok else set()
            both = gold & found
            row = {
                "tp": float(len(both)),
                "fp": float(len(found - gold)),
                "fn": float(len(gold - found)),
                "exact": float(gold == found),
                "hamming": len(gold ^ found) / len(universe),
                "example_f1": 2 * len(both) / (len(gold) + len(found)) if gold or found else 1.0,
                "parsed": float(result.ok),
                "valid": float(result.valid),
            }
            for kind, labels in (("tp", both), ("fp", found - gold), ("fn", gold - found)):
                row.update({f"{kind}:{label}": 1.0 for label in sorted(labels)})
            rows.append(row)
        return rows

    def _universe(self, rows: Sequence[Mapping[str, float]]) -> list[str]:
        seen = {key.split(":", 1)[1] for row in rows for key in row if ":" in key}
        return sorted(set(self.labels) | seen)

    def _keys(self, rows: Sequence[Mapping[str, float]]) -> list[str]:
        per_label = [f"{k}:{label}" for label in self._universe(rows) for k in ("tp", "fp", "fn")]
        return ["tp", "fp", "fn", "example_f1", *per_label]

    def primary_stats(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """``[rows, 4 + 3 x labels]``: tp, fp, fn, example-F1, then (tp, fp, fn) per label (sorted), so
        micro-, macro- and example-F1 can all be recomputed on resampled rows."""
        return _columns(rows, self._keys(rows))

    def aggregate(self, rows: Sequence[Mapping[str, float]], seed: int) -> dict[str, Metric]:
        stats = _columns(rows, ["exact", "hamming", "parsed", "valid", *self._keys(rows)])

        def mean(column: int) -> Callable[[np.ndarray], float]:
            return lambda s: float(s[:, column].mean()) if len(s) else float("nan")

        functions: dict[str, Callable[[np.ndarray], float]] = {
            "micro_f1": lambda s: _micro_f1(s[:, 4:]),
            "macro_f1": lambda s: _macro_f1(s[:, 4:]),
            "example_f1": lambda s: _example_f1(s[:, 4:]),
            "micro_precision": lambda s: _share(s[:, 4].sum(), s[:, 5].sum()) if len(s) else math.nan,
            "micro_recall": lambda s: _share(s[:, 4].sum(), s[:, 6].sum()) if len(s) else math.nan,
            "exact_match": mean(0),
            "hamming_loss": mean(1),  # lower is better
            "parse_rate": mean(2),
            "valid_rate": mean(3),
        }
        return {name: Metric(fn(stats), bootstrap_ci(stats, fn, seed)) for name, fn in functions.items()}

    def per_label(self, rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
        """Precision, recall, F1 (0 where undefined, as scikit-learn's ``zero_division=0``) and support (gold
        rows) of every label, for the report's per-label table."""
        table = {}
        for label in self._universe(rows):
            tp, fp, fn = (sum(r.get(f"{kind}:{label}", 0.0) for r in rows) for kind in ("tp", "fp", "fn"))
            table[label] = {
                "precision": _share(tp, fp),
                "recall": _share(tp, fn),
                "f1": _f1(tp, fp, fn),
                "support": float(tp + fn),
            }
        return table

    def baseline_output(self, pool: Sequence[TaskExample]) -> str:
        """The content-blind floor: the most frequent label set of the pool, rendered (ties by text)."""
        counts = Counter(render(ex.target) for ex in pool)
        return min(counts, key=lambda text: (-counts[text], text))

    def degenerate(self, examples: Sequence[TaskExample], parsed: Sequence[Parsed]) -> str | None:
        """Why a method's outputs are not doing the task, in a sentence; None while they vary."""
        if not examples:
            return None
        ok = [render(p.value) for p in parsed if p.ok]
        rate = len(ok) / len(examples)
        if rate < MIN_PARSE_RATE:
            return f"names a known label in only {rate:.0%} of the test rows"
        gold = Counter(render(ex.target) for ex in examples)
        top, count = Counter(ok).most_common(1)[0]
        share, gold_share = count / len(ok), max(gold.values()) / len(examples)
        if len(ok) > 1 and share >= SAME_SET_SHARE and gold_share < SAME_SET_SHARE:
            return f"predicts '{top}' for {share:.0%} of the parsed test rows"
        return None

    def data_summary(
        self, pool: Sequence[TaskExample], test: Sequence[TaskExample]
    ) -> tuple[dict[str, Any], list[str]]:
        """Label counts and label-set sizes of pool and test, and warnings about labels a run cannot learn
        or measure."""
        summary = {"pool": _shape(pool), "test": _shape(test)}
        warnings = []
        pool_counts, test_counts = summary["pool"]["label_counts"], summary["test"]["label_counts"]
        rare = sorted((n, label) for label, n in pool_counts.items() if n < RARE_LABEL_ROWS)
        if rare:
            listed = ", ".join(f"{label} {n}" for n, label in rare)
            warnings.append(
                f"{len(rare)} label(s) have fewer than {RARE_LABEL_ROWS} pool rows ({listed}): too few to "
                "learn, and their per-label F1 rests on a handful of test rows"
            )
        unseen = sorted(set(test_counts) - set(pool_counts))
        if unseen:
            warnings.append(
                f"test label(s) absent from the pool ({', '.join(unseen)}): no method is told or shown them, "
                "so every test row holding one counts a miss"
            )
        groups: dict[str, list[str]] = {}
        for label in pool_counts:
            groups.setdefault(normalise(label), []).append(label)
        clashes = [" / ".join(sorted(g)) for g in groups.values() if len(g) > 1]
        if clashes:
            warnings.append(
                f"labels that differ only in case or underscores ({'; '.join(sorted(clashes))}) cannot be "
                "told apart in an output; an output matches the first in sorted order"
            )
        return summary, warnings

    def reference(self, embed: Embed, seed: int = 0) -> MultiLabelReference:
        from fewtune.tasks.multilabel_reference import MultiLabelReference

        """The no-LLM reference: one-vs-rest logistic regression over sentence embeddings."""
        return MultiLabelReference(embed, tuple(self.labels), seed)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "labels": list(self.labels)}

    @classmethod
    def class_hits(cls, lines: Sequence[Mapping[str, Any]]) -> ClassHits:
        """Per label: the rows holding it (true positives and misses), and those the output named it on."""
        groups: ClassHits = {}
        for i, p in enumerate(lines):
            for key, value in (p.get("scores") or {}).items():
                kind, _, label = key.partition(":")
                if label and kind in ("tp", "fn"):
                    add_hit(groups, len(lines), label, i, float(value) if kind == "tp" else 0.0, float(value))
        return groups


def _columns(rows: Sequence[Mapping[str, float]], keys: Sequence[str]) -> np.ndarray:
    return np.array([[row.get(k, 0.0) for k in keys] for row in rows], dtype=float).reshape(-1, len(keys))


def _shape(examples: Sequence[TaskExample]) -> dict[str, Any]:
    sizes = Counter(len(ex.target) for ex in examples)
    counts = Counter(label for ex in examples for label in ex.target)
    rows = len(examples)
    return {
        "rows": rows,
        "label_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "labels_per_row": {str(size): sizes[size] for size in sorted(sizes)},
        "multi_label_share": sum(n for size, n in sizes.items() if size > 1) / rows if rows else 0.0,
        "mean_labels_per_row": sum(size * n for size, n in sizes.items()) / rows if rows else 0.0,
    }
