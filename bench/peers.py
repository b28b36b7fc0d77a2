"""Benchmark fewtune against what a user would otherwise run, on the same rows, model and demos.

Few-shot scoring, same test rows and the same k demos in the same prompt:
  (a) the practitioners' guide's method: a transformers ``text-generation`` pipeline, ``max_new_tokens=10``,
      one request at a time, the output's first word taken as the label;
  (b) EleutherAI lm-evaluation-harness (``lm-eval``): a local task YAML over the same JSONL,
      ``num_fewshot=k`` with the demos fixed (``sampler: first_n`` over a split holding exactly our demos),
      HF backend on the same local model folder;
  (c) fewtune's label scorer (prefix-cached, batched).
LoRA, same training rows, epochs, rank and learning rate, both scored by fewtune's scorer:
  a plain ``transformers.Trainer`` + peft run (answer-only labels via -100) vs fewtune's trainer.

Prints a table and, as its last line, one JSON object with the ratios and accuracies.

    python bench/peers.py --data ../shared/datasets/sst2 --max-test 200 --shots 8 --train-size 200
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from fewtune.backends.hf import HFBackend
from fewtune.backends.models import load_model, resolve_model
from fewtune.config import LoraArgs, default_target_modules
from fewtune.data.split import PreparedData, prepare_data, stratified_sample
from fewtune.prompts.demos import select_demos
from fewtune.prompts.template import SEPARATOR, PromptTemplate
from fewtune.results.sections import LocalTraining
from fewtune.strategies.base import Predictor
from fewtune.sysinfo import PeakMemory
from fewtune.training.lora import Lora

console = Console(stderr=True)


def timed(fn: Callable[[], Any], device: Any = "cpu") -> tuple[Any, float, int | None]:
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        value = fn()
        wall = time.perf_counter() - start
    return value, wall, peak.bytes


def first_word_label(output: str, labels: tuple[str, ...]) -> str | None:
    words = re.findall(r"[\w?-]+", output)
    if not words:
        return None
    lowered = {label.lower(): label for label in labels}
    return lowered.get(words[0].lower())


def guide_method(folder: Path, predictor: Predictor, data: PreparedData) -> dict[str, Any]:
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(folder), device="cpu", dtype=torch.float32)
    labels = predictor.template.labels

    def go() -> list[str | None]:
        outputs = []
        for ex in data.test:
            out = pipe(predictor.prompt(ex.text), max_new_tokens=10, do_sample=False, return_full_text=False)
            outputs.append(first_word_label(out[0]["generated_text"], labels))
        return outputs

    predicted, wall, peak = timed(go)
    correct = sum(p == ex.label for p, ex in zip(predicted, data.test, strict=True))
    return {"accuracy": correct / len(data.test), "wall_s": wall, "peak_memory_bytes": peak}


def lm_eval_method(folder: Path, predictor: Predictor, data: PreparedData, batch_size: int) -> dict[str, Any]:
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    labels = list(predictor.template.labels)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)

        def dump(name: str, rows: Any) -> str:
            path = tmp_path / f"{name}.jsonl"
            path.write_text(
                "".join(json.dumps({"text": r.text, "label": labels.index(r.label)}) + "\n" for r in rows)
            )
            return str(path)

        task = {
            "task": "fewtune_peer",
            "dataset_path": "json",
            "dataset_kwargs": {
                "data_files": {"test": dump("test", data.test), "demos": dump("demos", predictor.demos)}
            },
            "test_split": "test",
            "fewshot_split": "demos",
            "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice",
            # Same prompt as fewtune's: header, then demos and the query joined by the separator line.
            "description": predictor.template.header() + f"{SEPARATOR}\n",
            "doc_to_text": "Input: {{text}}\nOutput:",
            "doc_to_choice": labels,
            "doc_to_target": "{{label}}",
            "target_delimiter": " ",
            "fewshot_delimiter": f"\n{SEPARATOR}\n",
            "metric_list": [{"metric": "acc"}],
        }
        (tmp_path / "fewtune_peer.yaml").write_text(yaml.safe_dump(task))

        # Loaded before timing, as the other methods' models are.
        lm = HFLM(pretrained=str(folder), dtype="float32", batch_size=batch_size, device="cpu")

        def go() -> Any:
            return simple_evaluate(
                model=lm,
                tasks=["fewtune_peer"],
                num_fewshot=predictor.shots,
                task_manager=TaskManager(include_path=str(tmp_path)),
                random_seed=0,
                numpy_random_seed=0,
                torch_random_seed=0,
                fewshot_random_seed=0,
            )

        results, wall, peak = timed(go)
    accuracy = results["results"]["fewtune_peer"]["acc,none"]
    return {"accuracy": accuracy, "wall_s": wall, "peak_memory_bytes": peak}


def fewtune_scoring(predictor: Predictor, data: PreparedData, batch_size: int) -> dict[str, Any]:
    predictor.score([data.test[0].text])  # warm-up, as the other methods load their model before timing
    predicted, wall, peak = timed(lambda: predictor.predict([ex.text for ex in data.test], batch_size))
    correct = sum(p == ex.label for p, ex in zip(predicted, data.test, strict=True))
    return {"accuracy": correct / len(data.test), "wall_s": wall, "peak_memory_bytes": peak}


def trainer_lora(
    backend: HFBackend, template: PromptTemplate, train: Any, args: LoraArgs, seed: int, bf16: bool = False
) -> Any:
    """The plain recipe: Trainer + peft, prompt tokens masked with -100, full-vocabulary logits; in float32
    (Trainer's default) or, with ``bf16``, under its bf16 autocast (``TrainingArguments(bf16=True)``)."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model = get_peft_model(
        copy.deepcopy(backend.model),
        LoraConfig(
            r=args.r,
            lora_alpha=args.alpha,
            lora_dropout=args.dropout,
            target_modules=list(args.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    rows = []
    for ex in train:
        prompt = backend.encode_prompt(template.render(ex.text))
        answer = backend.encode_continuation(template.continuation(ex.label))
        rows.append(
            {
                "input_ids": prompt + answer,
                "attention_mask": [1] * (len(prompt) + len(answer)),
                "labels": [-100] * len(prompt) + answer,
            }
        )
    tokens = sum(len(r["input_ids"]) for r in rows) * args.epochs
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=out,
                num_train_epochs=args.epochs,
                learning_rate=args.lr,
                per_device_train_batch_size=args.batch_size,
                # fewtune's schedule: 10% linear warm-up (transformers 5 takes steps, not a ratio).
                warmup_steps=int(0.1 * args.epochs * -(-len(rows) // args.batch_size)),
                lr_scheduler_type="linear",
                weight_decay=0.0,
                max_grad_norm=1.0,
                seed=seed,
                data_seed=seed,
                report_to=[],
                save_strategy="no",
                logging_steps=10_000,
                use_cpu=not torch.cuda.is_available(),
                bf16=bf16,
                disable_tqdm=True,
                dataloader_num_workers=0,
            ),
            train_dataset=rows,
            data_collator=DataCollatorForSeq2Seq(backend.tokenizer, padding=True),
        )
        _, wall, peak = timed(trainer.train, backend.device)
    merged = model.merge_and_unload().eval()
    predictor = Predictor("lora", HFBackend(merged, backend.tokenizer), template, train_examples=len(train))
    return predictor, {"train_s": wall, "tokens_per_s": tokens / wall, "peak_memory_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--max-test", type=int, default=200)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="LoRA training batch")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="fewtune's scoring batch")
    parser.add_argument(
        "--lm-eval-batch-size",
        type=int,
        default=8,
        help="lm-eval's batch (8 ran faster than 16 on a 2-core CPU: 261 vs 301 s, and 16 peaked at 21 GB)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma list of guide,lm-eval,lora to skip")
    parser.add_argument(
        "--trainer-bf16",
        action="store_true",
        help="the Trainer + peft peer under bf16 autocast, as fewtune trains on a CPU with bf16 units",
    )
    opts = parser.parse_args()
    skip = set(opts.skip.split(","))

    data = prepare_data(
        opts.data / "train.jsonl", opts.data / "test.jsonl", max_test=opts.max_test, seed=opts.seed
    )
    folder = resolve_model(opts.model)
    model, tokenizer = load_model(folder)
    backend = HFBackend(model, tokenizer, name=opts.model, source=str(folder))
    template = PromptTemplate(tuple(data.labels))
    demos = tuple(select_demos(data.pool, opts.shots, "balanced", opts.seed))
    predictor = Predictor("few-shot", backend, template, demos, demo_selection="balanced")
    n = len(data.test)
    rows: dict[str, dict[str, Any]] = {}
    console.print(f"{n} test rows, {opts.shots} shots, {torch.get_num_threads()} threads")
    rows["fewtune"] = fewtune_scoring(predictor, data, opts.eval_batch_size)
    console.print(f"fewtune: {rows['fewtune']}")
    if "guide" not in skip:
        rows["guide"] = guide_method(folder, predictor, data)
        console.print(f"guide: {rows['guide']}")
    if "lm-eval" not in skip and importlib.util.find_spec("lm_eval") is None:
        console.print("lm-eval: not installed (pip install lm-eval), skipped")
    elif "lm-eval" not in skip:
        rows["lm-eval"] = lm_eval_method(folder, predictor, data, opts.lm_eval_batch_size)
        console.print(f"lm-eval: {rows['lm-eval']}")
    for row in rows.values():
        row["examples_per_s"] = n / row["wall_s"]

    lora: dict[str, dict[str, Any]] = {}
    if "lora" not in skip:
        args = LoraArgs(
            train_sizes=[opts.train_size],
            epochs=opts.epochs,
            batch_size=opts.batch_size,
            target_modules=default_target_modules(open_output=False),
        )
        train, _ = stratified_sample(data.pool, opts.train_size, opts.seed)
        plain, lora["trainer"] = trainer_lora(backend, template, train, args, opts.seed, opts.trainer_bf16)
        lora["trainer"]["accuracy"] = fewtune_scoring(plain, data, opts.eval_batch_size)["accuracy"]
        console.print(f"Trainer+peft: {lora['trainer']}")
        with tempfile.TemporaryDirectory() as tmp:
            ours = Lora(backend, template, args, Path(tmp) / "adapter", seed=opts.seed).fit(train)
        fitted = ours.fitted
        assert isinstance(fitted, LocalTraining)
        lora["fewtune"] = {
            "train_s": fitted.train_seconds,
            "tokens_per_s": fitted.train_tokens_per_second,
            "peak_memory_bytes": fitted.peak_memory_bytes,
            "train_precision": fitted.train_precision,
            "accuracy": fewtune_scoring(ours, data, opts.eval_batch_size)["accuracy"],
        }
        console.print(f"fewtune LoRA: {lora['fewtune']}")

    table = Table(title=f"peers on {opts.data.name}: {n} test rows, {opts.shots} shots")
    for col in ("method", "examples/s", "accuracy", "wall s", "peak mem GB", "tokens/s"):
        table.add_column(col)
    gb = lambda b: "-" if b is None else f"{b / 1e9:.1f}"  # noqa: E731
    for name, row in rows.items():
        table.add_row(
            name,
            f"{row['examples_per_s']:.2f}",
            f"{row['accuracy']:.3f}",
            f"{row['wall_s']:.1f}",
            gb(row["peak_memory_bytes"]),
            "-",
        )
    for name, row in lora.items():
        table.add_row(
            f"LoRA {name}",
            "-",
            f"{row['accuracy']:.3f}",
            f"{row['train_s']:.1f}",
            gb(row["peak_memory_bytes"]),
            f"{row['tokens_per_s']:.0f}",
        )
    Console().print(table)
    ratio = lambda a, b: None if a is None or b is None else round(a / b, 2)  # noqa: E731
    eps = {k: v["examples_per_s"] for k, v in rows.items()}
    summary = {
        "dataset": opts.data.name,
        "test_rows": n,
        "shots": opts.shots,
        "device": str(backend.device),
        "threads": torch.get_num_threads(),
        "speedup_vs_guide_method": ratio(eps.get("fewtune"), eps.get("guide")),
        "speedup_vs_lm_eval": ratio(eps.get("fewtune"), eps.get("lm-eval")),
        "lora_speedup_vs_trainer": ratio(
            lora.get("fewtune", {}).get("tokens_per_s"), lora.get("trainer", {}).get("tokens_per_s")
        ),
        "accuracy": {k: v["accuracy"] for k, v in rows.items()},
        "lora_accuracy": {k: v["accuracy"] for k, v in lora.items()},
        "examples_per_s": eps,
        "lora_tokens_per_s": {k: v["tokens_per_s"] for k, v in lora.items()},
        "trainer_bf16": opts.trainer_bf16,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
