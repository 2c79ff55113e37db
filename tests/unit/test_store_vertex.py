"""What only the Vector Search store has: its restricts, its manifest protocol
under faults, its retries and the shape of its calls (the contract suite holds
it to everything the other backends do).

The store runs through the real aiplatform REST clients against the Vector
Search fake and keeps its side store in the Firestore emulator.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services.common.errors import UnavailableError
from services.common.search import SearchFilter
from services.common.tenancy import Caller
from services.retrieval import filters
from services.retrieval.store import RetrievalMode, SearchOptions
from services.retrieval.vertex import (
    UNRESTRICTED,
    VectorSearchTarget,
    VertexVectorStore,
    restricts_of,
)
from tests.contract.fakes.vector_search_fake import (
    FIND_NEIGHBORS,
    REMOVE,
    UPSERT,
    VectorSearchFake,
)
from tests.contract.vector_store import DIM, VectorSearchWorld, make_document
from tests.emulators import fresh_project

ACME = Caller("acme")
HYBRID = SearchOptions(mode=RetrievalMode.HYBRID, text="doc chunk")


@dataclass
class Setup:
    fake: VectorSearchFake
    target: VectorSearchTarget
    project: str
    """The side store's Firestore project."""
    store: VertexVectorStore


@pytest.fixture
def setup() -> Iterator[Setup]:
    world = VectorSearchWorld.get()
    target, project = world.target(DIM), fresh_project()
    store = world.open(target, project, DIM, retry_seconds=0)
    yield Setup(world.fake, target, project, store)
    world.fake.clear_faults()
    store.close()


def chunk_ids(store: VertexVectorStore, vector: list[float]) -> set[str]:
    """The chunk ids every mode finds for the whole tenant."""
    found: set[str] = set()
    for options in (SearchOptions(), HYBRID):
        found |= {hit.chunk.chunk_id for hit in store.search(ACME, vector, 20, ALL, options)}
    return found


ALL = SearchFilter()


# -- restricts ------------------------------------------------------------------


def test_every_search_filter_becomes_restricts() -> None:
    spec = filters.search_filter(
        Caller("acme", ("hr",)),
        SearchFilter(tags=("policy",), date_from_unix=10, date_to_unix=20),
    )
    tokens, numeric = restricts_of(spec)
    assert {(r.namespace, tuple(r.allow_list)) for r in tokens} == {
        ("tenant", ("acme",)),
        ("access_labels", (UNRESTRICTED, "hr")),
        ("tags", ("policy",)),
    }
    assert {(r.namespace, r.value_int, r.op.name) for r in numeric} == {
        ("document_date_unix", 10, "GREATER_EQUAL"),
        ("document_date_unix", 20, "LESS_EQUAL"),
        ("document_date_unix", 0, "NOT_EQUAL"),
    }


def test_a_caller_without_labels_sees_only_unrestricted_chunks() -> None:
    tokens, _ = restricts_of(filters.search_filter(ACME, ALL))
    allowed = {r.namespace: tuple(r.allow_list) for r in tokens}
    assert allowed["access_labels"] == (UNRESTRICTED,)


def test_no_query_can_be_built_without_the_tenant() -> None:
    with pytest.raises(TypeError, match="must restrict the tenant"):
        restricts_of(filters.AllOf((filters.Match("document_id", "doc"),)))


# -- calls ----------------------------------------------------------------------


def test_a_hybrid_search_is_one_find_neighbors_request(setup: Setup) -> None:
    record, chunks, vectors = make_document("doc", 3)
    setup.store.replace_document(record, chunks, vectors)
    before = len(setup.fake.calls(FIND_NEIGHBORS))
    setup.store.search(ACME, vectors[0], 3, ALL, HYBRID)
    (call,) = setup.fake.calls(FIND_NEIGHBORS)[before:]
    queries = call.body["queries"]
    assert len(queries) == 2
    assert "featureVector" in queries[0]["datapoint"]
    assert "sparseEmbedding" in queries[1]["datapoint"]
    for query in queries:  # the tenant is in every leg
        restricts = query["datapoint"]["restricts"]
        assert {"namespace": "tenant", "allowList": ["acme"]} in restricts


def test_a_throttled_query_is_retried(setup: Setup) -> None:
    world = VectorSearchWorld.get()
    store = world.open(setup.target, fresh_project(), DIM, retry_seconds=5)
    try:
        record, chunks, vectors = make_document("doc", 2)
        store.replace_document(record, chunks, vectors)
        setup.fake.fail(FIND_NEIGHBORS, 429)
        before = len(setup.fake.calls(FIND_NEIGHBORS))
        hits = store.search(ACME, vectors[0], 2, ALL)
        assert [hit.chunk for hit in hits][:1] == [chunks[0]]
        statuses = [call.status for call in setup.fake.calls(FIND_NEIGHBORS)[before:]]
        assert statuses == [429, 200]
    finally:
        store.close()


# -- faults ---------------------------------------------------------------------


def test_vector_search_down_during_a_replacement_leaves_the_old_version(setup: Setup) -> None:
    store, fake = setup.store, setup.fake
    old = make_document("doc", 3, version="old")
    store.replace_document(*old)
    new = make_document("doc", 4, version="new")

    fake.fail(UPSERT, 503, times=None)
    with pytest.raises(UnavailableError, match="Vector Search is unavailable"):
        store.replace_document(*new)
    assert store.get_document("acme", "doc") == old[0]
    assert chunk_ids(store, old[2][0]) == {c.chunk_id for c in old[1]}

    fake.clear_faults()  # the document is retriable at once
    assert store.replace_document(*new) == (4, 3)
    assert store.get_document("acme", "doc") == new[0]
    assert chunk_ids(store, new[2][0]) == {c.chunk_id for c in new[1]}
    assert len(fake.datapoints(setup.target.index)) == 4  # nothing of the failed try is left


def test_superseded_datapoints_that_outlive_a_failed_deletion_are_never_returned(
    setup: Setup,
) -> None:
    store, fake = setup.store, setup.fake
    store.replace_document(*make_document("doc", 3, version="old"))
    new = make_document("doc", 3, version="new")

    fake.fail(REMOVE, 503, times=None)
    assert store.replace_document(*new) == (3, 3)  # the flip succeeded; the deletion did not
    assert len(fake.datapoints(setup.target.index)) == 6
    for _ in range(3):
        assert chunk_ids(store, new[2][0]) == {c.chunk_id for c in new[1]}

    fake.clear_faults()
    store.replace_document(*make_document("other", 1))  # another document's write
    assert len(fake.datapoints(setup.target.index)) == 7
    store.replace_document(*new)  # the document's next write collects its garbage
    assert len(fake.datapoints(setup.target.index)) == 4


def test_removal_hides_the_document_even_when_its_datapoints_cannot_be_deleted(
    setup: Setup,
) -> None:
    store, fake = setup.store, setup.fake
    record, chunks, vectors = make_document("doc", 2)
    store.replace_document(record, chunks, vectors)
    fake.fail(REMOVE, 503, times=None)
    assert store.remove_document("acme", "doc") == 2
    assert store.get_document("acme", "doc") is None
    assert store.search(ACME, vectors[0], 5, ALL) == []
    assert store.stats().document_count == 0
    fake.clear_faults()
    store.replace_document(record, chunks, vectors)
    assert {hit.chunk.chunk_id for hit in store.search(ACME, vectors[0], 5, ALL)} == {
        c.chunk_id for c in chunks
    }
    assert len(fake.datapoints(setup.target.index)) == 2


def test_the_next_write_collects_what_a_crashed_writer_left(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, fake = setup.store, setup.fake
    live = make_document("doc", 2, version="live")
    store.replace_document(*live)

    def crash(*args: object) -> None:
        raise RuntimeError("the writer's process died")

    monkeypatch.setattr(store, "_await_visible", crash)
    monkeypatch.setattr(store, "_abandon", lambda *args: None)  # no clean-up: it died
    with pytest.raises(RuntimeError):
        store.replace_document(*make_document("doc", 3, version="crashed"))
    monkeypatch.undo()
    assert len(fake.datapoints(setup.target.index)) == 2 + 3
    assert chunk_ids(store, live[2][0]) == {c.chunk_id for c in live[1]}  # never visible

    store.replace_document(*live)  # within the writer timeout: the crashed version stays
    assert len(fake.datapoints(setup.target.index)) == 2 + 3

    world = VectorSearchWorld.get()
    later = world.open(setup.target, setup.project, DIM, retry_seconds=0, writer_timeout_seconds=0)
    try:
        later.replace_document(*live)
        assert len(fake.datapoints(setup.target.index)) == 2
        assert chunk_ids(later, live[2][0]) == {c.chunk_id for c in live[1]}
    finally:
        later.close()
