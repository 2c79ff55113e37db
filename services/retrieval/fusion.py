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
