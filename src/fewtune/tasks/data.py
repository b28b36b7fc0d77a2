"""Reading extraction and generation data (JSON Lines), inferring the task, and the pool/test split.

Records end at a line feed only, as in :mod:`fewtune.data.load`; every bad record is a one-line error
naming its file and line. The split is classification's, without labels: exact duplicate inputs are dropped
(the first is kept), pool rows whose input is also a test input are removed (leaks), and a seeded sample,
stratified by the task's stratum, is held out or kept (``--max-test``).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.data.load import as_text, decode_text, read_json_line
from fewtune.errors import DataError
from fewtune.tasks.base import CLASSIFICATION, GENERATION, Task, TaskExample

# Inference of --task from the target field: text with at most this many distinct values, each seen at
# least twice on average, is a label set (classification); other text is free output (generation).
MAX_CLASSIFICATION_LABELS = 100
# ...or short (a median of at most this many words), as labels are, when there are too few rows to count.
MAX_LABEL_WORDS = 3
INFERENCE_ROWS = 500


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.exists():
        raise DataError(path, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, "is a folder; pass a .jsonl file")
    if path.suffix.lower() == ".csv":
        raise DataError(path, None, "extraction and generation read JSON Lines (.jsonl), not CSV")
    content = decode_text(path, path.read_bytes())
    for line_no, raw in enumerate(content.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        record = read_json_line(line, path, line_no)
        if not isinstance(record, dict):
            raise DataError(path, line_no, f"expected a JSON object, got {type(record).__name__}")
        yield line_no, record


def _field(record: Mapping[str, Any], name: str, path: Path, line: int, option: str) -> Any:
    if name not in record:
        fields = ", ".join(sorted(record)) or "none"
        raise DataError(path, line, f"missing field '{name}' (fields here: {fields}; set {option})")
    return record[name]


def infer_target_field(path: str | Path, field: str, default: str) -> str:
    """The target field to read: ``field``; or, when that is the default and the first record lacks it
    but holds a task's own target field (multi-label's ``labels``), that one."""
    from fewtune.tasks.registry import TASK_TYPES

    if field != default or str(path).lower().endswith(".csv"):
        return field
    try:
        _, record = next(_records(Path(path)))
    except (DataError, StopIteration):  # the loader names the problem
        return field
    if field in record:
        return field
    for kind in TASK_TYPES:
        if kind.target_field in record:
            return kind.target_field
    return field


def infer_task(path: str | Path, target_field: str) -> tuple[str, str]:
    """The task the target field implies, and why (a sentence for the terminal and results)."""
    path = Path(path)
    values = []
    for line, record in _records(path):
        if target_field not in record and "messages" in record:
            return CLASSIFICATION, "chat records: the last assistant message is the label"
        values.append(_field(record, target_field, path, line, "--target-field"))
        if len(values) >= INFERENCE_ROWS:
            break
    if not values:
        raise DataError(path, None, "no examples found (only blank rows)")
    from fewtune.tasks.registry import TASK_TYPES

    for kind in TASK_TYPES:
        why = kind.claims(values, target_field)
        if why:
            return kind.name, why
    texts = [v for v in values if isinstance(v, str) and v.strip()]
    distinct = set(texts)
    words = float(np.median([len(t.split()) for t in texts])) if texts else 0.0
    if len(texts) < len(values) or not texts:  # numbers, booleans, lists of text: labels or bad labels
        return CLASSIFICATION, f"the target field '{target_field}' is not free text"
    if len(distinct) <= MAX_CLASSIFICATION_LABELS and (
        len(distinct) * 2 <= len(texts) or words <= MAX_LABEL_WORDS
    ):
        first = "its first " if len(values) >= INFERENCE_ROWS else ""
        seen = f"in {first}{len(values)} rows"
        count = f"{len(distinct)} distinct value{'s' if len(distinct) != 1 else ''}"
        return CLASSIFICATION, f"the target field '{target_field}' takes {count} {seen}"
    return GENERATION, (
        f"the target field '{target_field}' is free text "
        f"({len(distinct)} distinct values in {len(values)} rows, median {words:.0f} words)"
    )


def load_task_examples(
    path: str | Path, task: Task, input_field: str = "text", target_field: str = "label"
) -> list[TaskExample]:
    path = Path(path)
    examples = []
    for line, record in _records(path):
        text = as_text(_field(record, input_field, path, line, "--input-field"), input_field, path, line)
        value = _field(record, target_field, path, line, "--target-field")
        example = task.read_target(value, record, path, line, target_field)
        examples.append(replace(example, text=text))
    if not examples:
        raise DataError(path, None, "no examples found (only blank rows)")
    return examples


@dataclass
class TaskData:
    pool: list[TaskExample]
    test: list[TaskExample]
    report: dict[str, Any] = field(default_factory=dict)
    """results.json's ``dataset`` block."""


def stratified(examples: Sequence[TaskExample], n: int, task: Task, seed: int) -> list[int]:
    """Seeded sample of ``n`` indices, strata in proportion (largest remainder), in file order."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by[task.stratum(ex)].append(i)
    rng = random.Random(seed)
    for members in by.values():
        rng.shuffle(members)
    quota = {s: n * len(m) / len(examples) for s, m in by.items()}
    take = {s: int(q) for s, q in quota.items()}
    for s in sorted(by, key=lambda s: (take[s] - quota[s], s)):
        if sum(take.values()) >= n:
            break
        take[s] += 1
    return sorted(i for s, members in by.items() for i in members[: take[s]])


def _dedupe(examples: Sequence[TaskExample], task: Task, pool: bool = True) -> tuple[list[TaskExample], int]:
    """Drop repeated examples, keeping the first: the same input, except in a generation pool, where an
    input may have several good outputs (e2e_nlg has up to 30) and only repeated pairs go. A test input is
    scored once: its other outputs belong in its ``references``."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for ex in examples:
        key = (ex.text, ex.label if pool and task.name == GENERATION else "")
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept, len(examples) - len(kept)


def prepare_task_data(
    task: Task,
    data: str | Path,
    test: str | Path | None,
    *,
    input_field: str,
    target_field: str,
    max_test: int | None,
    test_fraction: float,
    seed: int,
) -> TaskData:
    pool, duplicates = _dedupe(load_task_examples(data, task, input_field, target_field), task)
    if test is not None:
        test_rows, test_duplicates = _dedupe(
            load_task_examples(test, task, input_field, target_field), task, pool=False
        )
        duplicates += test_duplicates
        source = str(test)
    else:
        held = set(stratified(pool, max(1, round(len(pool) * test_fraction)), task, seed))
        test_rows = [ex for i, ex in enumerate(pool) if i in held]
        pool = [ex for i, ex in enumerate(pool) if i not in held]
        source = f"{test_fraction:.0%} split of {data} (seed {seed})"
    if max_test is not None and max_test < len(test_rows):
        test_rows = [test_rows[i] for i in stratified(test_rows, max_test, task, seed)]
        source += f", sample of {max_test} (seed {seed})"
    inputs = {ex.text for ex in test_rows}
    leaks = sum(ex.text in inputs for ex in pool)
    pool = [ex for ex in pool if ex.text not in inputs]
    if not pool:
        raise DataError(data, None, "no examples left in the pool after removing duplicates and test leaks")
    task.fit(pool)
    # Rendering may depend on what fit learned (extraction's key order).
    pool, test_rows = [task.rerender(ex) for ex in pool], [task.rerender(ex) for ex in test_rows]
    report = {
        "pool_size": len(pool),
        "test_size": len(test_rows),
        "duplicates_removed": duplicates,
        "leaks_removed": leaks,
        "test_source": source,
        "warnings": [],
    }
    return TaskData(pool=pool, test=test_rows, report=report)
