"""Maximal marginal relevance (MMR) re-ranking, in pure Python and numpy.

Chunked corpora hold near-duplicates (the same paragraph in two versions of a
policy, overlapping sections), and a top-k of five copies of one passage wastes
the prompt. MMR picks greedily the candidate maximising

    lambda * relevance - (1 - lambda) * max cosine to the chunks already picked,

so lambda = 1 is the original order and smaller values favour diversity.
Relevance is the engine's score rescaled to [0, 1] over the candidates, because
its scale depends on the mode (cosine, BM25, RRF) while the redundancy term is
a cosine; the rescaling puts both on the same footing in every mode.
"""

from collections.abc import Sequence

import numpy as np


def mmr_order(
    relevance: Sequence[float],
    vectors: Sequence[Sequence[float]],
    top_k: int,
    mmr_lambda: float,
) -> list[int]:
    """Return the indices of up to `top_k` candidates in MMR order.

    `relevance` and `vectors` describe the same candidates (best first or not);
    vectors need not be normalised.
    """
    if not 0.0 <= mmr_lambda <= 1.0:
        raise ValueError(f"mmr_lambda must be between 0 and 1, got {mmr_lambda}")
    if len(relevance) != len(vectors):
        raise ValueError(f"{len(relevance)} scores given for {len(vectors)} vectors")
    count = min(top_k, len(relevance))
    if count <= 0:
        return []
    scores = np.asarray(relevance, dtype=np.float64)
    spread = float(scores.max() - scores.min())
    scaled = (scores - scores.min()) / spread if spread > 0 else np.ones_like(scores)
    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.where(norms > 0, norms, 1.0)
    similarity = unit @ unit.T
    redundancy = np.full(len(scores), -np.inf)  # max similarity to the picked ones
    available = np.ones(len(scores), dtype=bool)
    picked: list[int] = []
    for _ in range(count):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        value = mmr_lambda * scaled - (1.0 - mmr_lambda) * penalty
        value[~available] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, similarity[best])
    return picked
