"""How far a plain LoRA adapter's test predictions move with training noise alone, as the yardstick for
bf16 training: the same training rows, trained in float32 with seed 0 and seed 1 (another LoRA init,
dropout masks and batch order), and in bf16 (autocast) with seed 0; every adapter scored in float32 on the
same test rows. Prints the per-row agreement of each pair and each adapter's accuracy.

    .venv/bin/python bench/lora_noise.py --data ../shared/datasets/sst2 --train-size 100 --max-test 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from fewtune.backends.hf import HFBackend
from fewtune.backends.models import load_model, resolve_model
from fewtune.backends.precision import Precision, mark
from fewtune.config import LoraArgs
from fewtune.data.load import load_examples
from fewtune.data.split import stratified_sample
from fewtune.prompts.template import PromptTemplate
from fewtune.training.lora import Lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/sst2"))
    parser.add_argument("--train-size", type=int, default=100)
    parser.add_argument("--max-test", type=int, default=200)
    args = parser.parse_args()
    pool = load_examples(args.data / "train.jsonl")
    test = load_examples(args.data / "test.jsonl")[: args.max_test]
    train = stratified_sample(pool, args.train_size, 0)[0]
    labels = tuple(sorted({ex.label for ex in pool}))
    template = PromptTemplate(labels)
    model, tokenizer = load_model(resolve_model(), precision="fp32")
    backend = HFBackend(model, tokenizer, source=str(resolve_model()))
    predictions: dict[str, np.ndarray] = {}
    runs = (("fp32 seed 0", 0, False), ("fp32 seed 1", 1, False), ("bf16 seed 0", 0, True))
    for name, seed, train_bf16 in runs:
        # Training under bf16 autocast or not; scoring in float32 either way (the adapter is merged).
        mark(model, Precision("cpu", torch.float32, torch.bfloat16 if train_bf16 else None))
        with tempfile.TemporaryDirectory() as folder:
            predictor = Lora(backend, template, LoraArgs(), Path(folder), seed=seed).fit(train)
            trained = predictor.backend
            assert trained.precision.score is None
            scores = trained.score_choices(
                [template.render(ex.text) for ex in test], [template.continuation(lab) for lab in labels]
            )
        predictions[name] = np.asarray(labels)[scores.argmax(1)]
        accuracy = float(np.mean(predictions[name] == np.asarray([ex.label for ex in test])))
        print(f"{name}: accuracy {accuracy:.3f}", flush=True)
    names = list(predictions)
    pairs = {
        f"{a} vs {b}": float(np.mean(predictions[a] == predictions[b]))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    for pair, agreement in pairs.items():
        print(f"{pair}: {agreement:.1%} of {len(test)} rows agree")
    print(json.dumps({"agreement": pairs, "train_size": args.train_size, "test_rows": len(test)}))


if __name__ == "__main__":
    main()
