"""MMR re-ranking: the pure function, and through EdgeVectorStore search."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidInputError
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.mmr import mmr_order
from services.retrieval.store import RetrievalMode, SearchFilter, SearchOptions
from tests.unit.test_fusion import CALLER, DIM, ids, put

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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeVectorStore]:
    with EdgeVectorStore.open(tmp_path / "index", DIM) as opened:
        yield opened


def axis(i: int, dim: int = DIM) -> np.ndarray:
    row: np.ndarray = np.eye(dim)[i]
    return row


def as_list(vector: np.ndarray) -> list[float]:
    return [float(x) for x in vector / np.linalg.norm(vector)]


def test_store_demotes_near_duplicate_chunks(store: EdgeVectorStore) -> None:
    # The query lies between "orig" (and its near copy "dup") and "other":
    # cosines 0.78, 0.78, 0.62; unrelated fillers score about 0.1.
    query = as_list(axis(0) + 0.8 * axis(2))
    chunks = {
        "orig": ("Annual leave is 25 days.", axis(0)),
        "dup": ("Annual leave is 25 days!", axis(0) + 0.02 * axis(1)),
        "other": ("Sick leave needs a doctor's note.", axis(2)),
    }
    for name, (text, vector) in chunks.items():
        put(store, name, [text], [as_list(vector)])
    for i in range(3, DIM):  # the pool MMR rescales relevance over
        put(store, f"filler-{i}", [f"Unrelated note {i}."], [as_list(0.1 * axis(0) + axis(i))])
    everything = SearchFilter()
    assert ids(store.search(CALLER, query, 3, everything))[:2] in (["orig", "dup"], ["dup", "orig"])
    for options in (
        SearchOptions(mmr_lambda=0.5),
        SearchOptions(mode=RetrievalMode.HYBRID, text="annual leave days", mmr_lambda=0.5),
    ):
        ranked = ids(store.search(CALLER, query, 3, everything, options))
        assert ranked[0] in ("orig", "dup")
        assert ranked[1] == "other"  # the distinct passage moves above the copy
    with pytest.raises(InvalidInputError, match="mmr_lambda"):
        store.search(CALLER, query, 2, everything, SearchOptions(mmr_lambda=-0.5))
