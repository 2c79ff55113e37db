"""Ranking metrics of retrieval evaluation (BEIR conventions), in pure Python.

They follow trec_eval as BEIR runs it, so figures compare with published ones:
nDCG uses the graded relevance as gain, discounted by log2(rank + 1); qrels
with relevance 0 are judged non-relevant; a query without relevant documents
is left out of the means (it has no ideal ranking to compare with).
"""

import math
from collections.abc import Mapping, Sequence

Qrels = Mapping[str, Mapping[str, int]]
"""query id -> document id -> graded relevance."""


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Normalised discounted cumulative gain of the first `k` of `ranked`."""
    gains = sorted((g for g in relevance.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))
    if ideal == 0:
        return 0.0
    found = sum(relevance.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    return found / ideal


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents that are among the first `k` of `ranked`."""
    relevant = {doc for doc, g in relevance.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document within the first `k`, else 0."""
    for rank, doc in enumerate(ranked[:k], start=1):
        if relevance.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def evaluate_run(run: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@10, recall@10, recall@100 and MRR@10 over the judged queries of `run`.

    A judged query missing from `run` counts as retrieving nothing.
    """
    judged = [q for q, rel in qrels.items() if any(g > 0 for g in rel.values())]
    if not judged:
        raise ValueError("no query has a relevant document")
    totals = {"ndcg_at_10": 0.0, "recall_at_10": 0.0, "recall_at_100": 0.0, "mrr_at_10": 0.0}
    for query in judged:
        ranked, relevance = run.get(query, ()), qrels[query]
        totals["ndcg_at_10"] += ndcg_at_k(ranked, relevance, 10)
        totals["recall_at_10"] += recall_at_k(ranked, relevance, 10)
        totals["recall_at_100"] += recall_at_k(ranked, relevance, 100)
        totals["mrr_at_10"] += mrr_at_k(ranked, relevance, 10)
    return {name: round(total / len(judged), 4) for name, total in totals.items()}
