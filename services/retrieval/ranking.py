"""A search, engine-neutral: what it asks of the engine and what follows it.

`plan_search` validates a search and decides its legs, their size and the
engine filter; a store runs the plan in its engine, hands back the points as
`Candidate`s, and `hits` finishes: MMR if asked for, then cosine scores. Every
backend thereby rejects the same inputs with the same messages and ranks alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from qdrant_edge import SparseVector

from services.retrieval import filters
from services.retrieval.mmr import mmr_order
from services.retrieval.schema import chunk_from_payload, query_terms
from services.retrieval.store import (
    Caller,
    RetrievalMode,
    SearchFilter,
    SearchHit,
    SearchOptions,
    validate_caller,
    validate_filter,
    validate_search_options,
    validate_top_k,
    validate_vector,
)


def candidate_count(top_k: int) -> int:
    """Chunks fetched per leg (and for MMR) to return `top_k` after re-ranking.

    Fusion and MMR can only promote what a leg fetched: a chunk at rank 30 in
    one leg and rank 2 in the other must be in both candidate lists to get its
    fused credit, so each leg fetches several times top_k, at least 20.
    """
    return max(top_k * 4, 20)


@dataclass(frozen=True)
class SearchPlan:
    """A validated search, as every engine runs it."""

    tenant: str
    top_k: int
    filter: filters.AllOf
    """Applied to every leg and to the fused query."""
    dense: list[float] | None
    """The dense leg's query vector; None in keyword mode."""
    terms: SparseVector | None
    """The keyword leg's BM25 query; None in dense mode."""
    query_vector: list[float] | None
    """The vector hits are scored against (cosine); None for a keyword search
    without one, whose hits keep their BM25 scores."""
    leg_size: int
    """Chunks each leg fetches (`candidate_count`)."""
    limit: int
    """Chunks the engine returns: top_k, or the MMR candidates."""
    mmr_lambda: float

    @property
    def fused(self) -> bool:
        """Both legs run and are fused by RRF."""
        return self.dense is not None and self.terms is not None

    @property
    def fetch(self) -> int:
        """Chunks the engine ranks before `best_first` cuts them to `limit`: the
        legs' union when fused, else one leg (so that ties at the cut are
        broken alike by every engine)."""
        return 2 * self.leg_size if self.fused else self.leg_size

    @property
    def needs_vectors(self) -> bool:
        """Whether hits need their dense vectors (MMR, cosine scores)."""
        return self.mmr_lambda > 0 or self.query_vector is not None


def plan_search(
    caller: Caller,
    vector: Sequence[float],
    top_k: int,
    search_filter: SearchFilter,
    options: SearchOptions,
    dimension: int,
) -> SearchPlan:
    """The plan of a search, or InvalidInputError naming what is wrong.

    `vector` may be empty in keyword mode; given, it still scores the hits.
    """
    validate_caller(caller)
    validate_filter(search_filter)
    validate_top_k(top_k)
    validate_search_options(options)
    query_vector = (
        validate_vector(vector, dimension, "query vector")
        if vector or options.mode is not RetrievalMode.KEYWORD
        else None
    )
    leg_size = candidate_count(top_k)
    return SearchPlan(
        tenant=caller.tenant,
        top_k=top_k,
        filter=filters.search_filter(caller, search_filter),
        dense=query_vector if options.mode is not RetrievalMode.KEYWORD else None,
        terms=query_terms(options.text) if options.mode is not RetrievalMode.DENSE else None,
        query_vector=query_vector,
        leg_size=leg_size,
        limit=leg_size if options.mmr_lambda > 0 else top_k,
        mmr_lambda=options.mmr_lambda,
    )


class Ranked(Protocol):
    """A scored chunk: an engine's point whose id is the chunk id, or a `Candidate`."""

    @property
    def id(self) -> Any: ...
    @property
    def score(self) -> float: ...


RankedT = TypeVar("RankedT", bound=Ranked)


def best_first(points: Sequence[RankedT], limit: int) -> list[RankedT]:
    """The `limit` best of `points`, ties broken by chunk id.

    Engines order equal scores arbitrarily, and each engine differently, so the
    same request could cite different chunks from one call (or one backend) to
    the next. Ties are common: RRF gives exactly equal scores to chunks at the
    same ranks of different legs (dense rank 3 only, keyword rank 3 only), and
    a paragraph repeated in several documents scores alike in every mode. Every
    search's results pass through here, and fused searches fetch every fused
    candidate (up to twice a leg's size: the union of both legs) before the
    cut, so identical requests get identical results, MMR's pool included.
    Scores are compared in 32 bits, the engines' precision, so that a tie in
    one engine is a tie in the other.
    """
    scores = np.asarray([point.score for point in points], dtype=np.float32).tolist()
    keys = [(-score, str(point.id)) for score, point in zip(scores, points, strict=True)]
    order = sorted(range(len(points)), key=keys.__getitem__)
    return [points[i] for i in order[:limit]]


@dataclass(frozen=True)
class Candidate:
    """A chunk the engine returned: its id, score, payload and, when the plan
    `needs_vectors`, its dense vector."""

    id: str
    score: float
    payload: Mapping[str, Any]
    dense: Sequence[float] | None = None


def hits(plan: SearchPlan, candidates: Sequence[Candidate]) -> list[SearchHit]:
    """The search's results: MMR's `top_k` of the candidates if asked for, each
    scored by its cosine to the query vector when there is one.

    Fused (RRF) and BM25 scores have no fixed scale, while consumers threshold
    the score (the extractive answerer declines below a tuned cosine, the
    top-score metric tracks cosine); so whenever the query has a vector, every
    mode reports cosine and only the order depends on the mode.
    """
    chosen = list(candidates)
    if plan.mmr_lambda > 0 and chosen:
        order = mmr_order(
            [c.score for c in chosen], [_dense(c) for c in chosen], plan.top_k, plan.mmr_lambda
        )
        chosen = [chosen[i] for i in order]
    if plan.query_vector is None or not chosen:
        return [SearchHit(chunk_from_payload(c.payload), c.score) for c in chosen]
    query = np.asarray(plan.query_vector, dtype=np.float64)
    matrix = np.asarray([_dense(c) for c in chosen], dtype=np.float64)
    cosines = (matrix @ query) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    return [
        SearchHit(chunk_from_payload(c.payload), float(cosine))
        for c, cosine in zip(chosen, cosines, strict=True)
    ]


def _dense(candidate: Candidate) -> Sequence[float]:
    if candidate.dense is None:
        raise TypeError("a candidate came back without its dense vector")
    return candidate.dense
