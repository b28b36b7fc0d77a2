from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.hf import HFBackend
from fewtune.backends.scoring import LabelTree

PROMPTS = [
    "Input: the film is great fun\nOutput:",
    "Classify the input into exactly one label.\nLabels: negative, positive\n" * 3
    + "Input: a dull story\nOutput:",
    "Input: x",
]
CHOICES = [" positive", " negative", " cancellation inquiry", " praise"]


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    tokenizer = tiny_tokenizer()
    return HFBackend(tiny_model(tokenizer, sliding_window=16), tokenizer)


@pytest.fixture(scope="module")
def wide() -> HFBackend:
    """A window longer than every prompt: rows of different lengths share a padded batch."""
    tokenizer = tiny_tokenizer()
    return HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer)


def naive_scores(
    backend: HFBackend, prompts: list[str] = PROMPTS, choices: list[str] = CHOICES
) -> np.ndarray:
    """Reference: one full forward pass per (prompt, choice), full-vocabulary log-softmax everywhere."""
    out = np.zeros((len(prompts), len(choices)))
    for i, prompt in enumerate(prompts):
        for j, choice in enumerate(choices):
            p, c = backend.encode_prompt(prompt), backend.encode_continuation(choice)
            with torch.no_grad():
                logits = backend.model(torch.tensor([p + c])).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            out[i, j] = sum(lp[len(p) - 1 + t, c[t]].item() for t in range(len(c)))
    return out


def assert_same_up_to_row_constant(scores: np.ndarray, reference: np.ndarray) -> None:
    """Equal log-likelihoods but for the first label token's normalizer, which is the same for every label of
    a row (the backend leaves it out): every difference between two labels of a row must match."""
    assert scores.shape == reference.shape
    np.testing.assert_allclose(scores - scores[:, :1], reference - reference[:, :1], atol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_cached_batched_scores_equal_full_forward(backend: HFBackend, batch_size: int) -> None:
    # The second prompt is longer than the sliding window (16), so this also covers windowed layers.
    assert len(backend.encode_prompt(PROMPTS[1])) > 16
    assert max(len(backend.encode_continuation(c)) for c in CHOICES) > 1
    scores = backend.score_choices(PROMPTS, CHOICES, batch_size=batch_size)
    assert_same_up_to_row_constant(scores, naive_scores(backend))


@pytest.mark.parametrize("batch_size", [2, 8])
@pytest.mark.parametrize("choices", [CHOICES, [" positive", " negative"]], ids=["multi-token", "one-token"])
def test_padded_batches_equal_full_forward(wide: HFBackend, batch_size: int, choices: list[str]) -> None:
    prompts = [PREFIX + p for p in PROMPTS] + PROMPTS
    lengths = {len(wide.encode_prompt(p)) for p in prompts}
    assert len(lengths) == len(prompts)  # every batch mixes lengths, so padding is exercised
    for prefix in ("", PREFIX):
        scores = wide.score_choices(prompts, choices, batch_size=batch_size, prefix=prefix)
        assert_same_up_to_row_constant(scores, naive_scores(wide, prompts, choices))


def test_rows_beyond_the_sliding_window_share_padded_batches(backend: HFBackend) -> None:
    """Multi-token labels after prompts of different lengths, past the 16-token window: one batch for all
    rows (the pass's mask keeps each label token to its row), and the scores of a full forward pass."""
    prompts = [PREFIX + p for p in PROMPTS] + PROMPTS
    lengths = [len(backend.encode_prompt(p)) for p in prompts]
    assert len(set(lengths)) == len(prompts) and max(lengths) > 16
    calls = 0
    decoder = backend._decoder()
    original = decoder.forward

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    decoder.forward = counted
    try:
        scores = backend.score_choices(prompts, SHARED_CHOICES, batch_size=len(prompts))
    finally:
        del decoder.forward
    assert calls == 1
    assert_same_up_to_row_constant(scores, naive_scores(backend, prompts, SHARED_CHOICES))


SHARED_CHOICES = [" card arrival", " card linking", " card", " cash withdrawal", " top up failed"]


@pytest.mark.parametrize("batch_size", [1, 8])
def test_labels_sharing_tokens_score_as_a_full_forward(
    backend: HFBackend, wide: HFBackend, batch_size: int
) -> None:
    tree = LabelTree.build([wide.encode_continuation(c) for c in SHARED_CHOICES])
    assert tree.size < sum(len(wide.encode_continuation(c)) - 1 for c in SHARED_CHOICES)  # shared nodes
    prompts = [PREFIX + p for p in PROMPTS] + PROMPTS
    for model in (wide, backend):  # label tree; beyond the window, per (row, label) pair
        scores = model.score_choices(prompts, SHARED_CHOICES, batch_size=batch_size, prefix=PREFIX)
        assert_same_up_to_row_constant(scores, naive_scores(model, prompts, SHARED_CHOICES))


def test_label_tree_has_one_node_per_label_prefix() -> None:
    tree = LabelTree.build([[5], [7, 8], [7, 9, 10], [7, 9, 11]])
    assert tree.tokens.tolist() == [7, 9] and tree.depth.tolist() == [0, 1] and tree.steps == 2
    assert tree.visible.tolist() == [[True, False], [True, True]]
    # (node, next token, label) for every label token after the first
    assert list(zip(tree.node, tree.target, tree.label, strict=True)) == [
        (0, 8, 1),
        (0, 9, 2),
        (1, 10, 2),
        (0, 9, 3),
        (1, 11, 3),
    ]
    assert LabelTree.build([[5], [6]]).size == 0


PREFIX = "Classify the input into exactly one label.\nLabels: negative, positive\n---\n" * 2


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_prefix_cache_gives_the_same_scores(backend: HFBackend, prefix_caching: bool) -> None:
    prompts = [PREFIX + p for p in PROMPTS]
    assert len(backend.encode_prompt(PREFIX)) > 16  # the cached prefix alone overflows the sliding window
    backend.prefix_caching = prefix_caching
    try:
        cached = backend.score_choices(prompts, CHOICES, batch_size=2, prefix=PREFIX)
        single = np.vstack([backend.score_choices([p], CHOICES, prefix=PREFIX) for p in prompts])
    finally:
        backend.prefix_caching = True
    plain = backend.score_choices(prompts, CHOICES)
    np.testing.assert_allclose(cached, plain, atol=1e-4)
    np.testing.assert_allclose(single, plain, atol=1e-4)


def test_prompts_not_starting_with_the_prefix_are_scored_whole(backend: HFBackend) -> None:
    prompts = [PREFIX + PROMPTS[0], PROMPTS[1]]
    np.testing.assert_allclose(
        backend.score_choices(prompts, CHOICES, prefix=PREFIX),
        backend.score_choices(prompts, CHOICES),
        atol=1e-4,
    )


def test_progress_counts_every_prompt(backend: HFBackend) -> None:
    seen: list[int] = []
    backend.score_choices(PROMPTS, CHOICES, batch_size=2, progress=seen.append)
    assert sum(seen) == len(PROMPTS)


def test_generate_is_greedy_and_deterministic(backend: HFBackend) -> None:
    first = backend.generate(PROMPTS[:2], max_new_tokens=3)
    assert first == backend.generate(PROMPTS[:2], max_new_tokens=3)
    assert len(first) == 2 and all(isinstance(t, str) for t in first)


def test_count_tokens_includes_bos(backend: HFBackend) -> None:
    assert (
        backend.count_tokens("Input: x")
        == len(backend.tokenizer("Input: x", add_special_tokens=False).input_ids) + 1
    )
