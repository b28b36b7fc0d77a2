"""Generation bench: fewtune's batched greedy decoding with prefix reuse against transformers ``generate``
one request at a time (the guides' pipeline), on the same e2e_nlg 4-shot prompts.

Both sides decode greedily with the same cap on new tokens and stop at the same end-of-output marker
(``stop_strings``), so they do the same work per row and their outputs must be identical; the bench counts
the rows that are. The guide's side gets the stop marker too: without it every row would run to the cap and
the ratio would flatter fewtune.

    python bench/generation.py --data ../shared/datasets/e2e_nlg --rows 100 --shots 4

Prints a table and, as its last line, one JSON object with the timings and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fewtune.backends.generation import generate_batch
from fewtune.backends.hf import HFBackend
from fewtune.backends.models import load_model, resolve_model
from fewtune.prompts.demos import select_demos
from fewtune.prompts.template import QUERY_LEAD, OutputTemplate
from fewtune.run.output_answers import max_new_tokens
from fewtune.tasks.base import END_MARKER
from fewtune.tasks.data import load_task_examples
from fewtune.tasks.generation import GenerationTask

console = Console(stderr=True)


def one_at_a_time(backend: HFBackend, prompts: list[str], cap: int) -> list[str]:
    """The guide's pipeline: ``model.generate`` per request, greedy, cut at the marker."""
    texts = []
    for prompt in prompts:
        ids = torch.tensor([backend.encode_prompt(prompt)])
        out = backend.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=cap,
            do_sample=False,
            pad_token_id=backend.pad_id,
            stop_strings=[END_MARKER],
            tokenizer=backend.tokenizer,
        )
        text = backend.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        texts.append(text.split(END_MARKER)[0])
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/e2e_nlg"))
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = GenerationTask()
    pool = load_task_examples(args.data / "train.jsonl", task, "text", "target")
    test = load_task_examples(args.data / "test.jsonl", task, "text", "target")[: args.rows]
    model, tokenizer = load_model(resolve_model("gemma-3-270m"))
    backend = HFBackend(model, tokenizer, source="gemma-3-270m")
    template = OutputTemplate(task.default_instruction, task.output_format())
    demos = select_demos(pool, args.shots, "random", args.seed)
    prompts = [template.render(ex.text, demos) for ex in test]
    cap = max_new_tokens(backend, template, pool, args.seed)
    prefix = template.prefix(demos) + QUERY_LEAD

    start = time.perf_counter()
    batched = generate_batch(
        backend, prompts, prefix=prefix, max_new_tokens=cap, stop=END_MARKER, batch_size=args.batch_size
    )
    fewtune_seconds = time.perf_counter() - start
    start = time.perf_counter()
    single = one_at_a_time(backend, prompts, cap)
    guide_seconds = time.perf_counter() - start

    identical = sum(a.text == b for a, b in zip(batched, single, strict=True))
    table = Table(title=f"e2e_nlg {args.shots}-shot generation, {len(prompts)} rows, cap {cap} tokens")
    for column in ("method", "seconds", "rows/s", "identical outputs"):
        table.add_column(column)
    table.add_row(
        "transformers generate, one request at a time",
        f"{guide_seconds:.1f}",
        f"{len(prompts) / guide_seconds:.3f}",
        "-",
    )
    table.add_row(
        f"fewtune batched (batch {args.batch_size}, prefix reuse)",
        f"{fewtune_seconds:.1f}",
        f"{len(prompts) / fewtune_seconds:.3f}",
        f"{identical}/{len(prompts)}",
    )
    console.print(table)
    print(
        json.dumps(
            {
                "rows": len(prompts),
                "shots": args.shots,
                "max_new_tokens": cap,
                "batch_size": args.batch_size,
                "fewtune_seconds": fewtune_seconds,
                "guide_seconds": guide_seconds,
                "speedup": guide_seconds / fewtune_seconds,
                "identical": identical,
                "output_tokens_mean": sum(g.output_tokens for g in batched) / len(batched),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
