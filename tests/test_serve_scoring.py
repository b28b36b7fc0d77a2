"""The engine's label scoring (``echo`` + ``logprobs``, ``max_tokens`` 0): concurrent requests that share a
demo block answer as each prompt would alone, and a changed adapter never scores with a stale prefix."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from servers import make_adapter
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.hf import HFBackend
from fewtune.serve.adapters import AdapterPolicy, AdapterSet
from fewtune.serve.engine import Engine
from fewtune.serve.jobs import Job, Output
from fewtune.serve.tokens import LegacyLogprobs, TokenScores, legacy_logprobs

BASE = "tiny-base"
DEMOS = "Classify the input into exactly one label.\nLabels: negative, positive\n---\n"
DEMOS += (
    "Input: the film is great fun\nOutput: positive\n---\nInput: a dull and tired story\nOutput: negative\n"
)
INPUTS = ["great fun", "a dull story", "the film", "tired and dull, a dull film", "ok", "fun fun", "x"]
LABELS = ("positive", "negative", "very positive")


def _request(text: str, top: int) -> Job:
    """What a client scoring labels sends: one prompt per label, the demos and the input in each."""
    prompts = [f"{DEMOS}---\nInput: {text}\nOutput: {label}" for label in LABELS]
    return Job(None, prompts, 0, logprobs=top, echo=True)


def _alone(backend: HFBackend, prompt: str, top: int) -> LegacyLogprobs:
    """The answer for ``prompt`` on its own: a plain forward pass and a full log-softmax at every position."""
    ids = list(backend.tokenizer(prompt).input_ids)
    with torch.no_grad():
        table = torch.log_softmax(backend.model(torch.tensor([ids])).logits[0].float(), dim=-1)[:-1]
    read = table.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()
    values, indices = table.topk(top)
    best = [list(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    return legacy_logprobs(backend.tokenizer, TokenScores(ids, [None, *read], [None, *best]))


def _assert_same(got: LegacyLogprobs | None, want: LegacyLogprobs) -> None:
    assert got is not None
    assert got["tokens"] == want["tokens"] and got["text_offset"] == want["text_offset"]
    assert got["token_logprobs"][0] is None and want["token_logprobs"][0] is None
    assert got["token_logprobs"][1:] == pytest.approx(want["token_logprobs"][1:], abs=1e-4)
    assert got["top_logprobs"][0] is None
    for mine, theirs in zip(got["top_logprobs"][1:], want["top_logprobs"][1:], strict=True):
        assert mine is not None and theirs is not None and mine.keys() == theirs.keys()
        assert list(mine.values()) == pytest.approx(list(theirs.values()), abs=1e-4)


def _started(adapters: AdapterSet, **settings: Any) -> Engine:
    engine = Engine(adapters, **settings)
    engine.start()
    return engine


@pytest.mark.parametrize("top", [0, 2])
def test_concurrent_score_requests_answer_as_each_prompt_alone(top: int) -> None:
    tokenizer = tiny_tokenizer()
    adapters = AdapterSet(tiny_model(tokenizer, sliding_window=512), tokenizer, BASE)
    reference = HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer)
    engine = Engine(adapters, max_batch=8)
    batches: list[int] = []
    engine.on_batch = batches.append
    jobs = [_request(text, top) for text in INPUTS * 2]
    together = [engine.submit(job) for job in jobs]  # all waiting when the worker starts
    engine.start()
    try:
        answers: list[list[Output]] = [future.result(timeout=60) for future in together]
        one_by_one = [engine.submit(_request(text, top)).result(timeout=60) for text in INPUTS]
    finally:
        engine.close()
    # Scoring requests waiting together run as one batch, past max_batch (which bounds generation).
    assert batches == [len(jobs) * len(LABELS)] + [len(LABELS)] * len(INPUTS)
    for job, outputs in zip(jobs + [_request(t, top) for t in INPUTS], answers + one_by_one, strict=True):
        assert len(outputs) == len(job.prompts)
        for prompt, output in zip(job.prompts, outputs, strict=True):
            assert output.prompt_tokens == len(tokenizer(prompt).input_ids) and output.completion_tokens == 0
            _assert_same(output.logprobs, _alone(reference, prompt, top))


def test_a_batch_takes_scoring_beyond_max_batch_but_generation_up_to_it() -> None:
    """Prompts to generate still close a batch at max_batch, with scoring requests in it or not, and an
    adapter change still closes it, so that it runs after the jobs queued before it."""
    tokenizer = tiny_tokenizer()
    engine = Engine(AdapterSet(tiny_model(tokenizer, sliding_window=512), tokenizer, BASE), max_batch=4)
    batches: list[int] = []
    engine.on_batch = batches.append
    prompt = f"{DEMOS}---\nInput: {INPUTS[0]}\nOutput:"
    futures = [engine.submit(_request(text, 0)) for text in INPUTS[:5]]  # 15 prompts to score
    futures += [engine.submit(Job(None, [prompt], 2)) for _ in range(6)]  # 6 to generate
    unload = engine.unload_adapter("not-loaded")  # a control item: it fails, in its turn
    futures += [engine.submit(_request(text, 0)) for text in INPUTS[:2]]
    engine.start()
    try:
        for future in futures:
            future.result(timeout=60)
        with pytest.raises(Exception, match="not-loaded"):
            unload.result(timeout=60)
    finally:
        engine.close()
    assert batches == [15, 4, 2, 6]


def _adapted(tokenizer: Any, folder: Path) -> HFBackend:
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(tiny_model(tokenizer, sliding_window=512), str(folder))
    return HFBackend(model, tokenizer)


def test_a_switched_or_reloaded_adapter_never_scores_with_a_stale_prefix(tmp_path: Path) -> None:
    """The demo block's KV cache and scores are kept across batches; they belong to the weights that made
    them: the base and each adapter keep their own, and an adapter unloaded and loaded again under the same
    name (new weights) starts afresh."""
    tokenizer = tiny_tokenizer()
    first = make_adapter(tokenizer, tmp_path / "first", seed=1)
    second = make_adapter(tokenizer, tmp_path / "second", seed=2)
    adapters = AdapterSet(
        tiny_model(tokenizer, sliding_window=512), tokenizer, BASE, policy=AdapterPolicy.of([tmp_path])
    )
    references = {
        None: HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer),
        "first": _adapted(tokenizer, first),
        "second": _adapted(tokenizer, second),
    }
    engine = _started(adapters, max_batch=8, batch_wait_ms=5)

    def check(model: str | None, weights: str | None) -> None:
        job = _request(INPUTS[0], 0)
        job.adapter = model
        for prompt, output in zip(job.prompts, engine.submit(job).result(timeout=60), strict=True):
            _assert_same(output.logprobs, _alone(references[weights], prompt, 0))

    try:
        check(None, None)
        engine.load_adapter("tuned", first).result(timeout=60)
        check("tuned", "first")
        check(None, None)  # switched back to the base: its own prefix, not the adapter's
        check("tuned", "first")
        engine.load_adapter("other", second).result(timeout=60)
        check("tuned", "first")  # another adapter loaded beside it changes nothing
        check("other", "second")
        engine.unload_adapter("tuned").result(timeout=60)
        engine.load_adapter("tuned", second).result(timeout=60)  # same name, new weights
        check("tuned", "second")
        engine.unload_adapter("other").result(timeout=60)
        engine.unload_adapter("tuned").result(timeout=60)  # the last one gone: the bare base again
        engine.load_adapter("tuned", first).result(timeout=60)
        check("tuned", "first")
        check(None, None)
    finally:
        engine.close()
