"""The server's prompt scoring: continuing from a shared prefix's KV cache scores as the whole pass does."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.hf import HFBackend
from fewtune.serve import prompt_scores
from fewtune.serve.prompt_scores import prefix_state, score_tokens
from fewtune.serve.tokens import TokenScores, shared_prefix

DEMOS = "Classify the input.\n---\nInput: a fine film\nOutput: positive\n---\nInput: dull\nOutput: negative\n"
TEXTS = ["great acting", "a bore", "not bad at all, a real surprise of a film", "meh"]
LABELS = ("positive", "negative", "very positive", "very negative")


def _prompts() -> list[str]:
    """Label prompts as a client sends them (one per label, each with the demos and the input), plus a prompt
    that is another's start, a duplicate, and one that does not start with the demo block."""
    prompts = [f"{DEMOS}---\nInput: {t}\nOutput: {y}" for t in TEXTS for y in LABELS]
    prompts += [f"{DEMOS}---\nInput: {TEXTS[0]}\nOutput:", prompts[0], f"{DEMOS}---\nInput:a"]
    prompts.append("Another task altogether\nOutput: x")
    return prompts


def _plain(backend: HFBackend, ids: list[int], top: int) -> TokenScores:
    """The reference: a plain forward pass of the whole sequence, a full log-softmax at every position."""
    with torch.no_grad():
        logits = backend.model(torch.tensor([ids])).logits[0].float()
    table = torch.log_softmax(logits, dim=-1)[:-1]
    read = table.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()
    best = [
        list(zip(i, v, strict=True))
        for i, v in zip(*(x.tolist() for x in table.topk(top)[::-1]), strict=True)
    ]
    return TokenScores(ids, [None, *read], [None, *(b if top else [] for b in best)])


def _assert_same(got: list[TokenScores], want: list[TokenScores]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.ids == b.ids
        assert a.logprobs[0] is None and b.logprobs[0] is None
        assert a.logprobs[1:] == pytest.approx(b.logprobs[1:], abs=1e-5)
        assert len(a.top) == len(b.top) and a.top[0] is None
        for x, y in zip(a.top[1:], b.top[1:], strict=True):
            assert [t for t, _ in x] == [t for t, _ in y]
            assert [v for _, v in x] == pytest.approx([v for _, v in y], abs=1e-5)


@pytest.mark.parametrize("top", [0, 3])
@pytest.mark.parametrize("row_tokens", [128, 4])
@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("window", [512, 24])
def test_scores_equal_a_plain_forward_pass(
    window: int, cached: bool, row_tokens: int, top: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether prompts continue from the demo block's cache or not, share tokens in one trie or not, and
    are packed into one row or many (4 tokens: every subtree is wider, so each gets a row of its own)."""
    monkeypatch.setattr(prompt_scores, "ROW_TOKENS", row_tokens)
    tokenizer = tiny_tokenizer()
    backend = HFBackend(tiny_model(tokenizer, sliding_window=window), tokenizer)
    prompts = _prompts()
    sequences = [backend.encode_prompt(p) for p in prompts]
    prefix = shared_prefix(prompts[:-1])
    assert prefix.endswith("---\nInput:")
    state = prefix_state(backend, backend.encode_prompt(prefix), top=top) if cached else None
    # A window shorter than the prompts sends every row down the plain pass; 512 continues from the cache.
    got = score_tokens(backend, sequences, top=top, batch_size=3, prefix=state)
    _assert_same(got, [_plain(backend, ids, top) for ids in sequences])
    if cached:
        with pytest.raises(ValueError, match=f"top={top}"):
            score_tokens(backend, sequences, top=top + 1, prefix=state)


def test_prompts_one_token_past_the_prefix_need_no_forward_pass() -> None:
    tokenizer = tiny_tokenizer()
    backend = HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer)
    state = prefix_state(backend, backend.encode_prompt(f"{DEMOS}---\nInput:"), top=2)
    sequences = [[*state.ids, token] for token in (5, 9, 5)]
    calls: list[int] = []
    hook = backend.model.get_decoder().register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        got = score_tokens(backend, sequences, top=2, prefix=state)
    finally:
        hook.remove()
    assert not calls  # the prefix's last hidden state predicts them all
    _assert_same(got, [_plain(backend, ids, 2) for ids in sequences])


def test_the_prefix_runs_once_and_tokens_prompts_share_run_once() -> None:
    """After the demo block, each distinct run of leading tokens is fed to the model once: a request's label
    prompts share their input, so it runs once, not once per label, and the labels' last tokens not at all."""
    tokenizer = tiny_tokenizer()
    backend = HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer)
    prompts = [f"{DEMOS}---\nInput: {t}\nOutput: {y}" for t in TEXTS for y in LABELS]
    state = prefix_state(backend, backend.encode_prompt(shared_prefix(prompts)))
    sequences = [backend.encode_prompt(p) for p in prompts]
    seen: list[int] = []
    hook = backend.model.get_decoder().register_forward_hook(
        lambda _m, _args, kwargs, _out: seen.append(int((kwargs["input_ids"] != backend.pad_id).sum())),
        with_kwargs=True,
    )
    try:
        score_tokens(backend, sequences, batch_size=2, prefix=state)
    finally:
        hook.remove()
    # Every distinct run of tokens after the prefix once; the prefix never, nor a prompt's last token, whose
    # hidden state predicts nothing (no prompt here is the start of another).
    fed = {tuple(s[: n + 1]) for s in sequences for n in range(len(state.ids), len(s) - 1)}
    assert sum(seen) == len(fed)
    assert len(fed) < 0.6 * sum(len(s) - len(state.ids) for s in sequences)


def test_generated_logprobs_keep_only_the_chosen_token_and_its_top_alternatives() -> None:
    """generate is not asked for every step's full-vocabulary logits (1 MiB a token on a 262k vocabulary);
    what each step keeps still equals a full forward pass's log-probabilities."""
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
