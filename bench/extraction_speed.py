"""Extraction speed: rows/s of 8-shot snips extraction (``--label-field slots``) before and after the
generation changes of issue 35 item 4, and whether every row's output reads the same.

Four ways to generate the same rows, greedy, same cap on new tokens, in the precision asked for:

- ``before``: what fewtune did until then. An 8-shot snips prompt (630-702 tokens of demo block and schema)
  is longer than Gemma 3's 512-token sliding window, so every row was generated whole, the demo block run
  again in every batch, under ``torch.inference_mode``. That is exactly ``generate_batch`` without a
  prefix and without the task's ``output_end``, called inside ``inference_mode`` (the bench checks that
  every row was past the window, as the old code tested it);
- ``cached``: the demo block's cache shared past the window (rows laid out like whole left-padded prompts,
  the cache moved to match) and a batch's unfinished rows going on without its finished ones, stopping at
  the line's end, still inside ``inference_mode``;
- ``after``: fewtune now: that, each row stopping once its JSON object closes (``ExtractionTask.output_end``),
  under ``no_grad`` (in bf16, autocast then casts each weight once per call instead of at every step);
- ``alone`` (not timed by default): each prompt whole, one at a time, no batch: the reference every batched
  path should equal. In float32 they do; in bf16 a batch's shapes change the rounding of its matrix
  products, so a few rows' greedy tokens flip, in ``before`` as in ``after``.

Per row, each path's outputs are compared with ``before`` and, when it ran, ``alone``: the text, and what
the task parses from it (the object the score is computed on).

    .venv/bin/python bench/extraction_speed.py --rows 24 --precision fp32
    .venv/bin/python bench/extraction_speed.py --rows 24 --precision bf16 --paths cached,after

Prints a table and, as its last line, one JSON object with the timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from fewtune.backends.generation import generate_batch, stop_at
from fewtune.backends.hf import HFBackend
from fewtune.backends.models import load_model, resolve_model
from fewtune.prompts.demos import select_demos
from fewtune.prompts.template import QUERY_LEAD, OutputTemplate
from fewtune.run.output_answers import max_new_tokens
from fewtune.tasks.data import prepare_task_data
from fewtune.tasks.extraction import ExtractionTask

console = Console(stderr=True)
PATHS = ("before", "cached", "after", "alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/snips"))
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--paths", default="before,cached,after", help=f"which of {','.join(PATHS)} to time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]

    task = ExtractionTask()
    data = prepare_task_data(
        task,
        args.data / "train.jsonl",
        args.data / "test.jsonl",
        input_field="text",
        target_field="slots",
        max_test=args.rows,
        test_fraction=0.2,
        seed=args.seed,
    )
    model, tokenizer = load_model(resolve_model(), precision=args.precision)
    backend = HFBackend(model, tokenizer, source="gemma-3-270m")
    template = OutputTemplate(task.default_instruction, task.output_format())
    demos = select_demos(data.pool, args.shots, "random", args.seed)
    prompts = [template.render(ex.text, demos) for ex in data.test]
    prefix = template.prefix(demos) + QUERY_LEAD
    cap = max_new_tokens(backend, template, data.pool, args.seed)
    lengths = [backend.count_tokens(p) for p in prompts]
    # The old code sent a row down the cached path only while its prompt plus the cap fitted the window.
    past_window = all(not backend.fits_window(n + cap) for n in lengths)

    settings: dict[str, dict[str, Any]] = {
        "before": {"prefix": "", "output_end": None},
        "cached": {"prefix": prefix, "output_end": None},
        "after": {"prefix": prefix, "output_end": task.output_end},
        "alone": {"prefix": "", "output_end": None, "batch_size": 1},
    }
    outputs: dict[str, list[Any]] = {}
    seconds: dict[str, float] = {}
    stop_at(tokenizer, task.stop)  # built once a process (1.3 s for Gemma's vocabulary): not any path's time
    for path in paths:
        fresh = HFBackend(model, tokenizer)  # every path computes the demo block's cache itself
        start = time.perf_counter()
        with torch.inference_mode() if path in ("before", "cached") else contextlib.nullcontext():
            outputs[path] = generate_batch(
                fresh,
                prompts,
                max_new_tokens=cap,
                stop=task.stop,
                **{"batch_size": args.batch_size, **settings[path]},
            )
        seconds[path] = time.perf_counter() - start

    rows = len(prompts)
    table = Table(
        title=f"snips {args.shots}-shot extraction, {rows} rows, {args.precision}, cap {cap} tokens, "
        f"batch {args.batch_size}"
    )
    references = [p for p in ("before", "alone") if p in outputs]
    columns = ["path", "seconds", "rows/s", "output tokens"]
    columns += [f"same {what} as {ref}" for ref in references for what in ("text", "parse")]
    for column in columns:
        table.add_column(column)
    summary: dict[str, Any] = {}
    for path in paths:
        generated = outputs[path]
        tokens = sum(g.output_tokens for g in generated) / rows
        summary[path] = {
            "seconds": seconds[path],
            "rows_per_second": rows / seconds[path],
            "output_tokens_mean": tokens,
            "outputs": [g.text for g in generated],
        }
        cells = [path, f"{seconds[path]:.1f}", f"{rows / seconds[path]:.3f}", f"{tokens:.1f}"]
        for ref in references:
            pairs = list(zip(generated, outputs[ref], strict=True))
            same_text = sum(a.text == b.text for a, b in pairs)
            same_parse = sum(task.parse(a.text) == task.parse(b.text) for a, b in pairs)
            summary[path][f"same_text_as_{ref}"] = same_text
            summary[path][f"same_parse_as_{ref}"] = same_parse
            cells += [f"{same_text}/{rows}", f"{same_parse}/{rows}"]
        table.add_row(*cells)
    console.print(table)
    if "before" in seconds and "after" in seconds:
        console.print(f"after / before rows/s: {seconds['before'] / seconds['after']:.2f}x")
    print(
        json.dumps(
            {
                "rows": rows,
                "shots": args.shots,
                "precision": backend.precision.name,
                "max_new_tokens": cap,
                "batch_size": args.batch_size,
                "prefix_tokens": backend.count_tokens(prefix),
                "every_row_past_the_window": past_window,
                "torch_threads": torch.get_num_threads(),
                "paths": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
