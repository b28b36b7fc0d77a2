"""The server's prompt scoring: continuing from a shared prefix's KV cache scores as the whole pass does."""

from __future__ import annotations

import pytest
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.hf import HFBackend
from fewtune.serve.tokens import prefix_state, score_tokens, shared_prefix

DEMOS = "Classify the input.\n---\nInput: a fine film\nOutput: positive\n---\nInput: dull\nOutput: negative\n"
TEXTS = ["great acting", "a bore", "not bad at all, a real surprise of a film", "meh"]


def _assert_same(got: list, want: list) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.ids == b.ids
        assert a.logprobs[0] is None and b.logprobs[0] is None
        assert a.logprobs[1:] == pytest.approx(b.logprobs[1:], abs=1e-5)
        assert [dict(t or []).keys() for t in a.top] == [dict(t or []).keys() for t in b.top]


@pytest.mark.parametrize("window", [512, 24])
def test_scores_after_a_cached_prefix_equal_the_whole_pass(window: int) -> None:
    tokenizer = tiny_tokenizer()
    backend = HFBackend(tiny_model(tokenizer, sliding_window=window), tokenizer)
    prompts = [f"{DEMOS}---\nInput: {t}\nOutput: {y}" for t in TEXTS for y in ("positive", "negative")]
    prompts.append("Another task altogether\nOutput: x")  # does not start with the prefix: scored whole
    sequences = [backend.encode_prompt(p) for p in prompts]
    prefix = shared_prefix(prompts[:-1])
    assert prefix.endswith("---\nInput:")
    state = prefix_state(backend, backend.encode_prompt(prefix), top=3)
    # A window shorter than the prompts sends every row down the whole pass; 512 continues from the cache.
    whole = score_tokens(backend, sequences, top=3, batch_size=3)
    cached = score_tokens(backend, sequences, top=3, batch_size=3, prefix=state)
    _assert_same(cached, whole)
    assert all(len(s.ids) == len(q) for s, q in zip(cached, sequences, strict=True))
    with pytest.raises(ValueError, match="top=3"):
        score_tokens(backend, sequences, top=0, prefix=state)


def test_a_cached_prefix_is_run_once_across_calls() -> None:
    tokenizer = tiny_tokenizer()
    backend = HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer)
    prompts = [f"{DEMOS}---\nInput: {t}\nOutput:" for t in TEXTS]
    state = prefix_state(backend, backend.encode_prompt(shared_prefix(prompts)))
    seen: list[int] = []
    hook = backend.model.get_decoder().register_forward_hook(
        lambda _m, args, kwargs, _out: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        score_tokens(backend, [backend.encode_prompt(p) for p in prompts], batch_size=2, prefix=state)
    finally:
        hook.remove()
    # Two batches of two rows, each running only the rows' own tokens after the demo block.
    longest_tail = max(len(backend.encode_prompt(p)) - len(state.ids) for p in prompts)
    assert len(seen) == 2 and max(seen) == longest_tail


def test_generated_logprobs_keep_only_the_chosen_token_and_its_top_alternatives() -> None:
    """generate is not asked for every step's full-vocabulary logits (1 MiB a token on a 262k vocabulary);
    what each step keeps still equals a full forward pass's log-probabilities."""
    import torch

    from fewtune.serve.tokens import generate_scored

    tokenizer = tiny_tokenizer()
    backend = HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer)
    asked: list[dict] = []
    returned: list[object] = []
    generate = backend.model.generate

    def spy(*args: object, **kwargs: object) -> object:
        asked.append(kwargs)
        returned.append(out := generate(*args, **kwargs))
        return out

    backend.model.generate = spy
    ids = backend.encode_prompt(f"{DEMOS}---\nInput: {TEXTS[0]}\nOutput:")
    generation, scores = generate_scored(backend, ids, max_new_tokens=12, stop=None, top=3)
    (kwargs,) = asked
    assert not any(kwargs.get(k) for k in ("output_logits", "output_scores", "return_dict_in_generate"))
    assert isinstance(returned[0], torch.Tensor)  # the tokens only, no per-step logits
    assert generation.output_tokens == len(scores.ids) == 12
    with torch.no_grad():
        full = torch.log_softmax(backend.model(torch.tensor([ids + scores.ids])).logits[0].float(), dim=-1)
    rows = full[len(ids) - 1 : -1]
    chosen = rows.gather(1, torch.tensor(scores.ids)[:, None]).squeeze(1).tolist()
    assert scores.logprobs == pytest.approx(chosen, abs=1e-4)
    for row, top in zip(rows, scores.top, strict=True):
        assert top is not None and len(top) == 3
        assert [t for t, _ in top] == row.topk(3).indices.tolist()
