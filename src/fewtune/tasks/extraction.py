"""Extraction: the target is a flat JSON object (field -> value, or a list of values for a repeated field).

Targets come from a JSON-object field, or from a snips-style list of ``{"slot", "value"}`` pairs (a slot
that occurs twice becomes a list). They are rendered as compact JSON on one line, keys in the schema's order
(sorted, so every row has the same order), which is what demos show and LoRA learns. The prompt states the
schema: keys, value types and small enums, inferred from the pool or read from ``--schema FILE`` (JSON
Schema).

Scoring (Coucke et al.'s slot F1, on values instead of BIO tags): an output and a target are both turned into
a multiset of (field, normalised value) pairs; normalisation is Unicode NFC, case folding and collapsed
whitespace. Per row: true positives (pairs in both), false positives (output only), false negatives (target
only); an unparseable output has no pairs. Field F1 is micro-averaged over all rows' pairs,
``2tp / (2tp + fp + fn)``; it is the primary metric.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.decide.metric import PrimaryMetric
from fewtune.errors import ConfigError, DataError
from fewtune.tasks.base import EXTRACTION, ClassHits, Metric, Parsed, Task, TaskExample, add_hit, bootstrap_ci
from fewtune.tasks.json_text import first_object, json_object, object_end

if TYPE_CHECKING:
    from fewtune.config import RunConfig

# A field whose values in the pool take at most this many distinct values (seen at least ENUM_MIN_SEEN
# times) is shown as an enum in the prompt: the model is told the choices instead of guessing spellings.
ENUM_MAX_VALUES = 8
ENUM_MIN_SEEN = 20
DEFAULT_INSTRUCTION = "Extract the fields mentioned in the input as JSON."


def _field_f1(stats: np.ndarray) -> float:
    tp, fp, fn = stats[:, 0].sum(), stats[:, 1].sum(), stats[:, 2].sum()
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 1.0


FIELD_F1_METRIC = PrimaryMetric("field-f1", "field F1", _field_f1, per_row_correct=False)


def normalise(value: Any) -> str:
    """The form values are compared in: NFC, case-folded, whitespace collapsed."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def read_object(value: Any, path: Path, line: int, field: str) -> dict[str, Any]:
    """A target value as a flat object: a JSON object, or a list of ``{slot, value}`` pairs."""
    if isinstance(value, list):
        merged: dict[str, Any] = {}
        for item in value:
            if not (isinstance(item, dict) and set(item) >= {"slot", "value"}):
                raise DataError(
                    path,
                    line,
                    f"field '{field}' is a list; extraction expects a list of {{slot, value}} objects",
                )
            slot, item_value = str(item["slot"]), item["value"]
            if slot in merged:
                previous = merged[slot]
                merged[slot] = [*(previous if isinstance(previous, list) else [previous]), item_value]
            else:
                merged[slot] = item_value
        value = merged
    if not isinstance(value, dict):
        raise DataError(
            path,
            line,
            f"field '{field}' must be a JSON object (or a list of {{slot, value}}) for extraction, "
            f"got {type(value).__name__}",
        )
    for key, item in value.items():
        items = item if isinstance(item, list) else [item]
        if not all(_scalar(v) for v in items):
            raise DataError(path, line, f"field '{field}': value of '{key}' must be text or a list of text")
    return {str(k): v for k, v in value.items()}


def pairs(obj: Mapping[str, Any] | None) -> Counter[tuple[str, str]]:
    """The multiset of (field, normalised value) pairs of an object (a list value gives one pair each)."""
    found: Counter[tuple[str, str]] = Counter()
    for key, value in (obj or {}).items():
        for item in value if isinstance(value, list) else [value]:
            found[(key, normalise(item))] += 1
    return found


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return "number" if isinstance(value, float) else "string"


def _json_type(values: list[Any]) -> str | list[str]:
    """The JSON Schema type of a key's values: one kind, or every kind seen (integers count as numbers
    when both occur), so that every gold value is valid."""
    kinds = {_kind(v) for v in values}
    if kinds == {"integer", "number"}:
        kinds = {"number"}
    return kinds.pop() if len(kinds) == 1 else sorted(kinds)


def infer_schema(targets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A JSON Schema for the pool's targets: every key optional, its values' type (text, number, boolean,
    or each kind seen) or a list of them, small enums where a key of one kind takes few values."""
    seen: dict[str, list[Any]] = {}
    listed: set[str] = set()
    for target in targets:
        for key, value in target.items():
            if isinstance(value, list):
                listed.add(key)
            seen.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    properties: dict[str, Any] = {}
    for key in sorted(seen):
        values = seen[key]
        kind = _json_type(values)
        spec: dict[str, Any] = {"type": kind}
        distinct = sorted(set(values), key=lambda v: (str(type(v)), v))
        if kind != "boolean" and len(distinct) <= ENUM_MAX_VALUES and len(values) >= ENUM_MIN_SEEN:
            spec["enum"] = distinct
        properties[key] = {"anyOf": [spec, {"type": "array", "items": spec}]} if key in listed else spec
    return {"type": "object", "properties": properties, "additionalProperties": False}


def load_schema(path: str) -> dict[str, Any]:
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: schema file not found") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: malformed JSON Schema ({err.msg})") from None
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        raise ConfigError(f"{path}: the schema must be a JSON object with 'properties'")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise ConfigError(f"{path}: not a valid JSON Schema ({err.message})") from None
    return schema


def _describe(spec: Mapping[str, Any]) -> str:
    options = spec.get("anyOf") or [spec]
    enum = next((o["enum"] for o in options if "enum" in o), None)
    shown = {"string": "text", "integer": "whole number", "number": "number", "boolean": "true|false"}
    kinds = options[0].get("type")
    kind = " or ".join(shown.get(str(k), "text") for k in (kinds if isinstance(kinds, list) else [kinds]))
    if enum is not None:
        kind = "one of " + "|".join(
            json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v for v in enum
        )
    return f"{kind} or a list" if len(options) > 1 else kind


class ExtractionTask(Task):
    name = EXTRACTION
    default_instruction = DEFAULT_INSTRUCTION
    primary = FIELD_F1_METRIC
    metric_choices = (FIELD_F1_METRIC.name,)
    class_word = "field"
    stop = "\n"  # the JSON is rendered on one line
    output_end = staticmethod(object_end)  # and is complete at its closing brace: nothing after it is read
    metrics_note = (
        "Field precision, recall and F1 are micro-averaged over (field, value) pairs after normalisation "
        "(Unicode NFC, case folding, collapsed whitespace); an output that is not a JSON object has "
        "no pairs. Parse rate: outputs that are JSON objects; schema-valid: those that also match the "
        "schema; exact match: every pair right. 'ended': outputs that ended on their own (not cut at the "
        "token cap)."
    )

    def __init__(self, schema: Mapping[str, Any] | None = None) -> None:
        self.schema = schema
        self.given_schema = schema is not None
        self._validator: Any = None

    @classmethod
    def claims(cls, values: Sequence[Any], field: str) -> str | None:
        if any(_is_extraction_target(v) for v in values):
            return f"the target field '{field}' holds JSON objects or {{slot, value}} lists"
        return None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ExtractionTask:
        return cls(load_schema(cfg.data.schema) if cfg.data.schema else None)

    @classmethod
    def from_record(cls, block: Mapping[str, Any]) -> ExtractionTask:
        """With the schema the run used (given or inferred), so that its prompts and parsing are the run's."""
        schema = block.get("schema")
        task = cls(dict(schema) if isinstance(schema, Mapping) else None)
        task.given_schema = block.get("schema_source") == "--schema"
        return task

    def read_target(
        self, value: Any, record: Mapping[str, Any], path: Path, line: int, field: str = "target"
    ) -> TaskExample:
        obj = read_object(value, path, line, field)
        return TaskExample(text="", label=self.render(obj), target=obj, path=str(path), line=line)

    @property
    def keys(self) -> list[str]:
        return list((self.schema or {}).get("properties") or {})

    def render(self, obj: Mapping[str, Any]) -> str:
        order = {key: i for i, key in enumerate(self.keys)}
        ordered = dict(sorted(obj.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
        return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))

    def fit(self, pool: Sequence[TaskExample]) -> None:
        if self.schema is None:
            self.schema = infer_schema([ex.target for ex in pool])

    def rerender(self, example: TaskExample) -> TaskExample:
        """The example rendered in the schema's key order (known only once the pool is read)."""
        from dataclasses import replace

        return replace(example, label=self.render(example.target))

    def output_format(self) -> str:
        properties = (self.schema or {}).get("properties") or {}
        fields = "; ".join(f"{key}: {_describe(spec)}" for key, spec in properties.items())
        return (
            "Answer with one line of JSON holding only the fields the input mentions, in this order, "
            f"with values copied from the input. Fields: {fields}."
        )

    def parse(self, text: str) -> Parsed:
        value = first_object(text)
        if value is None:
            return Parsed(None, ok=False, valid=False)
        return Parsed(value, ok=True, valid=self._valid(value))

    def _valid(self, value: Any) -> bool:
        if self.schema is None:
            return True
        if self._validator is None:
            import jsonschema

            self._validator = jsonschema.validators.validator_for(self.schema)(self.schema)
        return bool(self._validator.is_valid(value))

    def score_rows(
        self, examples: Sequence[TaskExample], parsed: Sequence[Parsed], outputs: Sequence[str]
    ) -> list[dict[str, float]]:
        rows = []
        for example, result in zip(examples, parsed, strict=True):
            gold, found = pairs(example.target), pairs(result.value if result.ok else None)
            tp = sum((gold & found).values())
            rows.append(
                {
                    "tp": float(tp),
                    "fp": float(sum(found.values()) - tp),
                    "fn": float(sum(gold.values()) - tp),
                    "parsed": float(result.ok),
                    "schema_valid": float(result.valid),
                    "exact": float(result.ok and gold == found),
                }
            )
        return rows

    def primary_stats(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        return np.array([[r["tp"], r["fp"], r["fn"]] for r in rows], dtype=float).reshape(-1, 3)

    def aggregate(self, rows: Sequence[Mapping[str, float]], seed: int) -> dict[str, Metric]:
        stats = np.array(
            [[r["tp"], r["fp"], r["fn"], r["parsed"], r["schema_valid"], r["exact"]] for r in rows],
            dtype=float,
        ).reshape(-1, 6)

        def precision(s: np.ndarray) -> float:
            return float(s[:, 0].sum() / max(s[:, 0].sum() + s[:, 1].sum(), 1))

        def recall(s: np.ndarray) -> float:
            return float(s[:, 0].sum() / max(s[:, 0].sum() + s[:, 2].sum(), 1))

        functions = {
            "field_f1": _field_f1,
            "field_precision": precision,
            "field_recall": recall,
            "parse_rate": lambda s: float(s[:, 3].mean()),
            "schema_valid_rate": lambda s: float(s[:, 4].mean()),
            "exact_match": lambda s: float(s[:, 5].mean()),
        }
        return {name: Metric(fn(stats), bootstrap_ci(stats, fn, seed)) for name, fn in functions.items()}

    def row_details(
        self, test: Sequence[TaskExample], parsed: Sequence[Parsed], scores: Any
    ) -> dict[str, Any]:
        return {"per_field": field_table(test, parsed)}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "schema": self.schema,
            "schema_source": "--schema" if self.given_schema else "inferred from the pool",
            "normalisation": "Unicode NFC, case folding, whitespace collapsed",
        }

    @classmethod
    def class_hits(cls, lines: Sequence[Mapping[str, Any]]) -> ClassHits:
        """Per field: its gold values, and how many of them each row's parsed output holds."""
        groups: ClassHits = {}
        for i, p in enumerate(lines):
            gold = pairs(json_object(p.get("gold")))
            found = pairs(p.get("parsed") if isinstance(p.get("parsed"), dict) else None)
            for (key, value), count in gold.items():
                add_hit(groups, len(lines), key, i, float(min(count, found[(key, value)])), float(count))
        return groups

    @classmethod
    def degenerate_metrics(cls, metrics: Mapping[str, Any], more: str) -> tuple[str, str] | None:
        """No output parses as a JSON object, or none gets a field value right."""
        parse_rate, f1 = metrics.get("parse_rate"), metrics.get("field_f1")
        if parse_rate is not None and parse_rate["value"] == 0:
            return (
                "produces no output that parses as a JSON object",
                f"Likely cause: it has not picked up the output format; try --constrained, {more}",
            )
        if f1 is not None and f1["value"] == 0:
            return (
                "gets no field value right",
                f"Likely cause: the output follows the format but not the input; try {more}",
            )
        return None


def field_table(examples: Sequence[TaskExample], parsed: Sequence[Parsed]) -> dict[str, dict[str, float]]:
    """Per-field precision, recall, F1 and support (gold values) over the rows."""
    counts: dict[str, list[int]] = {}
    for example, result in zip(examples, parsed, strict=True):
        gold, found = pairs(example.target), pairs(result.value if result.ok else None)
        for key, _ in gold | found:
            counts.setdefault(key, [0, 0, 0])
        for (key, value), n in gold.items():
            matched = min(n, found.get((key, value), 0))
            counts[key][0] += matched
            counts[key][2] += n - matched
        for (key, value), n in found.items():
            counts[key][1] += n - min(n, gold.get((key, value), 0))
    table = {}
    for key, (tp, fp, fn) in sorted(counts.items()):
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        table[key] = {
            "precision": p,
            "recall": r,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "support": float(tp + fn),
        }
    return table


def _is_extraction_target(value: Any) -> bool:
    """A JSON object, or a list of ``{slot, value}`` records (snips-style slots)."""
    if isinstance(value, dict):
        return True
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and {"slot", "value"} <= set(item) for item in value)
    )
