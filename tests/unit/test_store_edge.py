"""EdgeVectorStore: search, filters, replacement, registry, persistence, recall, atomicity."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from services.retrieval.edge import BACKEND, EdgeVectorStore, HnswSettings
from services.retrieval.store import (
    MAX_TOP_K,
    Caller,
    DocumentRecord,
    SearchFilter,
    SearchHit,
    StoredChunk,
    StoreStats,
    VectorStore,
)

DIM = 8
REPO_ROOT = Path(__file__).resolve().parents[2]
ALL = SearchFilter()
TENANT = "acme"
CALLER = Caller(TENANT)

Document = tuple[DocumentRecord, list[StoredChunk], list[list[float]]]


def unit_vectors(seed: int, count: int, dim: int = DIM) -> list[list[float]]:
    rows = np.random.default_rng(seed).normal(size=(count, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return [[float(x) for x in row] for row in rows]


def make_document(
    document_id: str,
    count: int,
    *,
    media_type: str = "text/plain",
    source_uri: str = "",
    version: str = "",
    seed: int | None = None,
    tenant: str = TENANT,
    access_labels: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    document_date_unix: int = 0,
    text: str = "",
    vectors: list[list[float]] | None = None,
) -> Document:
    """A document of `count` chunks; `version` changes chunk ids and text. `text`
    (with the document id and part added) replaces the default chunk texts, and
    `vectors` the seeded random ones."""
    uri = source_uri or f"file:///corpus/{document_id}.txt"
    chunks = [
        StoredChunk(
            chunk_id=str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{document_id}/{version}/{ordinal}")
            ),
            document_id=document_id,
            ordinal=ordinal,
            text=f"{text} ({document_id} part {ordinal})"
            if text
            else f"{document_id} chunk {ordinal} version {version}".strip(),
            title=f"Title of {document_id}",
            section="Intro",
            page=ordinal + 1,
            char_start=ordinal * 100,
            char_end=ordinal * 100 + 99,
            source_uri=uri,
            media_type=media_type,
            token_count=20 + ordinal,
            tenant=tenant,
            access_labels=access_labels,
            tags=tags,
            document_date_unix=document_date_unix,
        )
        for ordinal in range(count)
    ]
    record = DocumentRecord(
        document_id=document_id,
        title=f"Title of {document_id}",
        source_uri=uri,
        media_type=media_type,
        content_sha256=hashlib.sha256(f"{document_id}/{version}".encode()).hexdigest(),
        chunk_count=count,
        size_bytes=1000 * count,
        indexed_at_unix=1_700_000_000,
        tenant=tenant,
        access_labels=access_labels,
        tags=tags,
        document_date_unix=document_date_unix,
    )
    if vectors is None:
        vectors = unit_vectors(
            seed if seed is not None else sum(map(ord, document_id + version)), count
        )
    return record, chunks, vectors


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    # Each store preallocates ~130 MiB of WAL; remove it rather than leave it to
    # pytest's retention of the last three runs' tmp dirs.
    path = tmp_path / "index"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(store_dir: Path) -> Iterator[EdgeVectorStore]:
    opened = EdgeVectorStore.open(store_dir, DIM)
    yield opened
    opened.close()


def doc_ids_of(hits: list[SearchHit]) -> set[str]:
    return {hit.chunk.document_id for hit in hits}


def test_store_satisfies_the_protocol(store: EdgeVectorStore) -> None:
    as_protocol: VectorStore = store
    assert as_protocol.dimension == DIM


def test_search_returns_the_matching_chunk_first(store: EdgeVectorStore) -> None:
    documents = [make_document(f"doc-{i}", 5) for i in range(3)]
    for record, chunks, vectors in documents:
        assert store.replace_document(record, chunks, vectors) == (5, 0)

    for _, chunks, vectors in documents:
        for chunk, vector in zip(chunks, vectors, strict=True):
            hits = store.search(CALLER, vector, 5, ALL)
            assert hits[0].chunk == chunk  # every payload field round-trips
            assert hits[0].score == pytest.approx(1.0, abs=1e-5)
            scores = [hit.score for hit in hits]
            assert scores == sorted(scores, reverse=True)
            assert len(hits) == 5


@pytest.fixture
def filter_corpus(store: EdgeVectorStore) -> EdgeVectorStore:
    corpus = [
        make_document("a", 3, media_type="text/plain", source_uri="s3://bucket/a"),
        make_document("b", 4, media_type="application/pdf", source_uri="s3://bucket/b"),
        make_document("c", 2, media_type="text/html", source_uri="https://example.com/c"),
        make_document("d", 5, media_type="application/pdf", source_uri="https://example.com/d"),
    ]
    for record, chunks, vectors in corpus:
        store.replace_document(record, chunks, vectors)
    return store


CHUNKS_PER_DOC = {"a": 3, "b": 4, "c": 2, "d": 5}


@pytest.mark.parametrize(
    ("search_filter", "expected"),
    [
        (SearchFilter(), {"a", "b", "c", "d"}),
        (SearchFilter(document_ids=("a",)), {"a"}),
        (SearchFilter(document_ids=("a", "c")), {"a", "c"}),
        (SearchFilter(document_ids=("nope",)), set()),
        (SearchFilter(media_types=("application/pdf",)), {"b", "d"}),
        (SearchFilter(media_types=("text/plain", "text/html")), {"a", "c"}),
        (SearchFilter(source_uris=("s3://bucket/a", "https://example.com/d")), {"a", "d"}),
        (SearchFilter(document_ids=("a", "b"), media_types=("application/pdf",)), {"b"}),
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
        (SearchFilter(document_ids=("a",), media_types=("application/pdf",)), set()),
    ],
)
def test_filters_and_across_fields_or_within(
    filter_corpus: EdgeVectorStore, search_filter: SearchFilter, expected: set[str]
) -> None:
    hits = filter_corpus.search(CALLER, unit_vectors(99, 1)[0], MAX_TOP_K, search_filter)
    assert doc_ids_of(hits) == expected
    assert len(hits) == sum(CHUNKS_PER_DOC[d] for d in expected)


def test_replace_with_fewer_chunks_removes_stale_ones(store: EdgeVectorStore) -> None:
    record, chunks, vectors = make_document("doc", 5)
    store.replace_document(record, chunks, vectors)
    other = make_document("other", 2)
    store.replace_document(*other)

    new_record, new_chunks, new_vectors = make_document("doc", 2, version="v2")
    assert store.replace_document(new_record, new_chunks, new_vectors) == (2, 5)

    hits = store.search(CALLER, vectors[0], MAX_TOP_K, SearchFilter(document_ids=("doc",)))
    assert {hit.chunk.chunk_id for hit in hits} == {chunk.chunk_id for chunk in new_chunks}
    assert store.get_document(TENANT, "doc") == new_record
    assert store.stats().chunk_count == 4  # 2 new + the other document's 2


def test_replace_keeping_some_chunk_ids_deletes_only_the_rest(store: EdgeVectorStore) -> None:
    record, chunks, vectors = make_document("doc", 4)
    store.replace_document(record, chunks, vectors)
    kept = chunks[:2]
    shorter = replace(record, chunk_count=2)
    assert store.replace_document(shorter, kept, vectors[:2]) == (2, 2)
    hits = store.search(CALLER, vectors[0], MAX_TOP_K, ALL)
    assert [hit.chunk for hit in hits][:1] == [chunks[0]]
    assert {hit.chunk.chunk_id for hit in hits} == {chunk.chunk_id for chunk in kept}


def test_replace_with_the_same_chunks_is_idempotent(store: EdgeVectorStore) -> None:
    document = make_document("doc", 6)
    assert store.replace_document(*document) == (6, 0)
    before = store.stats()
    hits_before = store.search(CALLER, document[2][3], 6, ALL)
    assert store.replace_document(*document) == (6, 0)
    assert store.stats() == before == StoreStats(1, 6, DIM, BACKEND)
    assert store.search(CALLER, document[2][3], 6, ALL) == hits_before


def test_replace_with_no_chunks_keeps_an_empty_record(store: EdgeVectorStore) -> None:
    store.replace_document(*make_document("doc", 3))
    empty_record, _, _ = make_document("doc", 0)
    assert store.replace_document(empty_record, [], []) == (0, 3)
    assert store.get_document(TENANT, "doc") == empty_record
    assert store.stats() == StoreStats(1, 0, DIM, BACKEND)


def _with_chunk(
    chunks: list[StoredChunk], index: int, *, chunk_id: str = "", document_id: str = ""
) -> list[StoredChunk]:
    old = chunks[index]
    changed = list(chunks)
    changed[index] = replace(
        old, chunk_id=chunk_id or old.chunk_id, document_id=document_id or old.document_id
    )
    return changed


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r, c, v: (r, c[:-1], v), "chunk_count is 3 but 2 chunks and 3 vectors"),
        (lambda r, c, v: (r, c, v[:-1]), "chunk_count is 3 but 3 chunks and 2 vectors"),
        (
            lambda r, c, v: (replace(r, chunk_count=4), c, v),
            "chunk_count is 4",
        ),
        (lambda r, c, v: (r, c, [v[0], v[1][:-1], v[2]]), "has dimension 7, expected 8"),
        (lambda r, c, v: (r, c, [v[0], [*v[1], 0.0], v[2]]), "has dimension 9, expected 8"),
        (lambda r, c, v: (r, c, [v[0], v[1], [float("nan")] * DIM]), "NaN or infinite"),
        (lambda r, c, v: (r, c, [v[0], v[1], [0.0] * DIM]), "zero vector"),
        (
            lambda r, c, v: (r, _with_chunk(c, 1, document_id="elsewhere"), v),
            "belongs to document 'elsewhere', not 'doc'",
        ),
        (lambda r, c, v: (r, _with_chunk(c, 0, chunk_id="chunk-1"), v), "is not a UUID"),
        (
            lambda r, c, v: (r, _with_chunk(c, 0, chunk_id=c[0].chunk_id.upper()), v),
            "not in canonical form",
        ),
        (
            lambda r, c, v: (r, _with_chunk(c, 2, chunk_id=c[0].chunk_id), v),
            "appears twice",
        ),
        (lambda r, c, v: (replace(r, document_id=""), c, v), "document_id must not be empty"),
    ],
)
def test_replace_rejects_bad_input_without_writing(
    store: EdgeVectorStore, mutate: Callable[..., Document], message: str
) -> None:
    record, chunks, vectors = mutate(*make_document("doc", 3))
    with pytest.raises(InvalidInputError, match=message):
        store.replace_document(record, chunks, vectors)
    assert store.stats() == StoreStats(0, 0, DIM, BACKEND)


def test_replace_refuses_chunk_ids_of_another_document(store: EdgeVectorStore) -> None:
    record, chunks, vectors = make_document("first", 2)
    store.replace_document(record, chunks, vectors)
    thief_record, thief_chunks, thief_vectors = make_document("second", 2)
    stolen = _with_chunk(thief_chunks, 1, chunk_id=chunks[0].chunk_id)
    with pytest.raises(InvalidInputError, match="already belongs to document 'first'"):
        store.replace_document(thief_record, stolen, thief_vectors)
    assert store.search(CALLER, vectors[0], 1, ALL)[0].chunk == chunks[0]
    assert store.get_document(TENANT, "second") is None


def test_remove_document_removes_chunks_and_record(filter_corpus: EdgeVectorStore) -> None:
    store = filter_corpus
    assert store.remove_document(TENANT, "b") == 4
    assert store.get_document(TENANT, "b") is None
    hits = store.search(CALLER, unit_vectors(5, 1)[0], MAX_TOP_K, ALL)
    assert doc_ids_of(hits) == {"a", "c", "d"}
    assert store.search(CALLER, unit_vectors(5, 1)[0], 10, SearchFilter(document_ids=("b",))) == []
    assert [r.document_id for r in store.list_documents(TENANT, 10)] == ["a", "c", "d"]
    assert store.stats() == StoreStats(3, 10, DIM, BACKEND)
    with pytest.raises(NotFoundError, match="document 'b' not found"):
        store.remove_document(TENANT, "b")


def test_remove_unknown_document_is_not_found(store: EdgeVectorStore) -> None:
    with pytest.raises(NotFoundError, match="document 'missing' not found"):
        store.remove_document(TENANT, "missing")


def test_get_document(store: EdgeVectorStore) -> None:
    record, chunks, vectors = make_document("doc", 2)
    store.replace_document(record, chunks, vectors)
    assert store.get_document(TENANT, "doc") == record
    assert store.get_document(TENANT, "other") is None
    with pytest.raises(InvalidInputError, match="document_id must not be empty"):
        store.get_document(TENANT, "")


def test_list_documents_pages_in_document_id_order(store: EdgeVectorStore) -> None:
    ids = ["m", "b", "z", "a", "doc-10", "doc-2", "Q", "é"]
    for document_id in ids:
        store.replace_document(*make_document(document_id, 1))
    expected = sorted(ids)

    pages: list[list[str]] = []
    after = ""
    while page := store.list_documents(TENANT, 3, after):
        pages.append([record.document_id for record in page])
        after = page[-1].document_id
    assert pages == [expected[0:3], expected[3:6], expected[6:8]]
    assert store.list_documents(TENANT, 100, after="doc-10") == [
        store.get_document(TENANT, d) for d in expected if d > "doc-10"
    ]
    assert store.list_documents(TENANT, 5, after=expected[-1]) == []
    for bad in (0, -1, 10_001):
        with pytest.raises(InvalidInputError, match="limit must be between"):
            store.list_documents(TENANT, bad)


def test_stats(filter_corpus: EdgeVectorStore) -> None:
    assert filter_corpus.stats() == StoreStats(
        document_count=4, chunk_count=14, dimension=DIM, backend="qdrant-edge"
    )


def test_search_validates_top_k_and_vector(filter_corpus: EdgeVectorStore) -> None:
    query = unit_vectors(1, 1)[0]
    for bad in (0, -3, MAX_TOP_K + 1):
        with pytest.raises(InvalidInputError, match=f"top_k must be between 1 and 100, got {bad}"):
            filter_corpus.search(CALLER, query, bad, ALL)
    assert len(filter_corpus.search(CALLER, query, 1, ALL)) == 1
    assert len(filter_corpus.search(CALLER, query, MAX_TOP_K, ALL)) == 14
    with pytest.raises(InvalidInputError, match="query vector has dimension 3, expected 8"):
        filter_corpus.search(CALLER, [1.0, 0.0, 0.0], 5, ALL)
    with pytest.raises(InvalidInputError, match="zero vector"):
        filter_corpus.search(CALLER, [0.0] * DIM, 5, ALL)


def test_search_on_empty_store_returns_nothing(store: EdgeVectorStore) -> None:
    assert store.search(CALLER, unit_vectors(1, 1)[0], 10, ALL) == []


def test_exact_and_hnsw_agree_on_small_data(filter_corpus: EdgeVectorStore) -> None:
    query = unit_vectors(3, 1)[0]
    approx = filter_corpus.search(CALLER, query, 10, ALL)
    exact = filter_corpus.search(CALLER, query, 10, ALL, exact=True)
    assert [hit.chunk.chunk_id for hit in approx] == [hit.chunk.chunk_id for hit in exact]


def test_data_survives_close_and_reopen(store_dir: Path) -> None:
    corpus = [make_document(f"doc-{i}", 3 + i) for i in range(3)]
    with EdgeVectorStore.open(store_dir, DIM) as first:
        for document in corpus:
            first.replace_document(*document)
        first.replace_document(*make_document("doc-1", 1, version="v2"))
        first.remove_document(TENANT, "doc-2")
        stats = first.stats()
        listing = first.list_documents(TENANT, 10)
        hits = first.search(CALLER, corpus[0][2][1], 5, ALL)

    with EdgeVectorStore.open(store_dir, DIM) as second:
        assert second.stats() == stats == StoreStats(2, 4, DIM, BACKEND)
        assert second.list_documents(TENANT, 10) == listing
        assert second.search(CALLER, corpus[0][2][1], 5, ALL) == hits
        assert second.get_document(TENANT, "doc-2") is None
        # Payload indexes are created once and still work after a reload.
        filtered = second.search(CALLER, corpus[0][2][1], 5, SearchFilter(document_ids=("doc-1",)))
        assert [hit.chunk.text for hit in filtered] == ["doc-1 chunk 0 version v2"]


def _run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_fresh_process_reads_what_another_wrote(store_dir: Path) -> None:
    record, chunks, vectors = make_document("doc", 3)
    with EdgeVectorStore.open(store_dir, DIM) as writer:
        writer.replace_document(record, chunks, vectors)

    out = _run_python(
        f"""
        import json
        from pathlib import Path
        from services.retrieval.edge import EdgeVectorStore
        from services.retrieval.store import Caller, SearchFilter
        with EdgeVectorStore.open(Path({str(store_dir)!r}), {DIM}) as store:
            hits = store.search(Caller({TENANT!r}), {vectors[1]!r}, 1, SearchFilter())
            print(json.dumps([hits[0].chunk.chunk_id, store.stats().chunk_count]))
        """
    )
    assert json.loads(out) == [chunks[1].chunk_id, 3]


def test_acknowledged_writes_survive_a_killed_process(store_dir: Path) -> None:
    record, chunks, vectors = make_document("doc", 3)
    code = f"""
        import os
        from pathlib import Path
        from services.retrieval.edge import EdgeVectorStore
        from services.retrieval.store import DocumentRecord, StoredChunk
        store = EdgeVectorStore.open(Path({str(store_dir)!r}), {DIM})
        record = DocumentRecord(**{asdict(record)!r})
        chunks = [StoredChunk(**c) for c in {[asdict(c) for c in chunks]!r}]
        store.replace_document(record, chunks, {vectors!r})
        os._exit(0)  # no close(): as if the process were killed
        """
    _run_python(code)
    with EdgeVectorStore.open(store_dir, DIM) as store:
        assert store.get_document(TENANT, "doc") == record
        assert store.search(CALLER, vectors[2], 1, ALL)[0].chunk == chunks[2]


def test_reopening_with_another_dimension_fails(store_dir: Path) -> None:
    EdgeVectorStore.open(store_dir, DIM).close()
    with pytest.raises(FailedPreconditionError, match="dimension 8, but dimension 16"):
        EdgeVectorStore.open(store_dir, 16)
    EdgeVectorStore.open(store_dir, DIM).close()  # the failed open left it usable


def test_a_directory_cannot_be_opened_twice(store: EdgeVectorStore, store_dir: Path) -> None:
    with pytest.raises(FailedPreconditionError, match="already open"):
        EdgeVectorStore.open(store_dir, DIM)
    assert store.stats().chunk_count == 0  # the first store is unaffected


def test_invalid_dimension_and_settings() -> None:
    with pytest.raises(InvalidInputError, match="dimension must be at least 1, got 0"):
        EdgeVectorStore.open(Path("/nonexistent/never-created"), 0)
    with pytest.raises(InvalidInputError, match="ef must be at least 1, got 0"):
        HnswSettings(ef=0)


def test_closed_store_refuses_calls(store_dir: Path) -> None:
    store = EdgeVectorStore.open(store_dir, DIM)
    store.close()
    store.close()  # idempotent
    with pytest.raises(FailedPreconditionError, match="closed"):
        store.search(CALLER, unit_vectors(1, 1)[0], 1, ALL)
    with pytest.raises(FailedPreconditionError, match="closed"):
        store.replace_document(*make_document("doc", 1))


def clustered_unit_vectors(
    rng: np.random.Generator, centers: np.ndarray, count: int, spread: float
) -> np.ndarray:
    """Points around random cluster centres: shaped like text embeddings, unlike
    uniform noise (on which every ANN index has poor recall)."""
    picked = centers[rng.integers(0, len(centers), count)]
    rows = picked + spread * rng.normal(size=(count, centers.shape[1]))
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def test_hnsw_recall_at_10_with_default_search_settings(store_dir: Path) -> None:
    dim, documents, per_document = 384, 30, 100
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(40, dim))
    data = clustered_unit_vectors(rng, centers, documents * per_document, spread=0.35)
    queries = clustered_unit_vectors(rng, centers, 100, spread=0.35)

    defaults = HnswSettings()
    assert (defaults.m, defaults.ef_construct, defaults.ef) == (16, 100, 128)
    # Only the size thresholds are lowered, so that 3,000 vectors (4.5 MB) get an
    # index and searches use it instead of an exact scan of a "small" segment.
    settings = HnswSettings(full_scan_threshold_kb=1, indexing_threshold_kb=1)
    with EdgeVectorStore.open(store_dir, dim, settings) as store:
        for d in range(documents):
            record, chunks, _ = make_document(f"doc-{d:02d}", per_document)
            rows = data[d * per_document : (d + 1) * per_document].tolist()
            store.replace_document(record, chunks, rows)
        assert store.indexed_vector_count() == 0  # the engine never indexes on its own
        assert store.optimize()
        assert store.indexed_vector_count() == documents * per_document

        recalls = []
        for query in queries.tolist():
            approx = {hit.chunk.chunk_id for hit in store.search(CALLER, query, 10, ALL)}
            exact = {hit.chunk.chunk_id for hit in store.search(CALLER, query, 10, ALL, exact=True)}
            assert len(exact) == 10
            recalls.append(len(approx & exact) / 10)
    assert float(np.mean(recalls)) >= 0.95


def test_readers_never_see_a_half_replaced_document(store: EdgeVectorStore) -> None:
    """Version A has 3 chunks, version B 5 with other ids: any mix is detectable."""
    version_a = make_document("doc", 3, version="A", seed=1)
    version_b = make_document("doc", 5, version="B", seed=2)
    store.replace_document(*make_document("bystander", 4))
    store.replace_document(*version_a)
    query = unit_vectors(3, 1)[0]
    only_doc = SearchFilter(document_ids=("doc",))
    errors: list[BaseException] = []
    writer_done = threading.Event()
    observed: dict[str, int] = {"A": 0, "B": 0}

    def writer() -> None:
        try:
            for i in range(60):
                store.replace_document(*(version_b if i % 2 == 0 else version_a))
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer_done.set()

    def reader(search_filter: SearchFilter) -> None:
        try:
            while not writer_done.is_set():
                hits = store.search(CALLER, query, 20, search_filter)
                texts = [h.chunk.text for h in hits if h.chunk.document_id == "doc"]
                versions = {text.rsplit(" ", 1)[-1] for text in texts}
                assert len(versions) == 1, f"mixed versions in one result: {texts}"
                (version,) = versions
                assert len(texts) == {"A": 3, "B": 5}[version], texts
                observed[version] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=writer),
        threading.Thread(target=reader, args=(only_doc,)),
        threading.Thread(target=reader, args=(ALL,)),
    ]
    # Switch threads as often as possible so readers do run between the writer's
    # engine calls: with the default 5 ms interval a store without locking
    # still passed this test; with this one it fails every run.
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
    assert observed["A"] + observed["B"] > 0
    assert store.stats() == StoreStats(2, 4 + 3, DIM, BACKEND)  # 60 replaces end on A
