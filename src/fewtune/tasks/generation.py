"""Generation: free text judged against one or more references.

The metrics are proxies for what a reader would judge, each from a well-kept implementation:
- chrF (Popović 2015; sacrebleu's ``sentence_chrf``, best over references): character n-gram F-score, robust
  to inflection and word order; the primary metric, on a 0-1 scale;
- ROUGE-L F (Lin 2004; Google's ``rouge-score``, stemmed, best over references): longest common subsequence;
- semantic similarity: cosine of all-MiniLM-L6-v2 sentence embeddings, best over references;
- length ratio: output words / words of the closest-length reference;
- slot coverage, where rows carry structured ``fields`` (data-to-text): the share of field values that the
  output mentions literally (case-insensitive). It undercounts paraphrases ("familyFriendly: yes" written
  "kid friendly"), so read it alongside the side-by-side outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.decide.metric import PrimaryMetric
from fewtune.errors import ConfigError, DataError
from fewtune.tasks.base import GENERATION, Metric, Parsed, Task, TaskExample, bootstrap_ci
from fewtune.tasks.extraction import normalise

if TYPE_CHECKING:
    from fewtune.config import RunConfig

DEFAULT_INSTRUCTION = "Write the output for the input."
METRIC_NAMES = ("chrf", "rouge_l", "semantic_similarity", "length_ratio", "slot_coverage")
# Metrics --metric can name for a generation run (higher is better for each).
PRIMARY_CHOICES = ("chrf", "rouge-l", "semantic")
_COLUMN = {"chrf": "chrf", "rouge-l": "rouge_l", "semantic": "semantic_similarity"}
Embed = Callable[[Sequence[str]], np.ndarray]


def _text(value: Any, path: Path, line: int, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(
            path, line, f"field '{field}' must be text for generation, got {type(value).__name__}"
        )
    if not value.strip():
        raise DataError(path, line, f"field '{field}' is empty")
    return value.strip()


def _mean_of(column: int) -> Callable[[np.ndarray], float]:
    return lambda stats: float(np.nanmean(stats[:, column])) if len(stats) else float("nan")


class GenerationTask(Task):
    name = GENERATION
    default_instruction = DEFAULT_INSTRUCTION
    metric_choices = PRIMARY_CHOICES
    scores_with_embedder = True
    metrics_note = (
        "chrF (sacrebleu), ROUGE-L (rouge-score, stemmed) and semantic similarity (all-MiniLM-L6-v2 cosine) "
        "are each the best over a row's references; length ratio is output words over the closest "
        "reference's; slot coverage is the share of the row's field values the output mentions literally. "
        "All are proxies for what a reader would judge: read the outputs below. "
        "'ended': outputs that ended on their own (not cut at the token cap)."
    )

    def __init__(self, metric: str | None = None, embed: Embed | None = None) -> None:
        self.metric = metric or "chrf"
        if self.metric not in PRIMARY_CHOICES:
            raise ConfigError(f"--metric for generation takes {', '.join(PRIMARY_CHOICES)}")
        self.primary = PrimaryMetric(
            self.metric,
            {"chrf": "chrF", "rouge-l": "ROUGE-L", "semantic": "semantic similarity"}[self.metric],
            _mean_of(0),
            per_row_correct=False,
        )
        self.embed = embed

    @classmethod
    def from_config(cls, cfg: RunConfig) -> GenerationTask:
        return cls(cfg.cost.metric)

    @classmethod
    def from_record(cls, block: Mapping[str, Any]) -> GenerationTask:
        return cls(block.get("primary_metric"))

    def read_target(
        self, value: Any, record: Mapping[str, Any], path: Path, line: int, field: str = "target"
    ) -> TaskExample:
        target = _text(value, path, line, field)
        references: list[str] = [target]
        if "references" in record:
            given = record["references"]
            if not isinstance(given, list) or not given:
                raise DataError(path, line, "field 'references' must be a non-empty list of texts")
            # The target is the output demos show and LoRA learns; every reference is acceptable too.
            references += [r for r in (_text(r, path, line, "references[]") for r in given) if r != target]
        fields = record.get("fields")
        if fields is not None and not isinstance(fields, dict):
            raise DataError(path, line, "field 'fields' must be an object of attribute -> value")
        return TaskExample(
            text="",
            label=target,
            target=target,
            references=tuple(references),
            fields={str(k): str(v) for k, v in fields.items()} if fields else None,
            path=str(path),
            line=line,
        )

    def output_format(self) -> str:
        return "Answer with the output text only."

    def parse(self, text: str) -> Parsed:
        value = text.strip()
        return Parsed(value, ok=bool(value), valid=bool(value))

    def score_rows(
        self, examples: Sequence[TaskExample], parsed: Sequence[Parsed], outputs: Sequence[str]
    ) -> list[dict[str, float]]:
        from rouge_score import rouge_scorer
        from sacrebleu.metrics import CHRF

        chrf = CHRF()
        rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        texts = [str(p.value or "") for p in parsed]
        similarity = self._similarity(examples, texts)
        rows = []
        for i, (example, text) in enumerate(zip(examples, texts, strict=True)):
            refs = list(example.references or (example.label,))
            words = len(text.split())
            closest = min((len(r.split()) for r in refs), key=lambda n: (abs(n - words), n))
            row = {
                "chrf": chrf.sentence_score(text, refs).score / 100,
                "rouge_l": max(rouge.score(r, text)["rougeL"].fmeasure for r in refs),
                "semantic_similarity": similarity[i],
                "length_ratio": words / closest if closest else float("nan"),
                "slot_coverage": _coverage(example.fields, text),
            }
            rows.append(row)
        return rows

    def _similarity(self, examples: Sequence[TaskExample], texts: Sequence[str]) -> list[float]:
        if self.embed is None:
            return [float("nan")] * len(texts)
        refs = [list(ex.references or (ex.label,)) for ex in examples]
        flat = [r for group in refs for r in group]
        outputs = self.embed(texts)
        references = self.embed(flat)
        scores, start = [], 0
        for i, group in enumerate(refs):
            block = references[start : start + len(group)]
            start += len(group)
            scores.append(float(np.max(block @ outputs[i])) if texts[i] else 0.0)
        return scores

    def primary_stats(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        return np.array([[r[_COLUMN[self.metric]]] for r in rows], dtype=float).reshape(-1, 1)

    def aggregate(self, rows: Sequence[Mapping[str, float]], seed: int) -> dict[str, Metric]:
        metrics = {}
        for name in METRIC_NAMES:
            stats = np.array([[r[name]] for r in rows], dtype=float).reshape(-1, 1)
            if not len(stats) or np.isnan(stats).all():
                continue
            fn = _mean_of(0)
            metrics[name] = Metric(fn(stats), bootstrap_ci(stats, fn, seed))
        return metrics

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "metrics_are_proxies": True}


def _coverage(fields: Mapping[str, str] | None, text: str) -> float:
    if not fields:
        return float("nan")
    said = normalise(text)
    return sum(normalise(v) in said for v in fields.values()) / len(fields)
