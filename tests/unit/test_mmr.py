"""MMR re-ranking, the pure function (through every store: the VectorStore contract)."""

import pytest

from services.retrieval.mmr import mmr_order

A = [1.0, 0.0, 0.0]
A_COPY = [0.99, 0.01, 0.0]
B = [0.0, 1.0, 0.0]


def test_lambda_one_keeps_the_relevance_order() -> None:
    assert mmr_order([0.9, 0.8, 0.5], [A, A_COPY, B], 3, 1.0) == [0, 1, 2]


def test_near_duplicate_is_demoted_below_a_distinct_candidate() -> None:
    # Relevance rescaled: 1.0, 0.75, 0.0. Second pick at lambda 0.5:
    # copy 0.5*0.75 - 0.5*0.99995 = -0.125; B 0.5*0 - 0.5*0 = 0.0, so B wins.
    assert mmr_order([0.9, 0.8, 0.5], [A, A_COPY, B], 3, 0.5) == [0, 2, 1]
    # At lambda 0.9 relevance still dominates: copy 0.675 - 0.1 = 0.575 > B 0.0.
    assert mmr_order([0.9, 0.8, 0.5], [A, A_COPY, B], 3, 0.9) == [0, 1, 2]


def test_top_k_bounds_and_degenerate_inputs() -> None:
    assert mmr_order([0.9, 0.8, 0.5], [A, A_COPY, B], 2, 0.5) == [0, 2]
    assert mmr_order([], [], 5, 0.5) == []
    assert mmr_order([0.3, 0.3], [A, B], 5, 0.5) == [0, 1]  # equal scores: no division by 0
    with pytest.raises(ValueError, match="between 0 and 1"):
        mmr_order([1.0], [A], 1, -0.1)
    with pytest.raises(ValueError, match="2 scores given for 1 vectors"):
        mmr_order([1.0, 0.5], [A], 1, 0.5)
