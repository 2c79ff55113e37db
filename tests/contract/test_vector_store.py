"""The `VectorStore` contract: every backend in `STORE_FACTORIES` runs every test.

Search in every mode, with and without MMR; every filter field; tenancy and
access labels in every mode and in the registry; atomic replacement (also
under concurrent readers); removal; the registry; the order of ties;
validation with the same errors for every backend; closing and reopening.

A backend joins with one factory in `STORE_FACTORIES` (tests/contract/vector_store.py).
Read-only tests share one store per backend holding `LIBRARY` (`library`);
tests that write get an empty store of their own (`store`). What only one
engine has (persistence, HNSW, migrations; interleavings, faults) is tested in
tests/unit/test_store_edge.py and test_store_qdrant.py, and the agreement of
the backends' rankings in test_store_parity.py.
"""

import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace

import pytest

from ragplatform.v1 import common_pb2, embedding_pb2, retrieval_pb2
from services.common.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from services.retrieval.fusion import rrf
from services.retrieval.generations import IndexGenerations
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.store import (
    MAX_TOP_K,
    Caller,
    DocumentRecord,
    RetrievalMode,
    SearchFilter,
    SearchHit,
    SearchOptions,
    StoredChunk,
    StoreStats,
    VectorStore,
)
from tests.contract.vector_store import (
    ALL,
    DIM,
    MODES,
    QDRANT_LOCAL_MODE_WARNINGS,
    QUERY,
    STORE_FACTORIES,
    Document,
    Opener,
    document,
    make_document,
    near,
    scratch_directory,
    search_all_modes,
    unit_vectors,
    versions_of,
)

pytestmark = QDRANT_LOCAL_MODE_WARNINGS

ACME, GLOBEX, INITECH = "acme", "globex", "initech"
KEYWORD = RetrievalMode.KEYWORD
HYBRID = RetrievalMode.HYBRID


LIBRARY = (
    document(
        ACME,
        "a",
        3,
        source_uri="s3://bucket/a",
        tags=("policy",),
        document_date_unix=100,
    ),
    document(
        ACME,
        "b",
        4,
        media_type="application/pdf",
        source_uri="s3://bucket/b",
        tags=("policy", "hr"),
        document_date_unix=200,
    ),
    document(
        ACME,
        "c",
        2,
        media_type="text/html",
        source_uri="https://example.com/c",
        tags=("memo",),
        document_date_unix=300,
    ),
    document(
        ACME,
        "d",
        5,
        media_type="application/pdf",
        source_uri="https://example.com/d",
        tags=("policy",),
    ),
    document(ACME, "hr", access_labels=("hr",)),
    document(ACME, "hr-finance", 2, access_labels=("finance", "hr")),
    document(GLOBEX, "a", 2, source_uri="s3://bucket/a", tags=("policy",), document_date_unix=100),
    document(GLOBEX, "hr", access_labels=("hr",)),
)
"""The shared read-only corpus: acme's unlabelled a-d (one undated), two labelled
documents, and globex's own "a" (same id, same metadata) and "hr"."""

CHUNKS = {(r.tenant, r.document_id): r.chunk_count for r, _, _ in LIBRARY}
UNLABELLED = {"a", "b", "c", "d"}


# -- fixtures -------------------------------------------------------------------


KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}
"""{(test function, backend): why} for a test that a backend fails because it
really differs from the contract: it runs as xfail(strict=True) on that backend
only, so fixing the backend fails it until its entry goes. Empty: every backend
passes the whole contract."""


@pytest.fixture(scope="module", params=sorted(STORE_FACTORIES))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(autouse=True)
def _known_difference(request: pytest.FixtureRequest, backend: str) -> None:
    reason = KNOWN_DIFFERENCES.get((request.node.originalname, backend))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture
def opener(backend: str) -> Iterator[Opener]:
    """Opens (and reopens) one empty storage of the backend."""
    with scratch_directory() as directory:
        yield STORE_FACTORIES[backend](directory)


@pytest.fixture
def store(opener: Opener) -> Iterator[VectorStore]:
    """An empty store of its own: for tests that write."""
    opened = opener(DIM)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def library(backend: str) -> Iterator[VectorStore]:
    """One store per backend holding LIBRARY: for tests that only read."""
    with scratch_directory() as directory:
        opened = STORE_FACTORIES[backend](directory)(DIM)
        for written in LIBRARY:
            opened.replace_document(*written)
        yield opened
        opened.close()


# -- helpers --------------------------------------------------------------------


def docs(hits: list[SearchHit]) -> set[tuple[str, str]]:
    return {(hit.chunk.tenant, hit.chunk.document_id) for hit in hits}


def ids(hits: list[SearchHit]) -> list[str]:
    return [hit.chunk.chunk_id for hit in hits]


def counts(store: VectorStore) -> tuple[int, int]:
    """(documents, chunks) of the stats, which every backend counts alike."""
    stats = store.stats()
    assert stats.dimension == DIM and stats.backend
    return stats.document_count, stats.chunk_count


# -- search ---------------------------------------------------------------------


def test_an_empty_store(store: VectorStore) -> None:
    as_protocol: VectorStore = store
    assert as_protocol.dimension == DIM
    assert counts(store) == (0, 0)
    assert all(hits == [] for hits in search_all_modes(store, Caller(ACME)).values())
    assert store.list_documents(ACME, 10) == []
    assert store.lookup_documents(Caller(ACME), ["a"]) == []
    assert store.get_document(ACME, "a") is None


def test_search_returns_the_matching_chunk_first(store: VectorStore) -> None:
    documents = [make_document(f"doc-{i}", 5) for i in range(3)]
    for written in documents:
        assert store.replace_document(*written) == (5, 0)
    for _, chunks, vectors in documents:
        for chunk, vector in zip(chunks, vectors, strict=True):
            hits = store.search(Caller(ACME), vector, 5, ALL)
            assert hits[0].chunk == chunk  # every payload field round-trips
            assert hits[0].score == pytest.approx(1.0, abs=1e-5)
            scores = [hit.score for hit in hits]
            assert scores == sorted(scores, reverse=True)
            assert len(hits) == 5


def test_every_mode_scores_by_cosine_when_there_is_a_vector(store: VectorStore) -> None:
    _, _, vectors = written = make_document("doc", 6)
    store.replace_document(*written)
    query = vectors[2]
    for name, options in MODES.items():
        hits = store.search(Caller(ACME), query, 3, ALL, replace(options, text="doc chunk 2"))
        assert len(hits) == 3, name
        for hit in hits:
            cosine = sum(a * b for a, b in zip(vectors[hit.chunk.ordinal], query, strict=True))
            assert hit.score == pytest.approx(cosine, abs=1e-5), name


def test_keyword_mode_ranks_by_bm25_without_a_vector(store: VectorStore) -> None:
    texts = {
        "code": "Error code QX-7741 means the fuser unit overheated.",
        "policy": "Employees receive twenty five days of paid annual leave.",
        "leave": "Parental leave policy: twelve weeks of paid leave for new parents.",
        "garden": "Tomatoes need full sun and regular watering in summer.",
    }
    for i, (name, text) in enumerate(texts.items()):
        store.replace_document(*document(ACME, name, text=text, vectors=unit_vectors(i, 1)))

    def keyword(text: str) -> list[SearchHit]:
        return store.search(Caller(ACME), [], 5, ALL, SearchOptions(mode=KEYWORD, text=text))

    assert [h.chunk.document_id for h in keyword("what does QX-7741 mean?")] == ["code"]
    hits = keyword("paid leave")
    assert [h.chunk.document_id for h in hits] == ["leave", "policy"]  # "leave" twice beats once
    assert all(hit.score > 0 for hit in hits)  # BM25 scores, not cosines
    assert keyword("xylophone") == []  # no chunk has the term


def test_mmr_demotes_a_near_duplicate(store: VectorStore) -> None:
    # The query lies between "orig" (and its near copy "dup") and "other";
    # unrelated fillers are the pool MMR rescales relevance over.
    def unit(**weights: float) -> list[float]:
        row = [weights.get(f"x{i}", 0.0) for i in range(DIM)]
        norm = sum(x * x for x in row) ** 0.5
        return [x / norm for x in row]

    query = unit(x0=1.0, x2=0.8)
    passages = {
        "orig": ("Annual leave is 25 days.", unit(x0=1.0)),
        "dup": ("Annual leave is 25 days!", unit(x0=1.0, x1=0.02)),
        "other": ("Sick leave needs a doctor's note.", unit(x2=1.0)),
    }
    for i in range(3, DIM):
        passages[f"filler-{i}"] = (f"Unrelated note {i}.", unit(x0=0.1, **{f"x{i}": 1.0}))
    for name, (text, vector) in passages.items():
        store.replace_document(*document(ACME, name, text=text, vectors=[vector]))
    plain = [h.chunk.document_id for h in store.search(Caller(ACME), query, 3, ALL)]
    assert set(plain[:2]) == {"orig", "dup"}
    for options in (
        SearchOptions(mmr_lambda=0.5),
        SearchOptions(mode=HYBRID, text="annual leave days", mmr_lambda=0.5),
    ):
        ranked = [h.chunk.document_id for h in store.search(Caller(ACME), query, 3, ALL, options)]
        assert ranked[0] in ("orig", "dup")
        assert ranked[1] == "other"  # the distinct passage moves above the copy
    relevance = SearchOptions(mmr_lambda=1.0)  # no diversity: the relevance order
    assert [h.chunk.document_id for h in store.search(Caller(ACME), query, 3, ALL, relevance)] == (
        plain
    )


# -- keyword and hybrid legs ----------------------------------------------------

LEXICON = {
    "zebra": "Zebra stripes confuse biting flies in the savanna.",
    "policy": "Employees receive twenty five days of paid annual leave.",
    "code": "Error code QX-7741 means the fuser unit overheated.",
    "garden": "Tomatoes need full sun and regular watering in summer.",
    "leave": "Parental leave policy: twelve weeks of paid leave for new parents.",
}
"""One chunk each, titled "About <name>", vectors seeded by position: "leave"
is markdown, the others plain text."""


def put(store: VectorStore, name: str, texts: list[str], vectors: list[list[float]]) -> None:
    media_type = "text/markdown" if name == "leave" else "text/plain"
    written = make_document(
        name,
        0,
        tenant=ACME,
        texts=texts,
        vectors=vectors,
        title=f"About {name}",
        media_type=media_type,
    )
    store.replace_document(*written)


@pytest.fixture
def lexicon(store: VectorStore) -> VectorStore:
    for seed, (name, text) in enumerate(LEXICON.items()):
        put(store, name, [text], unit_vectors(seed, 1))
    return store


def named(hits: list[SearchHit]) -> list[str]:
    return [hit.chunk.document_id for hit in hits]


def keyword(text: str) -> SearchOptions:
    return SearchOptions(mode=KEYWORD, text=text)


def test_keyword_mode_finds_exact_terms(lexicon: VectorStore) -> None:
    acme = Caller(ACME)
    assert named(lexicon.search(acme, [], 3, ALL, keyword("what does QX-7741 mean?")))[0] == "code"
    hits = lexicon.search(acme, [], 5, ALL, keyword("paid leave"))
    assert named(hits)[:2] == ["leave", "policy"]  # "leave" twice and in its title beats once
    assert all(hit.score > 0 for hit in hits)
    assert lexicon.search(acme, [], 5, ALL, keyword("xylophone")) == []


def test_hybrid_is_the_rrf_of_the_two_legs_scored_by_cosine(lexicon: VectorStore) -> None:
    acme, query = Caller(ACME), unit_vectors(2, 1)[0]  # "code"'s own vector: top of the dense leg
    legs = max(4 * 5, 20)
    dense = lexicon.search(acme, query, legs, ALL)
    bm25 = lexicon.search(acme, query, legs, ALL, keyword("paid leave"))
    expected = rrf([ids(dense), ids(bm25)])
    hybrid = lexicon.search(acme, query, 5, ALL, SearchOptions(mode=HYBRID, text="paid leave"))
    assert ids(hybrid) == [item for item, _ in expected][:5]
    cosine = {h.chunk.chunk_id: h.score for h in dense}
    assert [h.score for h in hybrid] == pytest.approx([cosine[h.chunk.chunk_id] for h in hybrid])
    assert set(named(hybrid[:3])) >= {"code", "leave"}  # the best of each leg rank high


def test_filters_apply_to_every_leg(lexicon: VectorStore) -> None:
    acme, only_plain = Caller(ACME), SearchFilter(media_types=("text/plain",))
    for mode in (KEYWORD, HYBRID):
        options = SearchOptions(mode=mode, text="paid leave")
        hits = lexicon.search(acme, unit_vectors(4, 1)[0], 5, only_plain, options)
        assert "leave" not in named(hits) and named(hits)[0] == "policy"
    garden = SearchFilter(document_ids=("garden",))
    options = SearchOptions(mode=HYBRID, text="zebra")
    assert named(lexicon.search(acme, unit_vectors(0, 1)[0], 5, garden, options)) == ["garden"]


def test_replacement_and_removal_update_the_keyword_index(lexicon: VectorStore) -> None:
    acme = Caller(ACME)
    put(lexicon, "code", ["Error code ZZ-1 means the tray is empty."], unit_vectors(2, 1))
    assert lexicon.search(acme, [], 5, ALL, keyword("QX-7741")) == []
    assert named(lexicon.search(acme, [], 5, ALL, keyword("ZZ-1 tray"))) == ["code"]
    lexicon.remove_document(ACME, "code")
    assert lexicon.search(acme, [], 5, ALL, keyword("ZZ-1 tray")) == []


def test_a_chunk_without_indexable_terms_is_still_found_densely(store: VectorStore) -> None:
    """Title and text are stop words only: no BM25 vector, dense search finds it."""
    stop_words = make_document(
        "stop", 0, tenant=ACME, texts=["the of and"], vectors=unit_vectors(99, 1), title="Of"
    )
    store.replace_document(*stop_words)
    assert named(store.search(Caller(ACME), unit_vectors(99, 1)[0], 1, ALL)) == ["stop"]
    assert store.search(Caller(ACME), [], 5, ALL, keyword("the of")) == []


# -- filters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("search_filter", "expected"),
    [
        (SearchFilter(), UNLABELLED),
        (SearchFilter(document_ids=("a",)), {"a"}),
        (SearchFilter(document_ids=("a", "c")), {"a", "c"}),
        (SearchFilter(document_ids=("nope",)), set()),
        (SearchFilter(document_ids=("hr",)), set()),  # named, but its labels hide it
        (SearchFilter(media_types=("application/pdf",)), {"b", "d"}),
        (SearchFilter(media_types=("text/plain", "text/html")), {"a", "c"}),
        (SearchFilter(source_uris=("s3://bucket/a", "https://example.com/d")), {"a", "d"}),
        (SearchFilter(tags=("policy",)), {"a", "b", "d"}),
        (SearchFilter(tags=("hr", "memo")), {"b", "c"}),
        (SearchFilter(tags=("unknown",)), set()),
        (SearchFilter(date_from_unix=200), {"b", "c"}),  # inclusive; undated never matches
        (SearchFilter(date_to_unix=200), {"a", "b"}),  # inclusive
        (SearchFilter(date_from_unix=200, date_to_unix=200), {"b"}),
        (SearchFilter(date_from_unix=101, date_to_unix=299), {"b"}),
        (SearchFilter(date_from_unix=100, date_to_unix=300), {"a", "b", "c"}),
        (SearchFilter(date_from_unix=301), set()),
        (SearchFilter(date_from_unix=0), {"a", "b", "c"}),  # 0 is "no date", never in a range
        (SearchFilter(date_to_unix=0), set()),
        (SearchFilter(document_ids=("a", "b"), media_types=("application/pdf",)), {"b"}),
        (SearchFilter(document_ids=("a",), media_types=("application/pdf",)), set()),
        (
            SearchFilter(
                media_types=("application/pdf", "text/html"),
                source_uris=("https://example.com/c", "https://example.com/d", "s3://bucket/a"),
            ),
            {"c", "d"},
        ),
        (
            SearchFilter(
                document_ids=("a", "b", "c", "d"),
                media_types=("application/pdf",),
                source_uris=("s3://bucket/b",),
            ),
            {"b"},
        ),
        (SearchFilter(tags=("policy",), date_from_unix=150), {"b"}),
        (SearchFilter(document_ids=("a", "c"), date_to_unix=250), {"a"}),
    ],
)
def test_filters_and_across_fields_or_within_in_every_mode(
    library: VectorStore, search_filter: SearchFilter, expected: set[str]
) -> None:
    for mode, hits in search_all_modes(library, Caller(ACME), search_filter).items():
        assert docs(hits) == {(ACME, name) for name in expected}, mode
        assert len(hits) == sum(CHUNKS[ACME, name] for name in expected), mode


# -- tenancy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "visible"),
    [
        (Caller(GLOBEX), {"a"}),
        (Caller(GLOBEX, ("hr", "finance")), {"a", "hr"}),
        (Caller(INITECH, ("hr",)), set()),
    ],
)
def test_a_tenant_sees_only_its_own_documents_in_every_mode(
    library: VectorStore, caller: Caller, visible: set[str]
) -> None:
    for mode, hits in search_all_modes(library, caller).items():
        assert docs(hits) == {(caller.tenant, name) for name in visible}, mode
        assert len(hits) == sum(CHUNKS[caller.tenant, name] for name in visible), mode


def test_a_tenant_never_sees_another_tenants_closer_chunks(store: VectorStore) -> None:
    # acme has 30 chunks closer to the query than globex's two: a post-filter
    # applied after the engine's top-k (or after fusion or MMR) would leave
    # globex with nothing; an engine filter finds its chunks at any top_k.
    closer = [near(QUERY, i, 0.01) for i in range(30)]
    store.replace_document(*document(ACME, "handbook", 30, vectors=closer))
    farther = [near(QUERY, 99, 0.5), unit_vectors(5, 1)[0]]
    store.replace_document(*document(GLOBEX, "policy", 2, vectors=farther))
    for top_k in (1, 2, MAX_TOP_K):
        for mode, hits in search_all_modes(store, Caller(GLOBEX), top_k=top_k).items():
            assert docs(hits) == {(GLOBEX, "policy")}, (mode, top_k)
            assert len(hits) == min(top_k, 2), (mode, top_k)
        for mode, hits in search_all_modes(store, Caller(ACME), top_k=top_k).items():
            assert docs(hits) == {(ACME, "handbook")}, (mode, top_k)


def test_hybrid_fuses_legs_that_only_hold_the_tenants_chunks(store: VectorStore) -> None:
    """Each leg is filtered before fusion: globex's hybrid order is the RRF of its own
    dense and keyword orders, although acme's chunks beat all of globex's in both."""
    acme_vectors = [near(QUERY, i, 0.01) for i in range(30)]
    store.replace_document(*document(ACME, "handbook", 30, vectors=acme_vectors))
    texts_and_vectors = {
        "close": ("Parental leave policy.", near(QUERY, 1, 0.2)),
        "middle": ("Leave.", near(QUERY, 2, 0.8)),
        "far": (
            "Parental leave policy. Parental leave policy for parental leave.",
            unit_vectors(3, 1)[0],
        ),
    }
    for name, (text, vector) in texts_and_vectors.items():
        store.replace_document(*document(GLOBEX, name, text=text, vectors=[vector]))
    orders = {
        mode: [h.chunk.document_id for h in hits]
        for mode, hits in search_all_modes(store, Caller(GLOBEX), top_k=3).items()
    }
    assert orders["dense"] == ["close", "middle", "far"]
    assert orders["keyword"] == ["far", "close", "middle"]
    fused = [item for item, _ in rrf([orders["dense"], orders["keyword"]])]
    assert fused != orders["keyword"]  # so a leg that lost its chunks would show
    assert orders["hybrid"] == fused


def test_the_same_document_id_in_two_tenants_coexists(store: VectorStore) -> None:
    acme = document(ACME, "handbook", 3, text="Acme leave policy: ten days.")
    globex = document(GLOBEX, "handbook", 2, text="Globex leave policy: thirty days.")
    store.replace_document(*acme)
    store.replace_document(*globex)
    assert counts(store) == (2, 5)
    assert store.get_document(ACME, "handbook") == acme[0]
    assert store.get_document(GLOBEX, "handbook") == globex[0]
    assert store.list_documents(ACME, 10) == [acme[0]]
    assert store.list_documents(GLOBEX, 10) == [globex[0]]
    assert store.list_documents(INITECH, 10) == []

    # Replacing one tenant's version deletes only that tenant's stale chunks.
    shorter = document(ACME, "handbook", 1, text="Acme leave policy: ten days.")
    assert store.replace_document(*shorter) == (1, 2)
    assert len(store.search(Caller(GLOBEX), QUERY, 10, ALL)) == 2

    # Removing one leaves the other.
    assert store.remove_document(GLOBEX, "handbook") == 2
    assert store.get_document(GLOBEX, "handbook") is None
    assert store.get_document(ACME, "handbook") == shorter[0]
    assert [h.chunk for h in store.search(Caller(ACME), QUERY, 10, ALL)] == shorter[1]
    assert all(hits == [] for hits in search_all_modes(store, Caller(GLOBEX)).values())
    with pytest.raises(NotFoundError, match="document 'handbook' not found in tenant 'globex'"):
        store.remove_document(GLOBEX, "handbook")


def test_get_list_and_lookup_are_confined_to_the_tenant(library: VectorStore) -> None:
    assert library.get_document(GLOBEX, "b") is None
    assert library.get_document(INITECH, "a") is None
    assert library.list_documents(GLOBEX, 10) == [
        library.get_document(GLOBEX, "a"),
        library.get_document(GLOBEX, "hr"),
    ]
    assert library.list_documents(INITECH, 10) == []
    acme_a, globex_a = library.get_document(ACME, "a"), library.get_document(GLOBEX, "a")
    assert acme_a is not None and globex_a is not None and acme_a != globex_a
    assert (acme_a.tenant, globex_a.tenant) == (ACME, GLOBEX)
    assert library.lookup_documents(Caller(GLOBEX), ["a", "b", "c"]) == [globex_a]
    assert library.lookup_documents(Caller(INITECH, ("hr",)), ["a", "hr"]) == []


def test_remove_is_confined_to_the_tenant(store: VectorStore) -> None:
    for name in ("a", "b", "c"):
        store.replace_document(*document(ACME, name))
    store.replace_document(*document(GLOBEX, "z"))
    with pytest.raises(NotFoundError, match="document 'a' not found in tenant 'globex'"):
        store.remove_document(GLOBEX, "a")
    assert counts(store) == (4, 4)  # the refused remove deleted nothing
    assert store.remove_document(ACME, "a") == 1
    assert [r.document_id for r in store.list_documents(ACME, 10)] == ["b", "c"]
    assert [r.document_id for r in store.list_documents(GLOBEX, 10)] == ["z"]


def test_chunk_ids_of_another_tenants_document_are_refused(store: VectorStore) -> None:
    record, chunks, vectors = document(ACME, "handbook", 2)
    store.replace_document(record, chunks, vectors)
    thief_record, thief_chunks, thief_vectors = document(GLOBEX, "handbook", 2)
    # The first offending chunk in the request's order is named, every time.
    for order in ([1, 0], [0, 1], [1, 0]):
        stolen = [
            replace(thief, chunk_id=chunks[i].chunk_id)
            for thief, i in zip(thief_chunks, order, strict=True)
        ]
        message = (
            f"chunk_id '{chunks[order[0]].chunk_id}' already belongs to another tenant's "
            "document, not to 'handbook' of tenant 'globex'"
        )
        with pytest.raises(InvalidInputError, match=exactly(message)):
            store.replace_document(thief_record, stolen, thief_vectors)
    assert store.get_document(GLOBEX, "handbook") is None
    assert counts(store) == (1, 2)
    assert [h.chunk for h in store.search(Caller(ACME), vectors[1], 1, ALL)] == [chunks[1]]


# -- access labels --------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "visible"),
    [
        ((), UNLABELLED),
        (("hr",), UNLABELLED | {"hr", "hr-finance"}),
        (("finance",), UNLABELLED | {"hr-finance"}),
        (("engineering",), UNLABELLED),
        (("engineering", "finance"), UNLABELLED | {"hr-finance"}),
    ],
)
def test_access_labels_decide_visibility_in_every_mode(
    library: VectorStore, labels: tuple[str, ...], visible: set[str]
) -> None:
    for mode, hits in search_all_modes(library, Caller(ACME, labels)).items():
        assert docs(hits) == {(ACME, name) for name in visible}, mode
        assert len(hits) == sum(CHUNKS[ACME, name] for name in visible), mode


def test_labels_and_tags_round_trip_as_tuples(library: VectorStore) -> None:
    only = SearchFilter(document_ids=("hr-finance",))
    (hit, _) = library.search(Caller(ACME, ("finance",)), QUERY, 2, only)
    assert hit.chunk.access_labels == ("finance", "hr")
    record = library.get_document(ACME, "hr-finance")
    assert record is not None and record.access_labels == ("finance", "hr")
    (tagged, *_) = library.search(Caller(ACME), QUERY, 1, SearchFilter(document_ids=("b",)))
    assert tagged.chunk.tags == ("policy", "hr")
    assert library.lookup_documents(Caller(ACME), ["b"])[0].tags == ("policy", "hr")


def test_lookup_returns_what_the_caller_may_see_in_request_order(library: VectorStore) -> None:
    def looked_up(caller: Caller, wanted: list[str]) -> list[tuple[str, str]]:
        return [(r.tenant, r.document_id) for r in library.lookup_documents(caller, wanted)]

    wanted = ["hr-finance", "missing", "a", "hr", "a", "d"]
    assert looked_up(Caller(ACME, ("hr",)), wanted) == [
        (ACME, "hr-finance"),
        (ACME, "a"),
        (ACME, "hr"),
        (ACME, "d"),
    ]
    assert looked_up(Caller(ACME, ("finance",)), wanted) == [
        (ACME, "hr-finance"),
        (ACME, "a"),
        (ACME, "d"),
    ]
    assert looked_up(Caller(ACME), wanted) == [(ACME, "a"), (ACME, "d")]
    # globex's "hr" and "a" are its own documents; acme's are never globex's.
    assert looked_up(Caller(GLOBEX, ("hr",)), wanted) == [(GLOBEX, "a"), (GLOBEX, "hr")]
    (record,) = library.lookup_documents(Caller(ACME, ("hr",)), ["hr"])
    assert record == library.get_document(ACME, "hr")


def test_a_listing_for_a_caller_leaves_out_what_its_labels_hide(library: VectorStore) -> None:
    def listed(visible_to: tuple[str, ...] | None, limit: int = 10, after: str = "") -> list[str]:
        return [r.document_id for r in library.list_documents(ACME, limit, after, visible_to)]

    assert listed(None) == ["a", "b", "c", "d", "hr", "hr-finance"]
    assert listed(()) == ["a", "b", "c", "d"]
    assert listed(("finance",)) == ["a", "b", "c", "d", "hr-finance"]
    assert listed(("finance",), limit=1, after="d") == ["hr-finance"], "filtered, then cut"
    assert listed((), limit=1, after="d") == []


# -- replacement ----------------------------------------------------------------


def test_replace_with_fewer_chunks_removes_stale_ones(store: VectorStore) -> None:
    record, chunks, vectors = make_document("doc", 5)
    assert store.replace_document(record, chunks, vectors) == (5, 0)
    store.replace_document(*make_document("other", 2))

    new_record, new_chunks, new_vectors = make_document("doc", 2, version="v2")
    assert store.replace_document(new_record, new_chunks, new_vectors) == (2, 5)
    only_doc = SearchFilter(document_ids=("doc",))
    for mode, hits in search_all_modes(
        store, Caller(ACME), only_doc, query=vectors[0], text="chunk"
    ).items():
        assert set(ids(hits)) == {chunk.chunk_id for chunk in new_chunks}, mode
    assert store.get_document(ACME, "doc") == new_record
    assert counts(store) == (2, 4)  # 2 new + the other document's 2


def test_replace_keeping_some_chunk_ids_deletes_only_the_rest(store: VectorStore) -> None:
    record, chunks, vectors = make_document("doc", 4)
    store.replace_document(record, chunks, vectors)
    assert store.replace_document(replace(record, chunk_count=2), chunks[:2], vectors[:2]) == (2, 2)
    hits = store.search(Caller(ACME), vectors[0], MAX_TOP_K, ALL)
    assert [hit.chunk for hit in hits][:1] == [chunks[0]]
    assert set(ids(hits)) == {chunk.chunk_id for chunk in chunks[:2]}
    # A superset of the kept ids deletes nothing.
    assert store.replace_document(replace(record, chunk_count=3), chunks[:3], vectors[:3]) == (3, 0)
    assert counts(store) == (1, 3)


def test_replace_with_the_same_chunks_is_idempotent(store: VectorStore) -> None:
    """However often the same document is written, every search gives the same
    results (its chunks' texts tie in BM25, so hybrid ranks tie too)."""
    written = make_document("doc", 6)
    assert store.replace_document(*written) == (6, 0)
    before = store.stats()

    def results() -> list[dict[str, list[SearchHit]]]:
        caller = Caller(ACME)
        return [search_all_modes(store, caller, ALL, 6, query, "chunk") for query in written[2]]

    expected = results()
    for _ in range(6):
        assert store.replace_document(*written) == (6, 0)
        assert store.stats() == before
        assert counts(store) == (1, 6)
        assert results() == expected


def test_replace_with_no_chunks_keeps_an_empty_record(store: VectorStore) -> None:
    store.replace_document(*make_document("doc", 3))
    empty_record, _, _ = make_document("doc", 0)
    assert store.replace_document(empty_record, [], []) == (0, 3)
    assert store.get_document(ACME, "doc") == empty_record
    assert store.list_documents(ACME, 10) == [empty_record]
    assert counts(store) == (1, 0)
    assert all(hits == [] for hits in search_all_modes(store, Caller(ACME)).values())


def _with_chunk(
    chunks: list[StoredChunk], index: int, *, chunk_id: str = "", document_id: str = ""
) -> list[StoredChunk]:
    old = chunks[index]
    changed = list(chunks)
    changed[index] = replace(
        old, chunk_id=chunk_id or old.chunk_id, document_id=document_id or old.document_id
    )
    return changed


BAD_REPLACEMENTS: list[tuple[Callable[..., Document], str]] = [
    (lambda r, c, v: (r, c[:-1], v), "chunk_count is 3 but 2 chunks and 3 vectors"),
    (lambda r, c, v: (r, c, v[:-1]), "chunk_count is 3 but 3 chunks and 2 vectors"),
    (lambda r, c, v: (replace(r, chunk_count=4), c, v), "chunk_count is 4"),
    (lambda r, c, v: (r, c, [v[0], v[1][:-1], v[2]]), "has dimension 7, expected 8"),
    (lambda r, c, v: (r, c, [v[0], [*v[1], 0.0], v[2]]), "has dimension 9, expected 8"),
    (lambda r, c, v: (r, c, [v[0], v[1], [float("nan")] * DIM]), "NaN or infinite"),
    (lambda r, c, v: (r, c, [v[0], v[1], [0.0] * DIM]), "zero vector"),
    (
        lambda r, c, v: (r, _with_chunk(c, 1, document_id="elsewhere"), v),
        "belongs to document 'elsewhere', not 'a'",
    ),
    (lambda r, c, v: (r, _with_chunk(c, 0, chunk_id="chunk-1"), v), "is not a UUID"),
    (
        lambda r, c, v: (r, _with_chunk(c, 0, chunk_id=c[0].chunk_id.upper()), v),
        "not in canonical form",
    ),
    (lambda r, c, v: (r, _with_chunk(c, 2, chunk_id=c[0].chunk_id), v), "appears twice"),
    (lambda r, c, v: (replace(r, document_id=""), c, v), "document_id must not be empty"),
    (lambda r, c, v: (replace(r, tenant=""), c, v), "tenant is missing"),
    (lambda r, c, v: (r, [replace(c[0], tenant=GLOBEX), *c[1:]], v), "different from its doc"),
    (
        lambda r, c, v: (r, [replace(c[0], access_labels=("hr",)), *c[1:]], v),
        "different from its document",
    ),
    (lambda r, c, v: (r, [*c[:2], replace(c[2], tags=("x",))], v), "different from its document"),
    (
        lambda r, c, v: (r, [replace(c[0], document_date_unix=5), *c[1:]], v),
        "different from its document",
    ),
    (lambda r, c, v: (replace(r, tags=("bad\x00",)), c, v), "tag 'bad\\\\x00' is invalid"),
    (lambda r, c, v: (replace(r, access_labels=(" hr",)), c, v), "access label ' hr' is invalid"),
]


@pytest.mark.parametrize(
    ("mutate", "message"), BAD_REPLACEMENTS, ids=[m for _, m in BAD_REPLACEMENTS]
)
def test_replace_rejects_bad_input_without_writing(
    library: VectorStore, mutate: Callable[..., Document], message: str
) -> None:
    """On the shared library: a rejected replacement of its "a" changes nothing."""
    before = library.stats()
    record, chunks, vectors = mutate(*make_document("a", 3, version="new"))
    with pytest.raises(InvalidInputError, match=message):
        library.replace_document(record, chunks, vectors)
    assert library.stats() == before
    old_record, old_chunks, _ = LIBRARY[0]
    assert library.get_document(ACME, "a") == old_record
    only_a = SearchFilter(document_ids=("a",))
    assert {h.chunk for h in library.search(Caller(ACME), QUERY, 10, only_a)} == set(old_chunks)


def test_replace_refuses_chunk_ids_of_another_document(store: VectorStore) -> None:
    record, chunks, vectors = make_document("first", 2)
    store.replace_document(record, chunks, vectors)
    thief_record, thief_chunks, thief_vectors = make_document("second", 2)
    stolen = _with_chunk(thief_chunks, 1, chunk_id=chunks[0].chunk_id)
    with pytest.raises(InvalidInputError, match="already belongs to document 'first'"):
        store.replace_document(thief_record, stolen, thief_vectors)
    assert store.search(Caller(ACME), vectors[0], 1, ALL)[0].chunk == chunks[0]
    assert store.get_document(ACME, "second") is None
    assert counts(store) == (1, 2)


def test_readers_never_see_a_half_replaced_document(store: VectorStore) -> None:
    """Version A has 3 chunks, version B 5 with other ids: any mix is detectable.
    A search may fail as UNAVAILABLE (retryable: it raced replacements on every
    attempt); one that returns shows one complete version."""
    version_a = make_document("doc", 3, version="A", seed=1)
    version_b = make_document("doc", 5, version="B", seed=2)
    store.replace_document(*make_document("bystander", 4))
    store.replace_document(*version_a)
    errors: list[BaseException] = []
    writer_done = threading.Event()
    observed = {"A": 0, "B": 0, "unavailable": 0}

    def writer() -> None:
        try:
            for i in range(60):
                store.replace_document(*(version_b if i % 2 == 0 else version_a))
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer_done.set()

    def reader(search_filter: SearchFilter, options: SearchOptions) -> None:
        try:
            while not writer_done.is_set():
                try:
                    hits = store.search(Caller(ACME), QUERY, 20, search_filter, options)
                except UnavailableError:
                    observed["unavailable"] += 1
                    continue
                versions = versions_of(hits)
                assert len(set(versions)) == 1, f"mixed versions in one result: {versions}"
                assert len(versions) == {"A": 3, "B": 5}[versions[0]], versions
                if search_filter == ALL:
                    assert len(versions_of(hits, "bystander")) == 4
                observed[versions[0]] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=writer),
        threading.Thread(target=reader, args=(SearchFilter(document_ids=("doc",)), MODES["dense"])),
        threading.Thread(target=reader, args=(ALL, SearchOptions(mode=HYBRID, text="chunk"))),
    ]
    # Switch threads as often as possible so readers do run between the writer's
    # engine calls: with the default 5 ms interval an embedded store without
    # locking still passed this test; with this one it fails every run.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        sys.setswitchinterval(switch_interval)
    assert not errors, errors[0]
    assert observed["A"] + observed["B"] > observed["unavailable"], observed
    assert counts(store) == (2, 4 + 3)  # 60 replacements end on A


# -- removal --------------------------------------------------------------------


def test_remove_document_removes_chunks_and_record(store: VectorStore) -> None:
    for name, count in (("a", 3), ("b", 4), ("c", 2)):
        store.replace_document(*document(ACME, name, count))
    assert store.remove_document(ACME, "b") == 4
    assert store.get_document(ACME, "b") is None
    for mode, hits in search_all_modes(store, Caller(ACME)).items():
        assert docs(hits) == {(ACME, "a"), (ACME, "c")}, mode
    only_b = SearchFilter(document_ids=("b",))
    assert all(hits == [] for hits in search_all_modes(store, Caller(ACME), only_b).values())
    assert [r.document_id for r in store.list_documents(ACME, 10)] == ["a", "c"]
    assert store.lookup_documents(Caller(ACME), ["b", "c"]) == [store.get_document(ACME, "c")]
    assert counts(store) == (2, 5)
    with pytest.raises(NotFoundError, match=exactly("document 'b' not found in tenant 'acme'")):
        store.remove_document(ACME, "b")


def test_remove_unknown_document_is_not_found(store: VectorStore) -> None:
    with pytest.raises(
        NotFoundError, match=exactly("document 'missing' not found in tenant 'acme'")
    ):
        store.remove_document(ACME, "missing")


# -- registry -------------------------------------------------------------------


def test_get_document(library: VectorStore) -> None:
    for record, _, _ in LIBRARY:
        assert library.get_document(record.tenant, record.document_id) == record
    assert library.get_document(ACME, "other") is None


def test_list_documents_pages_in_document_id_order(store: VectorStore) -> None:
    names = ["m", "b", "z", "a", "doc-10", "doc-2", "Q", "é"]
    for name in names:
        store.replace_document(*make_document(name, 1))
    expected = sorted(names)

    pages: list[list[str]] = []
    after = ""
    while page := store.list_documents(ACME, 3, after):
        pages.append([record.document_id for record in page])
        after = page[-1].document_id
    assert pages == [expected[0:3], expected[3:6], expected[6:8]]
    assert store.list_documents(ACME, 100, after="doc-10") == [
        store.get_document(ACME, name) for name in expected if name > "doc-10"
    ]
    assert store.list_documents(ACME, 5, after=expected[-1]) == []


def test_stats_count_every_tenants_documents_and_chunks(library: VectorStore) -> None:
    stats = library.stats()
    assert (stats.document_count, stats.chunk_count) == (len(LIBRARY), sum(CHUNKS.values()))
    assert stats == StoreStats(len(LIBRARY), sum(CHUNKS.values()), DIM, stats.backend)
    assert stats.backend and library.stats() == stats


# -- ordering of ties -----------------------------------------------------------

TIED = [
    (
        document(
            ACME,
            f"near-{i}",
            text="zebra grazing beside apple trees in an orchard",
            vectors=unit_vectors(i, 1),
        ),
        document(ACME, f"term-{i}", text="zebra zebra zebra", vectors=unit_vectors(1000 + i, 1)),
    )
    for i in range(12)
]
"""Pairs whose hybrid scores tie: "near-i" is first in the dense leg and second
in the keyword leg, "term-i" the other way round, so both get the same RRF
score. Which of the two has the smaller chunk id varies."""


@pytest.fixture
def tied(store: VectorStore) -> VectorStore:
    for pair in TIED:
        for written in pair:
            store.replace_document(*written)
    return store


def _tied_search(
    store: VectorStore, pair: int, top_k: int, mode: RetrievalMode = HYBRID
) -> list[str]:
    (near_record, _, (query,)), (term_record, _, _) = TIED[pair]
    only_the_pair = SearchFilter(document_ids=(near_record.document_id, term_record.document_id))
    options = SearchOptions(mode=mode, text="zebra")
    return ids(store.search(Caller(ACME), query, top_k, only_the_pair, options))


def test_hybrid_ties_come_back_in_the_same_order_on_every_call(tied: VectorStore) -> None:
    for pair, ((_, (near_chunk,), _), (_, (term_chunk,), _)) in enumerate(TIED):
        near_id, term_id = near_chunk.chunk_id, term_chunk.chunk_id
        assert _tied_search(tied, pair, 2, RetrievalMode.DENSE) == [near_id, term_id]
        assert _tied_search(tied, pair, 2, KEYWORD) == [term_id, near_id]
        for top_k in (1, 2):
            orders = {tuple(_tied_search(tied, pair, top_k)) for _ in range(3)}
            assert len(orders) == 1, (pair, top_k, orders)
            assert len(orders.pop()) == top_k


def test_hybrid_ties_go_to_the_smaller_chunk_id_even_after_a_rewrite(tied: VectorStore) -> None:
    pairs = [
        (near_chunks[0].chunk_id, term_chunks[0].chunk_id)
        for (_, near_chunks, _), (_, term_chunks, _) in TIED
    ]
    assert {near_id < term_id for near_id, term_id in pairs} == {True, False}
    for _ in range(2):
        for pair, (near_id, term_id) in enumerate(pairs):
            assert _tied_search(tied, pair, 1) == [min(near_id, term_id)], pair
            assert _tied_search(tied, pair, 2) == sorted([near_id, term_id]), pair
        for written_pair in TIED:  # the same documents again: the same order
            for written in written_pair:
                tied.replace_document(*written)


def test_equal_scores_come_back_in_the_same_order_on_every_call(store: VectorStore) -> None:
    for i in range(6):
        store.replace_document(*document(ACME, f"twin-{i}", vectors=[QUERY]))
    for vector, options in ((QUERY, MODES["dense"]), ([], MODES["keyword"])):
        for top_k in (1, 3, 6):
            orders = {
                tuple(store.search(Caller(ACME), vector, top_k, ALL, options)) for _ in range(3)
            }
            assert len(orders) == 1, (options.mode, top_k, orders)
            hits = orders.pop()
            assert len(hits) == top_k and len({h.score for h in hits}) == 1  # they do tie


# -- validation -----------------------------------------------------------------

NAN = float("nan")
KEYWORD_ONLY = SearchOptions(mode=KEYWORD, text="leave")
BAD_SEARCHES: list[tuple[list[float], int, SearchOptions, str]] = [
    (QUERY, 0, MODES["dense"], "top_k must be between 1 and 100, got 0"),
    (QUERY, -3, MODES["hybrid"], "top_k must be between 1 and 100, got -3"),
    ([], MAX_TOP_K + 1, KEYWORD_ONLY, "top_k must be between 1 and 100, got 101"),
    ([1.0, 0.0, 0.0], 5, MODES["dense"], "query vector has dimension 3, expected 8"),
    ([*QUERY, 1.0], 5, MODES["keyword"], "query vector has dimension 9, expected 8"),
    ([NAN, *QUERY[1:]], 5, MODES["dense"], "query vector contains NaN or infinite values"),
    (
        [0.0] * DIM,
        5,
        MODES["hybrid"],
        "query vector is the zero vector; cosine is undefined for it",
    ),
    ([], 5, MODES["dense"], "query vector has dimension 0, expected 8"),
    ([], 5, MODES["hybrid"], "query vector has dimension 0, expected 8"),
    ([], 5, SearchOptions(mode=KEYWORD), "query_text is empty; the keyword mode needs it"),
    (
        QUERY,
        5,
        SearchOptions(mode=HYBRID, text="  "),
        "query_text is empty; the hybrid mode needs it",
    ),
    (
        [],
        5,
        replace(KEYWORD_ONLY, text="a" * 10_001),
        "query_text is 10001 characters; the limit is 10000",
    ),
    (QUERY, 5, SearchOptions(mmr_lambda=1.5), "mmr_lambda must be between 0 and 1, got 1.5"),
    (QUERY, 5, SearchOptions(mmr_lambda=-0.5), "mmr_lambda must be between 0 and 1, got -0.5"),
]


def exactly(message: str) -> str:
    """A `match` pattern for the whole of `message`."""
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    ("vector", "top_k", "options", "message"), BAD_SEARCHES, ids=[m for *_, m in BAD_SEARCHES]
)
def test_bad_searches_are_invalid_input(
    library: VectorStore, vector: list[float], top_k: int, options: SearchOptions, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=exactly(message)):
        library.search(Caller(ACME), vector, top_k, ALL, options)


@pytest.mark.parametrize(
    ("caller", "search_filter", "message"),
    [
        (Caller(""), ALL, "tenant is missing"),
        (Caller("two words"), ALL, "tenant 'two words' is invalid"),
        (Caller("a/b"), ALL, "tenant 'a/b' is invalid"),
        (Caller("x" * 65), ALL, "tenant 'x+' is invalid"),
        (Caller(ACME, ("ok", "bad\nlabel")), ALL, "access label 'bad\\\\nlabel' is invalid"),
        (Caller(ACME, (" padded",)), ALL, "access label ' padded' is invalid"),
        (Caller(ACME, tuple(f"l{i}" for i in range(65))), ALL, "access label: 65 given"),
        (Caller(ACME), SearchFilter(tags=("",)), "filter.tags '' is invalid"),
        (
            Caller(ACME),
            SearchFilter(document_ids=tuple(f"d{i}" for i in range(1025))),
            "filter.document_ids has 1025 values; the limit is 1024",
        ),
        (
            Caller(ACME),
            SearchFilter(source_uris=("s",) * 1025),
            "filter.source_uris has 1025 values; the limit is 1024",
        ),
        (
            Caller(ACME),
            SearchFilter(date_from_unix=200, date_to_unix=100),
            r"filter.date_to_unix \(100\) is before filter.date_from_unix \(200\)",
        ),
    ],
)
def test_search_rejects_invalid_callers_and_filters_in_every_mode(
    library: VectorStore, caller: Caller, search_filter: SearchFilter, message: str
) -> None:
    for options in MODES.values():
        with pytest.raises(InvalidInputError, match=message):
            library.search(caller, QUERY, 5, search_filter, options)


NO_TENANT = "tenant is missing; every request must name its tenant"
BAD_TENANT = (
    "tenant 'no spaces' is invalid: use 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
)
BAD_REGISTRY_CALLS: list[tuple[Callable[[VectorStore], object], str]] = [
    (lambda s: s.get_document(ACME, ""), "document_id must not be empty"),
    (lambda s: s.get_document("", "a"), NO_TENANT),
    (lambda s: s.get_document("no spaces", "a"), BAD_TENANT),
    (lambda s: s.list_documents("", 10), NO_TENANT),
    (lambda s: s.list_documents(ACME, 0), "limit must be between 1 and 10000, got 0"),
    (lambda s: s.list_documents(ACME, -1), "limit must be between 1 and 10000, got -1"),
    (lambda s: s.list_documents(ACME, 10_001), "limit must be between 1 and 10000, got 10001"),
    (lambda s: s.remove_document("", "a"), NO_TENANT),
    (lambda s: s.remove_document(ACME, ""), "document_id must not be empty"),
    (lambda s: s.lookup_documents(Caller(""), ["a"]), NO_TENANT),
    (
        lambda s: s.lookup_documents(Caller(ACME), []),
        "document_ids is empty; give 1 to 1000 document ids",
    ),
    (
        lambda s: s.lookup_documents(Caller(ACME), ["a", ""]),
        "document_ids contains an empty document id",
    ),
    (
        lambda s: s.lookup_documents(Caller(ACME), ["a"] * 1001),
        "document_ids holds 1001 ids; the limit is 1000",
    ),
]


@pytest.mark.parametrize(
    ("call", "message"), BAD_REGISTRY_CALLS, ids=[m for _, m in BAD_REGISTRY_CALLS]
)
def test_bad_registry_calls_are_invalid_input(
    library: VectorStore, call: Callable[[VectorStore], object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=exactly(message)):
        call(library)


# -- opening and closing --------------------------------------------------------


def test_a_closed_store_refuses_calls(store: VectorStore) -> None:
    store.replace_document(*make_document("doc", 1))
    store.close()
    store.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: store.search(Caller(ACME), QUERY, 1, ALL),
        lambda: store.search(Caller(ACME), [], 1, ALL, MODES["keyword"]),
        lambda: store.replace_document(*make_document("doc", 1, version="v2")),
        lambda: store.get_document(ACME, "doc"),
        lambda: store.lookup_documents(Caller(ACME), ["doc"]),
        lambda: store.list_documents(ACME, 10),
        lambda: store.remove_document(ACME, "doc"),
        store.stats,
    ]
    for call in calls:
        with pytest.raises(FailedPreconditionError, match=exactly("vector store is closed")):
            call()


def test_reopening_keeps_the_data_and_refuses_another_dimension(opener: Opener) -> None:
    written = make_document("doc", 3)
    first = opener(DIM)
    first.replace_document(*written)
    first.close()
    with pytest.raises(
        FailedPreconditionError,
        match="holds vectors of dimension 8, but dimension 16 was requested; re-index",
    ):
        opener(16)
    reopened = opener(DIM)  # the refused open left it usable
    try:
        assert counts(reopened) == (1, 3)
        assert reopened.get_document(ACME, "doc") == written[0]
        assert reopened.search(Caller(ACME), written[2][1], 1, ALL)[0].chunk == written[1][1]
    finally:
        reopened.close()


def test_a_dimension_below_one_is_refused(opener: Opener) -> None:
    with pytest.raises(InvalidInputError, match=exactly("dimension must be at least 1, got 0")):
        opener(0)


# -- what a re-index reads ---------------------------------------------------------


def test_document_chunks_are_the_live_version_by_ordinal(store: VectorStore) -> None:
    record, chunks, vectors = make_document("doc", 3)
    store.replace_document(record, chunks, vectors)
    assert store.document_chunks(ACME, "doc") == sorted(chunks, key=lambda c: c.ordinal)
    shorter = make_document("doc", 1, version="v2")
    store.replace_document(*shorter)
    assert store.document_chunks(ACME, "doc") == list(shorter[1])
    with pytest.raises(NotFoundError, match="document 'doc' not found in tenant 'globex'"):
        store.document_chunks(GLOBEX, "doc")
    with pytest.raises(InvalidInputError, match="tenant"):
        store.document_chunks("", "doc")


def test_tenants_are_those_with_documents(library: VectorStore) -> None:
    assert library.tenants() == sorted({ACME, GLOBEX})


def test_the_generation_table_round_trips_and_outlives_a_reopening(opener: Opener) -> None:
    first = opener(DIM)
    assert first.read_generations() == ""
    first.write_generations('[{"name": "g0"}]')
    first.write_generations('[{"name": "g1"}]')
    first.close()
    reopened = opener(DIM)
    try:
        assert reopened.read_generations() == '[{"name": "g1"}]'
    finally:
        reopened.close()


# -- through the servicer -------------------------------------------------------


MODEL = "test-embedder"


def replace_request(
    record: DocumentRecord,
    chunks: list[StoredChunk],
    vectors: list[list[float]],
    model: str = MODEL,
) -> retrieval_pb2.ReplaceDocumentRequest:
    """The ReplaceDocument call that indexes `document(...)`'s parts."""
    return retrieval_pb2.ReplaceDocumentRequest(
        document=common_pb2.DocumentInfo(**asdict(record)),
        chunks=[
            retrieval_pb2.IndexedChunk(
                chunk=common_pb2.Chunk(**asdict(chunk)),
                vector=embedding_pb2.Vector(values=vector),
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ],
        embedding_model=model,
    )


async def test_the_servicer_holds_the_index_to_its_embedding_model(store: VectorStore) -> None:
    servicer = RetrievalServicer(IndexGenerations(store))
    stats = await servicer.GetStats(retrieval_pb2.GetStatsRequest(), None)
    assert stats.embedding_model == ""  # nothing written yet
    first = document(ACME, "first", 1)
    await servicer.ReplaceDocument(replace_request(*first), None)
    stats = await servicer.GetStats(retrieval_pb2.GetStatsRequest(), None)
    assert (stats.embedding_model, stats.dimension) == (MODEL, DIM)

    other = document(ACME, "other", 1)
    refused = (
        f"the index holds vectors of embedding model '{MODEL}' ({DIM} dimensions), not of "
        "'another-embedder'"
    )
    with pytest.raises(FailedPreconditionError, match=re.escape(refused)):
        await servicer.ReplaceDocument(replace_request(*other, model="another-embedder"), None)
    assert store.get_document(ACME, "other") is None  # nothing was written
    with pytest.raises(InvalidInputError, match="embedding_model is empty"):
        await servicer.ReplaceDocument(replace_request(*other, model=""), None)

    def search(model: str) -> retrieval_pb2.SearchRequest:
        return retrieval_pb2.SearchRequest(
            vector=embedding_pb2.Vector(values=QUERY),
            top_k=1,
            caller=common_pb2.Caller(tenant=ACME),
            embedding_model=model,
        )

    assert (await servicer.Search(search(MODEL), None)).results
    assert (await servicer.Search(search(""), None)).results  # a tool's own vector: unchecked
    with pytest.raises(FailedPreconditionError, match=re.escape(refused)):
        await servicer.Search(search("another-embedder"), None)


def test_the_embedding_model_outlives_a_reopening(opener: Opener) -> None:
    first = opener(DIM)
    first.claim_embedder(MODEL)
    first.replace_document(*make_document("doc", 1))
    first.close()
    reopened = opener(DIM)
    try:
        assert reopened.stats().embedding_model == MODEL
        with pytest.raises(FailedPreconditionError, match="not of 'another-embedder'"):
            reopened.claim_embedder("another-embedder")
        with pytest.raises(FailedPreconditionError, match="not of 'another-embedder'"):
            reopened.check_embedder("another-embedder")
        reopened.claim_embedder(MODEL)
        reopened.check_embedder(MODEL)
    finally:
        reopened.close()


async def test_the_servicer_carries_tenancy_between_protobuf_and_store(
    store: VectorStore,
) -> None:
    servicer = RetrievalServicer(IndexGenerations(store))
    record, chunks, vectors = document(
        ACME, "doc", 2, access_labels=("hr",), tags=("policy",), document_date_unix=200
    )
    await servicer.ReplaceDocument(replace_request(record, chunks, vectors), None)
    assert store.get_document(ACME, "doc") == record  # repeated fields arrived as tuples

    hr = common_pb2.Caller(tenant=ACME, access_labels=["hr"])
    found = await servicer.Search(
        retrieval_pb2.SearchRequest(vector=embedding_pb2.Vector(values=QUERY), top_k=5, caller=hr),
        None,
    )
    assert {r.chunk.chunk_id for r in found.results} == {c.chunk_id for c in chunks}
    assert list(found.results[0].chunk.access_labels) == ["hr"]
    assert found.results[0].chunk.document_date_unix == 200

    async def count(caller: common_pb2.Caller, **filter_fields: object) -> int:
        response = await servicer.Search(
            retrieval_pb2.SearchRequest(
                vector=embedding_pb2.Vector(values=QUERY),
                top_k=5,
                caller=caller,
                filter=common_pb2.MetadataFilter(**filter_fields),  # type: ignore[arg-type]
            ),
            None,
        )
        return len(response.results)

    assert await count(common_pb2.Caller(tenant=ACME)) == 0  # no label
    assert await count(common_pb2.Caller(tenant=GLOBEX, access_labels=["hr"])) == 0
    assert await count(hr, tags=["policy"]) == 2
    assert await count(hr, tags=["memo"]) == 0
    # An explicitly set 0 is a bound (HasField), unlike an unset date.
    assert await count(hr, date_to_unix=0) == 0
    assert await count(hr, date_from_unix=0) == 2
    assert await count(hr, date_from_unix=200, date_to_unix=200) == 2
    assert await count(hr, date_from_unix=201) == 0
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        await count(common_pb2.Caller())
    with pytest.raises(InvalidInputError, match=r"filter\.date_to_unix"):
        await count(hr, date_from_unix=5, date_to_unix=4)

    got = await servicer.GetDocument(
        retrieval_pb2.GetDocumentRequest(tenant=ACME, document_id="doc"), None
    )
    assert list(got.document.tags) == ["policy"] and got.document.tenant == ACME
    with pytest.raises(NotFoundError):
        await servicer.GetDocument(
            retrieval_pb2.GetDocumentRequest(tenant=GLOBEX, document_id="doc"), None
        )
    looked_up = await servicer.LookupDocuments(
        retrieval_pb2.LookupDocumentsRequest(caller=hr, document_ids=["nope", "doc", "nope"]),
        None,
    )
    assert [d.document_id for d in looked_up.found] == ["doc"]
    assert list(looked_up.found[0].access_labels) == ["hr"]
    assert list(looked_up.missing) == ["nope"]
    unlabelled = await servicer.LookupDocuments(
        retrieval_pb2.LookupDocumentsRequest(
            caller=common_pb2.Caller(tenant=ACME), document_ids=["doc"]
        ),
        None,
    )
    assert list(unlabelled.found) == [] and list(unlabelled.missing) == ["doc"]
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        await servicer.LookupDocuments(
            retrieval_pb2.LookupDocumentsRequest(document_ids=["doc"]), None
        )
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        await servicer.ListDocuments(retrieval_pb2.ListDocumentsRequest(), None)
    listing = await servicer.ListDocuments(retrieval_pb2.ListDocumentsRequest(tenant=GLOBEX), None)
    assert list(listing.documents) == []
    for caller, expected in ((hr, ["doc"]), (common_pb2.Caller(tenant=ACME), [])):
        listing = await servicer.ListDocuments(
            retrieval_pb2.ListDocumentsRequest(caller=caller), None
        )
        assert [d.document_id for d in listing.documents] == expected
    with pytest.raises(
        InvalidInputError, match=r"tenant .globex. and caller\.tenant .acme. differ"
    ):
        await servicer.ListDocuments(
            retrieval_pb2.ListDocumentsRequest(tenant=GLOBEX, caller=hr), None
        )
    with pytest.raises(NotFoundError):
        await servicer.RemoveDocument(
            retrieval_pb2.RemoveDocumentRequest(tenant=GLOBEX, document_id="doc"), None
        )
    removed = await servicer.RemoveDocument(
        retrieval_pb2.RemoveDocumentRequest(tenant=ACME, document_id="doc"), None
    )
    assert removed.chunks_deleted == 2
