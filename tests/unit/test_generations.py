"""Index generations (`generations.py`) on the embedded engine, Qdrant and Vector Search.

Routing by embedding model, the states and their transitions, deletions that
reach every generation, and a table that outlives a restart. The whole re-index,
through real processes while asks go on, is tests/integration/test_reindex.py.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.common.errors import (
    AbortedError,
    FailedPreconditionError,
    NotFoundError,
    UnimplementedError,
)
from services.retrieval.edge import EdgeGenerationStores, EdgeVectorStore
from services.retrieval.firestore_side import FirestoreSideStore
from services.retrieval.generations import GenerationState, GenerationStores, IndexGenerations
from services.retrieval.qdrant import QdrantGenerationStores, QdrantServerStore, QdrantTuning
from services.retrieval.store import Caller, VectorStore
from services.retrieval.vertex import (
    VectorSearchTarget,
    VertexGenerationStores,
    VertexTuning,
    VertexVectorStore,
    anonymous,
)
from tests.contract.vector_store import (
    ALL,
    DIM,
    QDRANT_LOCAL_MODE_WARNINGS,
    TENANT,
    InMemoryQdrant,
    VectorSearchWorld,
    make_document,
    unit_vectors,
)
from tests.emulators import firestore_client, fresh_project

pytestmark = QDRANT_LOCAL_MODE_WARNINGS

OLD, NEW = "old-embedder", "new-embedder"
NEW_DIM = 4
LIVE, BUILDING, RETIRED = GenerationState.LIVE, GenerationState.BUILDING, GenerationState.RETIRED

Backend = Callable[[], tuple[VectorStore, GenerationStores]]
"""Opens (again, after a close) the first store and the backend's other generations."""


def edge_backend(directory: Path) -> Backend:
    first = directory / "index"
    return lambda: (EdgeVectorStore.open(first, DIM), EdgeGenerationStores(first))


def qdrant_backend(directory: Path) -> Backend:
    server = InMemoryQdrant()

    def connect() -> QdrantServerStore:
        return QdrantServerStore.open(server, "chunks", DIM)  # type: ignore[arg-type]

    stores = QdrantGenerationStores(lambda: server, "chunks", QdrantTuning())  # type: ignore[arg-type,return-value]
    return lambda: (connect(), stores)


def vertex_backend(directory: Path) -> Backend:
    """Vector Search on the fake with one spare index of the new dimension, the
    side stores in a Firestore emulator project of the test's own."""
    world = VectorSearchWorld.get()
    project = fresh_project()
    first, spare = world.target(DIM), world.target(NEW_DIM)

    def connect(target: VectorSearchTarget, prefix: str, dimension: int) -> VertexVectorStore:
        return VertexVectorStore.connect(
            target,
            firestore_client(world.firestore, project),
            prefix,
            dimension,
            credentials=anonymous(),
            tuning=VertexTuning(exact=True),
        )

    def open_backend() -> tuple[VectorStore, GenerationStores]:
        slots = FirestoreSideStore(firestore_client(world.firestore, project), "rag")
        return connect(first, "rag", DIM), VertexGenerationStores([spare], slots, "rag", connect)

    return open_backend


BACKENDS = {"edge": edge_backend, "qdrant": qdrant_backend, "vertex": vertex_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def generations(backend: Backend) -> Iterator[IndexGenerations]:
    first, stores = backend()
    opened = IndexGenerations(first, stores)
    first.claim_embedder(OLD)
    first.replace_document(*make_document("kept", 2))
    first.replace_document(*make_document("gone", 1))
    yield opened
    opened.close()


def write_new(generations: IndexGenerations, document_id: str, count: int = 1) -> None:
    """Write a document with NEW's vectors, wherever NEW's writes go."""
    record, chunks, _ = make_document(document_id, count)
    store = generations.for_write(NEW)
    store.claim_embedder(NEW)
    store.replace_document(record, chunks, unit_vectors(7, count, NEW_DIM))


def table(generations: IndexGenerations) -> dict[str, tuple[GenerationState, str, int]]:
    return {
        row.name: (row.state, row.embedding_model, stats.document_count)
        for row, stats in generations.generations()
    }


def test_an_index_before_any_reindex_is_one_live_generation(
    generations: IndexGenerations,
) -> None:
    assert table(generations) == {"g0": (LIVE, OLD, 2)}
    store, live_model = generations.for_search(OLD)
    assert live_model == "" and store is generations.live()  # nothing written to the table yet
    assert generations.for_write(OLD) is generations.live()


def test_a_building_generation_takes_its_models_writes_and_no_search(
    generations: IndexGenerations,
) -> None:
    created = generations.create(NEW, NEW_DIM)
    assert (created.name, created.state, created.dimension) == ("g1", BUILDING, NEW_DIM)
    write_new(generations, "kept")
    assert table(generations) == {"g0": (LIVE, OLD, 2), "g1": (BUILDING, NEW, 1)}
    with pytest.raises(FailedPreconditionError, match="generation g1 of embedding model "
                       "'new-embedder' is still being built; search with the live model "
                       "'old-embedder'"):  # fmt: skip
        generations.for_search(NEW)
    store, live_model = generations.for_search(OLD)
    assert (store, live_model) == (generations.live(), OLD)
    assert store.get_document(TENANT, "gone") is not None


def test_creating_again_resumes_and_one_model_is_built_at_a_time(
    generations: IndexGenerations,
) -> None:
    first = generations.create(NEW, NEW_DIM)
    assert generations.create(NEW, NEW_DIM) == first
    with pytest.raises(FailedPreconditionError, match="generation g1 is being built for "
                       "'new-embedder'; finish or drop it before building another"):  # fmt: skip
        generations.create("third-embedder", NEW_DIM)
    with pytest.raises(FailedPreconditionError, match="generation g0 of 'old-embedder' is live"):
        generations.create(OLD, DIM)


def test_promotion_switches_readers_and_aborts_the_old_models_writes(
    generations: IndexGenerations,
) -> None:
    generations.create(NEW, NEW_DIM)
    write_new(generations, "kept", 2)
    promoted = generations.promote("g1")
    assert promoted.state is LIVE and promoted.promoted_at_unix > 0
    assert table(generations) == {"g1": (LIVE, NEW, 1), "g0": (RETIRED, OLD, 2)}

    new_store, live_model = generations.for_search(NEW)
    assert live_model == NEW and new_store is generations.live()
    assert new_store.search(Caller(TENANT), unit_vectors(1, 1, NEW_DIM)[0], 5, ALL)
    old_store, live_model = generations.for_search(OLD)  # asked just before the switch
    assert live_model == NEW and old_store.get_document(TENANT, "gone") is not None
    with pytest.raises(AbortedError, match="the index switched from embedding model "
                       "'old-embedder' to 'new-embedder' \\(generation g1\\); embed with "
                       "'new-embedder' and write again"):  # fmt: skip
        generations.for_write(OLD)
    assert generations.for_write(NEW) is new_store

    generations.promote("g0")  # a switch is undone the same way
    assert table(generations)["g0"][0] is LIVE and table(generations)["g1"][0] is RETIRED


def test_a_deletion_reaches_every_generation(generations: IndexGenerations) -> None:
    generations.create(NEW, NEW_DIM)
    write_new(generations, "gone")
    assert generations.remove(TENANT, "gone") == 1
    assert table(generations) == {"g0": (LIVE, OLD, 1), "g1": (BUILDING, NEW, 0)}
    with pytest.raises(NotFoundError, match="document 'gone' not found in tenant 'acme'"):
        generations.remove(TENANT, "gone")
    write_new(generations, "only-new")
    assert generations.remove(TENANT, "only-new", generation="g1") == 1


def test_the_table_and_generations_outlive_a_restart(backend: Backend) -> None:
    first, stores = backend()
    generations = IndexGenerations(first, stores)
    first.claim_embedder(OLD)
    first.replace_document(*make_document("kept", 1))
    generations.create(NEW, NEW_DIM)
    write_new(generations, "kept", 3)
    generations.promote("g1")
    generations.close()

    first, stores = backend()
    reopened = IndexGenerations(first, stores)
    try:
        assert table(reopened) == {"g1": (LIVE, NEW, 1), "g0": (RETIRED, OLD, 1)}
        assert reopened.live().stats().chunk_count == 3
        assert reopened.live().dimension == NEW_DIM
    finally:
        reopened.close()


def test_dropping_deletes_a_generation_but_never_the_live_one(
    generations: IndexGenerations,
) -> None:
    generations.create(NEW, NEW_DIM)
    write_new(generations, "kept")
    with pytest.raises(FailedPreconditionError, match="generation g0 is live; promote another"):
        generations.drop("g0")
    generations.drop("g1")
    assert table(generations) == {"g0": (LIVE, OLD, 2)}
    again = generations.create(NEW, NEW_DIM)  # its data went with it; its name too
    assert again.name == "g2" and table(generations)["g2"][2] == 0

    generations.promote("g2")
    generations.drop("g0")  # the first store keeps the table: emptied, not deleted
    assert set(table(generations)) == {"g2"}
    with pytest.raises(NotFoundError, match="no index generation 'g0'; the index has g2"):
        generations.named("g0")


def test_a_generation_needs_a_model_an_index_and_a_backend_that_can_hold_it(
    backend: Backend,
) -> None:
    first, stores = backend()
    empty = IndexGenerations(first, stores)
    try:
        with pytest.raises(FailedPreconditionError, match="the index is empty"):
            empty.create(NEW, NEW_DIM)
    finally:
        empty.close()
    first, _ = backend()
    first.claim_embedder(OLD)
    fixed = IndexGenerations(first)
    try:
        with pytest.raises(UnimplementedError, match="cannot hold a second generation"):
            fixed.create(NEW, NEW_DIM)
    finally:
        fixed.close()


def test_vector_search_generations_take_the_spare_indexes_in_turn(tmp_path: Path) -> None:
    """One spare: a second re-index waits until a generation lets its index go."""
    first, stores = vertex_backend(tmp_path)()
    generations = IndexGenerations(first, stores)
    try:
        first.claim_embedder(OLD)
        first.replace_document(*make_document("kept", 1))
        generations.create(NEW, NEW_DIM)
        write_new(generations, "kept")
        generations.promote("g1")
        spare = "no spare Vector Search index \\(RAG_VECTOR_SEARCH_SPARE_INDEXES\\) is free"
        with pytest.raises(FailedPreconditionError, match=f"{spare} for generation g2"):
            generations.create("third-embedder", NEW_DIM)
        generations.promote("g0")
        generations.drop("g1")  # empties the spare and lets it go
        again = generations.create("third-embedder", NEW_DIM)
        assert again.name == "g2" and table(generations)["g2"][2] == 0  # on the same index
    finally:
        generations.close()
