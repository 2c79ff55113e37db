"""The keyword leg run ahead of the query vector (`EdgeVectorStore.keyword_leg`):
fused later, it gives exactly the results of the one-call hybrid search, and a
write in between never lets a search mix two versions of a document.

Real embedded engine on the synthetic corpus of the Qdrant parity tests (two
tenants, access labels, tags, dates, Zipf text).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.errors import InvalidInputError
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.store import (
    Caller,
    RetrievalMode,
    SearchFilter,
    SearchOptions,
)
from tests.unit.test_store_qdrant import PARITY_DIM, parity_queries, synthetic_corpus
from tests.unit.test_store_tenancy import ACME, DIM, QUERY, document

HYBRID = RetrievalMode.HYBRID


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeVectorStore]:
    with EdgeVectorStore.open(tmp_path_factory.mktemp("edge") / "index", PARITY_DIM) as opened:
        for record, chunks, vectors in synthetic_corpus():
            opened.replace_document(record, chunks, vectors)
        yield opened


@pytest.mark.parametrize(
    ("caller", "search_filter", "top_k", "mmr_lambda"),
    [
        (Caller("acme"), SearchFilter(), 5, 0.0),
        (Caller("globex", ("hr",)), SearchFilter(), 10, 0.0),
        (Caller("acme", ("hr", "legal")), SearchFilter(tags=("policy",)), 3, 0.0),
        (Caller("acme"), SearchFilter(), 8, 0.5),
    ],
)
def test_a_leg_run_ahead_gives_the_one_call_results(
    store: EdgeVectorStore,
    caller: Caller,
    search_filter: SearchFilter,
    top_k: int,
    mmr_lambda: float,
) -> None:
    compared = 0
    for vector, text in parity_queries(synthetic_corpus(), 40):
        options = SearchOptions(mode=HYBRID, text=text, mmr_lambda=mmr_lambda)
        leg = store.keyword_leg(caller, top_k, search_filter, options)
        assert leg is not None
        ahead = store.search(caller, vector, top_k, search_filter, options, leg)
        assert ahead == store.search(caller, vector, top_k, search_filter, options), text
        compared += bool(ahead) and bool(leg.ranking)
    assert compared >= 20, "most queries had results in both legs"


def test_only_hybrid_searches_run_a_leg_ahead(store: EdgeVectorStore) -> None:
    for mode in (RetrievalMode.DENSE, RetrievalMode.KEYWORD):
        options = SearchOptions(mode=mode, text="policy")
        assert store.keyword_leg(Caller(ACME), 5, SearchFilter(), options) is None


def test_a_leg_is_checked_like_a_search(store: EdgeVectorStore) -> None:
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        store.keyword_leg(Caller(""), 5, SearchFilter(), SearchOptions(HYBRID, "x"))
    with pytest.raises(InvalidInputError, match="query_text is empty"):
        store.keyword_leg(Caller(ACME), 5, SearchFilter(), SearchOptions(HYBRID, " "))
    leg = store.keyword_leg(Caller(ACME), 5, SearchFilter(), SearchOptions(HYBRID, "policy"))
    assert leg is not None
    with pytest.raises(ValueError, match="another search"):
        store.search(Caller(ACME), [1.0] * PARITY_DIM, 6, SearchFilter(), leg.options, leg)


def test_a_write_after_the_leg_reruns_both_legs(tmp_path: Path) -> None:
    """The leg saw the old version; the fused result must show the new one only."""
    with EdgeVectorStore.open(tmp_path / "index", DIM) as small:
        old = document(ACME, "handbook", 3, text="Parental leave policy: twelve weeks.")
        small.replace_document(*old)
        options = SearchOptions(HYBRID, "parental leave policy")
        leg = small.keyword_leg(Caller(ACME), 10, SearchFilter(), options)
        assert leg is not None and len(leg.ranking) == 3
        new = document(ACME, "handbook", 2, text="Parental leave policy: sixteen weeks.")
        small.replace_document(*new)
        hits = small.search(Caller(ACME), QUERY, 10, SearchFilter(), options, leg)
        assert {hit.chunk.chunk_id for hit in hits} == {c.chunk_id for c in new[1]}
        assert hits == small.search(Caller(ACME), QUERY, 10, SearchFilter(), options)
