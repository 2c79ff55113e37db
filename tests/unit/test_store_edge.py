"""EdgeVectorStore: what only the embedded engine has. Persistence across
processes and a killed process, one store per directory, HNSW settings and
recall, payload indexes, and the migrations of directories written by older
releases (before keyword search, before tenancy).

What every backend must do is the contract (tests/contract/test_vector_store.py),
and the agreement with the Qdrant server store is tests/unit/test_store_parity.py.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_edge import (
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    PayloadSchemaType,
    Point,
    Record,
    ScrollRequest,
    UpdateOperation,
)

from services.common.errors import FailedPreconditionError, InvalidInputError
from services.common.tenancy import DEFAULT_TENANT
from services.retrieval.edge import BACKEND, EdgeVectorStore, HnswSettings
from services.retrieval.store import (
    Caller,
    RetrievalMode,
    SearchFilter,
    SearchOptions,
    StoreStats,
)
from tests.contract.vector_store import (
    ALL,
    DIM,
    QUERY,
    TENANT,
    Document,
    document,
    make_document,
    search_all_modes,
    unit_vectors,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CALLER = Caller(TENANT)


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    # Each store preallocates ~130 MiB of WAL; remove it rather than leave it to
    # pytest's retention of the last three runs' tmp dirs.
    path = tmp_path / "index"
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- persistence ----------------------------------------------------------------


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


def test_a_directory_cannot_be_opened_twice(store_dir: Path) -> None:
    with EdgeVectorStore.open(store_dir, DIM) as store:
        with pytest.raises(FailedPreconditionError, match="already open"):
            EdgeVectorStore.open(store_dir, DIM)
        assert store.stats().chunk_count == 0  # the first store is unaffected


def test_invalid_settings() -> None:
    with pytest.raises(InvalidInputError, match="ef must be at least 1, got 0"):
        HnswSettings(ef=0)


# -- HNSW -----------------------------------------------------------------------


def test_exact_and_hnsw_agree_on_small_data(store_dir: Path) -> None:
    with EdgeVectorStore.open(store_dir, DIM) as store:
        for i, count in enumerate((3, 4, 2, 5)):
            store.replace_document(*make_document(f"doc-{i}", count))
        query = unit_vectors(3, 1)[0]
        approx = store.search(CALLER, query, 10, ALL)
        exact = store.search(CALLER, query, 10, ALL, exact=True)
        assert [hit.chunk.chunk_id for hit in approx] == [hit.chunk.chunk_id for hit in exact]


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


# -- payload indexes and migrations ---------------------------------------------


def _points(shard: EdgeShard) -> list[Record]:
    records, _ = shard.scroll(ScrollRequest(limit=1000, with_payload=True, with_vector=True))
    return records


def test_indexes_cover_every_filtered_field(store_dir: Path) -> None:
    EdgeVectorStore.open(store_dir, DIM).close()
    chunks, registry = (EdgeShard.load(str(store_dir / name)) for name in ("chunks", "documents"))
    try:
        schema = {name: info.data_type for name, info in chunks.info().payload_schema.items()}
        keyword = PayloadSchemaType.Keyword
        assert schema == {
            "tenant": keyword,
            "access_labels": keyword,
            "tags": keyword,
            "document_id": keyword,
            "media_type": keyword,
            "source_uri": keyword,
            "document_date_unix": PayloadSchemaType.Integer,
        }
        assert set(registry.info().payload_schema) == {"tenant", "document_id"}
    finally:
        chunks.close()
        registry.close()


LEGACY_RECORD_NAMESPACE = uuid.UUID("3f6c2a52-7e0b-5d8e-9a41-6c0b7f1d2e90")
"""Before tenancy a record's id was uuid5(this, document_id): a fact of the
directories older releases wrote, which the migration must keep reading."""
LEGACY_FIELDS = ("tenant", "access_labels", "tags", "document_date_unix")


def _before_tenancy(payload: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (payload or {}).items() if k not in LEGACY_FIELDS}


def write_pre_tenancy_directory(
    data_dir: Path, *, keyword_vectors: bool = True, interrupted: bool = False
) -> Document:
    """A data directory as the store wrote it before tenancy: payloads without the
    tenancy fields, registry ids uuid5(document_id). Without `keyword_vectors`,
    the layout before keyword search too (dense vector only). `interrupted`: as
    a migration left it that stopped after writing the record under its new id,
    before deleting the old one.

    Today's store writes the document; the engine's own API then takes the
    directory back to the old layout."""
    written = document(DEFAULT_TENANT, "handbook", 3)
    with EdgeVectorStore.open(data_dir, DIM) as store:
        store.replace_document(*written)
    chunks = EdgeShard.load(str(data_dir / "chunks"))
    old_chunks = [
        Point(
            p.id,
            p.vector if keyword_vectors else {"dense": p.vector["dense"]},  # type: ignore[index]
            _before_tenancy(p.payload),
        )
        for p in _points(chunks)
    ]
    if not keyword_vectors:  # a shard of that layout: "dense" is its only vector
        chunks.close()
        shutil.rmtree(data_dir / "chunks")
        dense_only = EdgeConfig(
            vectors={"dense": EdgeVectorParams(size=DIM, distance=Distance.Cosine)}
        )
        chunks = EdgeShard.create(str(data_dir / "chunks"), dense_only)
    chunks.update(UpdateOperation.upsert_points(old_chunks))
    assert not any(set(LEGACY_FIELDS) & set(p.payload or {}) for p in _points(chunks))
    chunks.flush()
    chunks.close()
    registry = EdgeShard.load(str(data_dir / "documents"))
    (record,) = _points(registry)
    legacy_id = str(uuid.uuid5(LEGACY_RECORD_NAMESPACE, "handbook"))
    old_record = Point(legacy_id, {}, _before_tenancy(record.payload))
    registry.update(UpdateOperation.upsert_points([old_record]))
    if not interrupted:
        registry.update(UpdateOperation.delete_points([record.id]))
    left = {legacy_id, str(record.id)} if interrupted else {legacy_id}
    assert {str(p.id) for p in _points(registry)} == left
    registry.flush()
    registry.close()
    return written


@pytest.mark.parametrize("keyword_vectors", [True, False], ids=["tenancy-only", "with-bm25"])
def test_a_pre_tenancy_directory_becomes_tenant_default(
    store_dir: Path, keyword_vectors: bool
) -> None:
    record, chunks, vectors = write_pre_tenancy_directory(
        store_dir, keyword_vectors=keyword_vectors
    )
    default = Caller(DEFAULT_TENANT)
    for _ in range(2):  # the second open finds nothing to migrate and changes nothing
        with EdgeVectorStore.open(store_dir, DIM) as store:
            assert store.stats() == StoreStats(1, 3, DIM, BACKEND)
            assert store.get_document(DEFAULT_TENANT, "handbook") == record
            assert store.list_documents(DEFAULT_TENANT, 10) == [record]
            for mode, hits in search_all_modes(store, default).items():
                assert {h.chunk for h in hits} == set(chunks), mode
            assert store.search(default, vectors[2], 1, ALL)[0].chunk == chunks[2]
            assert search_all_modes(store, Caller(TENANT))["hybrid"] == []
            assert store.get_document(TENANT, "handbook") is None
            dated = SearchFilter(date_to_unix=2_000_000_000)
            assert store.search(default, QUERY, 5, dated) == []  # migrated chunks are undated
    with EdgeVectorStore.open(store_dir, DIM) as store:
        # Migrated documents are ordinary ones: replaced and removed per tenant.
        newer = document(DEFAULT_TENANT, "handbook", 1, tags=("policy",))
        assert store.replace_document(*newer) == (1, 2)  # chunk 0 kept its id
        assert store.get_document(DEFAULT_TENANT, "handbook") == newer[0]
        assert store.stats() == StoreStats(1, 1, DIM, BACKEND)
        assert store.remove_document(DEFAULT_TENANT, "handbook") == 1
        assert store.stats() == StoreStats(0, 0, DIM, BACKEND)


def test_an_interrupted_registry_migration_completes(store_dir: Path) -> None:
    record, _, _ = write_pre_tenancy_directory(store_dir, interrupted=True)
    with EdgeVectorStore.open(store_dir, DIM) as store:
        assert store.stats().document_count == 1
        assert store.list_documents(DEFAULT_TENANT, 10) == [record]


def test_a_bm25_migration_stopped_between_its_renames_is_rolled_back(store_dir: Path) -> None:
    """The state after renaming the old chunk shard away and before renaming the
    migrated one in: the next open restores the old shard and carries on."""
    written = document(TENANT, "code", 1, text="Error code QX-7741 means the fuser overheated.")
    with EdgeVectorStore.open(store_dir, DIM) as store:
        store.replace_document(*written)
    (store_dir / "chunks").rename(store_dir / "chunks.pre-bm25")
    with EdgeVectorStore.open(store_dir, DIM) as store:
        options = SearchOptions(mode=RetrievalMode.KEYWORD, text="QX-7741")
        assert [hit.chunk for hit in store.search(CALLER, [], 1, ALL, options)] == written[1]
    assert not (store_dir / "chunks.pre-bm25").exists()
