"""Near-duplicate search over unit sentence vectors: every pair at or above a cosine threshold, computed a
block of rows at a time so a 10,000-row pool never builds the full similarity square."""

from __future__ import annotations

import heapq

import numpy as np

# Cosine (all-MiniLM-L6-v2, unit vectors) at or above which two texts count as near duplicates. Measured
# with fewtune's embedder on ../shared/datasets and crafted pairs: rewordings that keep every content word sit
# at 0.97-0.98 ("How do I top up?" / "How can I top up?" 0.983, "Where is my card?" / "Where's my card?"
# 0.975); close paraphrases of one banking77 request at 0.95-0.97 ("How do I activate my new card I just got?"
# / "Could you please tell me how to activate my new card?" 0.954); same intent in other words at 0.86-0.95;
# and every meaning-changing pair we tried below 0.92 (sst2 "one of the worst movies of the year ." / "it is
# n't quite one of the worst ..." 0.908, "good" / "not good" 0.80, "best" / "worst" 0.73, banking77 "activate"
# / "cancel my card" 0.59). So a pair at 0.95+ says the same thing: different labels are a contradiction and a
# test row with a pool twin is answered by its demos or training rows.
NEAR_DUPLICATE_COSINE = 0.95
# Rows of similarities computed at a time: a 2,048 x 10,000 float32 block is 80 MB, never the full square.
SIMILARITY_BLOCK_ROWS = 2048
# Near-duplicate pairs kept in memory and in results (the most similar first); counts stay complete.
MAX_PAIRS_KEPT = 1000


def near_pairs(
    rows: np.ndarray, others: np.ndarray, labels: list[str] | None = None
) -> tuple[list[tuple[float, int, int]], int, int]:
    """Pairs (cosine, i, j) at or above the threshold, most similar first (at most MAX_PAIRS_KEPT), their
    full count, and how many ``others`` rows have one. With ``labels`` (``others`` is ``rows``) each
    unordered pair counts once, and only when its two labels differ."""
    kept: list[tuple[float, int, int]] = []  # a min-heap on (cosine, -i, -j): ties go to earlier rows
    count, hit = 0, np.zeros(len(others), dtype=bool)
    label_ids = None if labels is None else np.unique(labels, return_inverse=True)[1]
    for start in range(0, len(rows), SIMILARITY_BLOCK_ROWS):
        block = rows[start : start + SIMILARITY_BLOCK_ROWS] @ others.T
        if label_ids is not None:  # keep j > i only, with different labels
            block[np.tril(np.ones(block.shape, dtype=bool), k=start)] = 0.0
        i_idx, j_idx = np.nonzero(block >= NEAR_DUPLICATE_COSINE)
        if label_ids is not None:
            differ = label_ids[i_idx + start] != label_ids[j_idx]
            i_idx, j_idx = i_idx[differ], j_idx[differ]
        count += len(i_idx)
        hit[j_idx] = True
        for i, j in zip(i_idx.tolist(), j_idx.tolist(), strict=True):
            key = (round(float(block[i, j]), 4), -(start + i), -j)
            if len(kept) < MAX_PAIRS_KEPT:
                heapq.heappush(kept, key)
            elif key > kept[0]:
                heapq.heapreplace(kept, key)
    return [(cos, -i, -j) for cos, i, j in sorted(kept, reverse=True)], count, int(hit.sum())
