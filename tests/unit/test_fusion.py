"""RRF in Python, leg sizes and the tie-broken cut; hybrid search in every store is
the VectorStore contract (tests/contract/test_vector_store.py)."""

from dataclasses import dataclass

import pytest

from services.retrieval.fusion import rrf
from services.retrieval.ranking import best_first, candidate_count

# ----------------------------------------------------------------------- rrf (pure)


def test_rrf_matches_hand_computed_scores() -> None:
    # k=60, 0-based ranks: a = 1/60 + 1/62, b = 1/61 + 1/60, c = 1/62, d = 1/61.
    fused = rrf([["a", "b", "c"], ["b", "d", "a"]], k=60)
    assert [item for item, _ in fused] == ["b", "a", "d", "c"]
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 60 + 1 / 62)
    assert scores["b"] == pytest.approx(1 / 61 + 1 / 60)
    assert scores["c"] == pytest.approx(1 / 62)
    assert scores["d"] == pytest.approx(1 / 61)


def test_rrf_small_k_rewards_the_top_of_one_list() -> None:
    # k=1: x = 1/1 = 1.0 (top of one list) beats y = 1/2 + 1/3 = 0.833 (second in both).
    assert rrf([["x", "y"], ["z", "y", "w"]], k=1)[0] == ("x", 1.0)
    # k=60: y = 1/61 + 1/61 = 0.0328 beats x = 1/60 = 0.0167.
    assert rrf([["x", "y"], ["z", "y", "w"]], k=60)[0][0] == "y"


def test_rrf_weights_duplicates_and_ties() -> None:
    # weights 3 and 1 at k=10: p = 3/10 = 0.3, q = 1/10 + 3/11 = 0.373.
    fused = dict(rrf([["p", "q"], ["q"]], k=10, weights=[3.0, 1.0]))
    assert fused["p"] == pytest.approx(0.3)
    assert fused["q"] == pytest.approx(3 / 11 + 1 / 10)
    # A repeated item counts once, at its best rank; equal scores keep first appearance.
    assert dict(rrf([["m", "m", "n"]], k=1)) == {"m": 1.0, "n": pytest.approx(1 / 3)}
    assert [i for i, _ in rrf([["u"], ["v"]], k=5)] == ["u", "v"]
    assert rrf([], k=60) == []


def test_rrf_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must not be negative"):
        rrf([["a"]], k=-1)
    with pytest.raises(ValueError, match="1 weights given for 2 rankings"):
        rrf([["a"], ["b"]], weights=[1.0])


def test_candidate_count_fetches_several_times_top_k() -> None:
    assert candidate_count(1) == 20
    assert candidate_count(10) == 40
    assert candidate_count(100) == 400


def test_best_first_breaks_score_ties_by_chunk_id() -> None:
    @dataclass(frozen=True)
    class Point:
        id: str
        score: float

    tied = [Point("b", 0.5), Point("c", 0.9), Point("a", 0.5), Point("d", 0.1)]
    assert [p.id for p in best_first(tied, 3)] == ["c", "a", "b"]
    assert [p.id for p in best_first(list(reversed(tied)), 3)] == ["c", "a", "b"]
    # Scores equal in 32 bits are a tie: engines compute them in different precisions.
    nearly = [Point("b", 0.5 + 1e-12), Point("a", 0.5)]
    assert [p.id for p in best_first(nearly, 2)] == ["a", "b"]
