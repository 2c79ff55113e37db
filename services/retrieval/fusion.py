"""Reciprocal rank fusion (RRF) of ranked result lists, in pure Python.

The embedded engine fuses its hybrid legs itself; this module is for fusion done
outside an engine (the evaluation's parameter sweep, a backend without native
fusion) and follows the engine's formula exactly so both rank alike: an item at
0-based rank r in a list earns weight / (k + r), summed over the lists it is in.
(Cormack et al. use 1-based ranks, i.e. k one larger for the same ordering.)
RRF uses ranks only, so legs with incomparable scores (cosine, BM25) fuse without
any score normalisation.
"""

from collections.abc import Hashable, Sequence
from typing import TypeVar

import numpy as np

RRF_K = 60
"""The usual constant: large k flattens the bonus of the very top ranks."""

Key = TypeVar("Key", bound=Hashable)


def rrf(
    rankings: Sequence[Sequence[Key]],
    k: float = RRF_K,
    weights: Sequence[float] | None = None,
) -> list[tuple[Key, float]]:
    """Fuse best-first `rankings` into one best-first list of (item, score).

    An item repeated within one ranking counts at its best rank. Ties are broken
    by first appearance (earlier rankings first), so the result is deterministic.
    """
    if k < 0:
        raise ValueError(f"k must not be negative, got {k}")
    if weights is not None and len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights given for {len(rankings)} rankings")
    scores: dict[Key, float] = {}
    for index, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[index]
        seen: set[Key] = set()
        for rank, item in enumerate(ranking):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


def engine_rrf(rankings: Sequence[Sequence[Key]], k: float = RRF_K) -> list[tuple[Key, float]]:
    """`rrf` in the embedded engine's arithmetic: 32-bit floats, summed in the
    order of `rankings`, so that scores (and what MMR makes of them) are
    bit-identical to the engine's own fusion of the same legs."""
    scores: dict[Key, np.float32] = {}
    for ranking in rankings:
        seen: set[Key] = set()
        for rank, item in enumerate(ranking):
            if item in seen:
                continue
            seen.add(item)
            weight = np.float32(1.0) / (np.float32(rank) + np.float32(k))
            scores[item] = np.float32(scores.get(item, np.float32(0.0)) + weight)
    return sorted(((item, float(score)) for item, score in scores.items()), key=lambda p: -p[1])
