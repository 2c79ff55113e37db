"""`VectorStore` on qdrant-edge: the Qdrant engine embedded in this process.

Two shards under `data_dir`: `chunks/` (a point per chunk, named dense and BM25
vectors, the chunk as payload) and `documents/` (the document registry), laid
out as `schema.py` says, so the data directory is the single source of truth.
One process owns the directory; a read-write lock keeps a document's
replacement atomic for searches. Writes are acknowledged once in the engine's
write-ahead log and flushed in the background within `flush_interval` (a
killed process loses nothing; an OS crash can lose the last interval), or
flushed before the acknowledgement with `flush_interval=0`. docs/qdrant.md
gives the engine behaviour this relies on and the measurements behind it.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self, cast

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    Fusion,
    HasIdCondition,
    HasVectorCondition,
    HnswIndexConfig,
    IsEmptyCondition,
    MatchAny,
    MatchValue,
    Modifier,
    PayloadSchemaType,
    PayloadSelector,
    Point,
    Prefetch,
    Query,
    QueryRequest,
    RangeFloat,
    ScoredPoint,
    ScrollRequest,
    SearchParams,
    UpdateOperation,
)

from services.common.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from services.retrieval import edge_migrations, filters
from services.retrieval.engine_store import EngineStore
from services.retrieval.fusion import RRF_K
from services.retrieval.ranking import Candidate, SearchPlan, best_first
from services.retrieval.schema import (
    CHUNK_INDEXES,
    DENSE,
    KEYWORD,
    PLACEHOLDER,
    REGISTRY_INDEXES,
    SCROLL_BATCH,
    IndexKind,
    chunk_from_payload,
    chunk_payload,
    chunk_vectors,
    paged,
    record_from_payload,
    record_payload,
    refuse_foreign_chunks,
    scoped_id,
)
from services.retrieval.store import (
    DocumentRecord,
    StoredChunk,
    VectorStore,
)

if TYPE_CHECKING:
    from qdrant_edge import ConditionType  # a stub-only alias

log = logging.getLogger(__name__)

BACKEND: Final = "qdrant-edge"
_RRF: Final = cast(Fusion, Fusion.Rrf(RRF_K))  # the stub does not type Rrf as a Fusion
_CHUNKS_DIR: Final = "chunks"
_DOCUMENTS_DIR: Final = "documents"
_EMBEDDER_FILE: Final = "embedding-model"
"""The embedding model of the store's vectors, recorded by its first write."""
_GENERATIONS_FILE: Final = "generations.json"
"""The index's generation table (`generations.py`), kept by the first generation."""
_INDEX_TYPES: Final = {
    IndexKind.KEYWORD: PayloadSchemaType.Keyword,
    IndexKind.INTEGER: PayloadSchemaType.Integer,
}
_RECORD_NAMESPACE: Final = uuid.UUID("a4f0c7d2-5b19-5e3a-8c6d-2e7f9b1a0c54")
"""Namespace of registry point ids (`_record_id`)."""
_FLUSH_LINGER: Final = 0.005
"""Seconds a flush waits for concurrent mutations to join it (see `_linger`)."""
DEFAULT_FLUSH_INTERVAL: Final = 1.0
"""Seconds between background flushes (see the module docstring on durability)."""


@dataclass(frozen=True)
class HnswSettings:
    """HNSW index and search parameters.

    Qdrant's index defaults (m=16, ef_construct=100) plus an explicit search
    width, so recall does not depend on an engine default that can change
    between releases; docs/retrieval.md gives the recall measured with them.
    Sizes are in KiB of vector data, as the engine counts them: 384-d float32
    vectors take 1.5 KiB each, so 10,000 KiB is about 6,700 chunks.
    """

    m: int = 16
    """Graph edges per node: more raises recall and memory."""
    ef_construct: int = 100
    """Candidate list while building: more raises recall and build time."""
    ef: int = 128
    """Candidate list while searching (never below top_k): more raises recall and latency."""
    full_scan_threshold_kb: int = 10_000
    """Below this much (filtered) vector data a segment is scanned exactly instead."""
    indexing_threshold_kb: int = 10_000
    """`optimize()` builds HNSW only for segments holding more vector data than this."""
    exact: bool = False
    """Always scan exactly (no HNSW); for evaluation or very small corpora."""

    def __post_init__(self) -> None:
        for name in ("m", "ef_construct", "ef", "full_scan_threshold_kb", "indexing_threshold_kb"):
            value = getattr(self, name)
            if value < 1:
                raise InvalidInputError(f"HNSW setting {name} must be at least 1, got {value}")


class _ReadWriteLock:
    """Any number of readers, or one writer; a waiting writer blocks new readers.

    Mutations of a document take several engine calls (upsert, delete stale,
    write record); holding the write side across them is what keeps searches from
    seeing a document half replaced. Searches only take the read side, so they
    still run in parallel (the engine releases the GIL while querying). Writers
    are preferred so a steady search load cannot starve ingestion. Not reentrant.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class EdgeVectorStore(EngineStore):
    """`VectorStore` persisted in `data_dir` by the embedded qdrant-edge engine.

    Thread-safe. One instance owns the directory; open it once per process.
    """

    backend = BACKEND

    def __init__(
        self,
        chunks: EdgeShard,
        documents: EdgeShard,
        dimension: int,
        settings: HnswSettings,
        data_dir: Path,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        """Use `EdgeVectorStore.open`; this only wires already opened shards."""
        if flush_interval < 0:
            raise InvalidInputError(f"flush_interval must be >= 0, got {flush_interval}")
        super().__init__(dimension)
        self._embedder_file = data_dir / _EMBEDDER_FILE
        self._generations_file = data_dir / _GENERATIONS_FILE
        self._chunks: EdgeShard | None = chunks
        self._documents: EdgeShard | None = documents
        self._settings = settings
        self._lock = _ReadWriteLock()
        # Mutations are numbered as they are applied; `_durable` is the highest
        # number a finished flush is known to cover.
        self._commit = threading.Condition(threading.Lock())
        self._applied = 0
        self._durable = 0
        self._flushing = False
        self._stopping = False
        self._flush_interval = flush_interval
        self._flusher: threading.Thread | None = None
        if flush_interval > 0:
            self._flusher = threading.Thread(
                target=self._flush_periodically, name="edge-store-flush", daemon=True
            )
            self._flusher.start()

    @classmethod
    def open(
        cls,
        data_dir: Path,
        dimension: int,
        hnsw: HnswSettings | None = None,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> Self:
        """Open the store in `data_dir`, creating it on first use.

        `flush_interval` is the durability setting (see the module docstring):
        > 0 acknowledges a mutation once it is in the write-ahead log and flushes
        in the background at most that many seconds later; 0 flushes every
        mutation before acknowledging it.

        `hnsw` is written to the shard's config on every open (None means the
        defaults, not whatever was persisted), so changed settings apply to
        indexes built from then on; existing indexes keep theirs until the
        optimizer rebuilds them. The search width and `exact` apply at once.

        The dimension cannot change: reopening with a different one raises
        FailedPreconditionError, because the stored vectors came from another
        embedding model and must be re-indexed.

        A directory written by an older release is migrated (`edge_migrations`).
        """
        if dimension < 1:
            raise InvalidInputError(f"dimension must be at least 1, got {dimension}")
        settings = hnsw or HnswSettings()
        data_dir.mkdir(parents=True, exist_ok=True)
        chunks = _open_shard(
            data_dir / _CHUNKS_DIR, _chunk_config(dimension, settings), DENSE, dimension
        )
        try:
            _ensure_indexes(chunks, CHUNK_INDEXES)
            documents = _open_shard(data_dir / _DOCUMENTS_DIR, _registry_config(), PLACEHOLDER, 1)
        except BaseException:
            chunks.close()
            raise
        try:
            _ensure_indexes(documents, REGISTRY_INDEXES)
            edge_migrations.migrate_to_tenancy(chunks, documents, _record_id)
        except BaseException:
            documents.close()
            chunks.close()
            raise
        return cls(chunks, documents, dimension, settings, data_dir, flush_interval)

    @property
    def settings(self) -> HnswSettings:
        """The HNSW settings this store was opened with."""
        return self._settings

    def _replace(
        self, document: DocumentRecord, chunks: Sequence[StoredChunk], vectors: list[list[float]]
    ) -> tuple[int, int]:
        """Upsert the new chunks, delete the document's chunks whose ids are not
        among them, write the record, all under the write lock so no search
        observes an intermediate state; then flush. Identical chunks are
        rewritten in place, and chunk ids of another document (of this or
        another tenant) are refused. Atomicity is towards readers, not across a
        crash: a restart can show new and stale chunks together, which re-running
        the same replacement (ingestion is idempotent) repairs."""
        points = [
            Point(chunk.chunk_id, _chunk_vectors(row, chunk), chunk_payload(chunk))
            for chunk, row in zip(chunks, vectors, strict=True)
        ]
        new_ids = {chunk.chunk_id for chunk in chunks}
        of_document = _engine_filter(filters.of_document(document.tenant, document.document_id))
        stale = Filter(
            must=of_document.must, must_not=[HasIdCondition(set(new_ids))] if new_ids else None
        )
        record = Point(
            _record_id(document.tenant, document.document_id), {}, record_payload(document)
        )
        with self._lock.write():
            chunk_shard, registry = self._require_open()
            _check_chunk_ownership(
                chunk_shard, document.tenant, document.document_id, [c.chunk_id for c in chunks]
            )
            deleted = chunk_shard.count(CountRequest(exact=True, filter=stale))
            if points:
                chunk_shard.update(UpdateOperation.upsert_points(points))
            if deleted:
                chunk_shard.update(UpdateOperation.delete_points_by_filter(stale))
            registry.update(UpdateOperation.upsert_points([record]))
            ticket = self._applied_one()
        self._flush(ticket)
        return len(points), deleted

    def _candidates(self, plan: SearchPlan, exact: bool | None) -> list[Candidate]:
        """One engine query under the read lock, so one consistent snapshot: a
        dense or a keyword leg, or both fused by RRF inside the engine, for ids
        and scores only; the best of them (`best_first`) are then read with
        payload and vector (`_read_winners`). The search width is max(ef, leg
        size): HNSW cannot return more results than candidates it keeps."""
        engine_filter = _engine_filter(plan.filter)
        legs = self._legs(plan, engine_filter, exact)
        with_vector = [DENSE] if plan.needs_vectors else False
        # Ids and scores only: payloads and vectors are read for the winners.
        if plan.fused:
            request = QueryRequest(
                limit=plan.fetch,
                prefetches=legs,
                query=_RRF,
                filter=engine_filter,
                with_payload=False,
                with_vector=False,
            )
        else:
            (leg,) = legs
            request = QueryRequest(
                limit=plan.fetch,
                query=leg.query,
                filter=engine_filter,
                params=leg.params,
                with_payload=False,
                with_vector=False,
            )
        with self._lock.read():
            chunk_shard, _ = self._require_open()
            found = chunk_shard.query(request)
            return _read_winners(chunk_shard, found, plan.limit, with_vector)

    def _legs(self, plan: SearchPlan, engine_filter: Filter, exact: bool | None) -> list[Prefetch]:
        """The engine queries of the plan: dense, keyword, or both (hybrid)."""
        legs: list[Prefetch] = []
        if plan.dense is not None:
            params = SearchParams(
                hnsw_ef=max(self._settings.ef, plan.leg_size),
                exact=self._settings.exact if exact is None else exact,
            )
            legs.append(
                Prefetch(
                    plan.leg_size,
                    query=Query.Nearest(plan.dense, using=DENSE),
                    params=params,
                    filter=engine_filter,
                )
            )
        if plan.terms is not None:
            legs.append(
                Prefetch(
                    plan.leg_size,
                    query=Query.Nearest(plan.terms, using=KEYWORD),
                    filter=engine_filter,
                )
            )
        return legs

    def _records(self, tenant: str, document_ids: Sequence[str]) -> list[DocumentRecord]:
        """One registry read by point id (ids derive from tenant and document id)."""
        with self._lock.read():
            _, registry = self._require_open()
            found = registry.retrieve(
                [_record_id(tenant, d) for d in document_ids], with_payload=True, with_vector=False
            )
        return [record_from_payload(point.payload or {}) for point in found]

    def _scan_records(self, tenant: str) -> Iterator[DocumentRecord]:
        with self._lock.read():
            _, registry = self._require_open()
            yield from _scan_registry(registry, _engine_filter(filters.of_tenant(tenant)))

    def _remove(self, tenant: str, document_id: str) -> int:
        """Chunks and record under the write lock; another tenant's document of
        the same id is never touched."""
        record_id = _record_id(tenant, document_id)
        of_document = _engine_filter(filters.of_document(tenant, document_id))
        with self._lock.write():
            chunk_shard, registry = self._require_open()
            known = bool(registry.retrieve([record_id], with_payload=False, with_vector=False))
            deleted = chunk_shard.count(CountRequest(exact=True, filter=of_document))
            if not known and not deleted:
                raise NotFoundError(f"document '{document_id}' not found in tenant '{tenant}'")
            if deleted:
                chunk_shard.update(UpdateOperation.delete_points_by_filter(of_document))
            if known:
                registry.update(UpdateOperation.delete_points([record_id]))
            ticket = self._applied_one()
        self._flush(ticket)
        return deleted

    def _counts(self) -> tuple[int, int]:
        """(documents, chunks), consistent with each other."""
        with self._lock.read():
            chunk_shard, registry = self._require_open()
            return registry.count(CountRequest(exact=True)), chunk_shard.count(
                CountRequest(exact=True)
            )

    def _read_embedder(self) -> str:
        self._require_open()
        try:
            return self._embedder_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""

    def _record_embedder(self, model: str) -> str:
        """Written once under the write lock: one process owns the directory."""
        with self._lock.write():
            self._require_open()
            recorded = self._read_embedder()
            if recorded:
                return recorded
            _write_atomically(self._embedder_file, model + "\n")
        return model

    def _document_chunks(self, tenant: str, document_id: str) -> list[StoredChunk]:
        of_document = _engine_filter(filters.of_document(tenant, document_id))
        with self._lock.read():
            chunk_shard, _ = self._require_open()
            return [
                chunk_from_payload(point.payload or {})
                for point in _scroll(chunk_shard, of_document, True)
            ]

    def _tenants(self) -> Iterator[str]:
        with self._lock.read():
            _, registry = self._require_open()
            for point in _scroll(registry, None, PayloadSelector.Include(["tenant"])):
                yield str((point.payload or {})["tenant"])

    def _read_generations(self) -> str:
        self._require_open()
        try:
            return self._generations_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def _write_generations(self, table: str) -> None:
        with self._lock.write():
            self._require_open()
            _write_atomically(self._generations_file, table)

    def optimize(self) -> bool:
        """Run the engine's optimizers (HNSW build, merging, vacuum) to completion.

        Returns True when anything changed. Blocking and expensive: building HNSW
        for 20,000 384-d chunks took 2.4 s (clustered data) to 22 s (uniformly
        random data) on 2 cores, and the engine holds the GIL throughout, so every
        other thread of the process stalls. Run it at start-up or in a maintenance
        window, not per request.
        """
        with self._lock.write():
            chunk_shard, registry = self._require_open()
            changed = chunk_shard.optimize()
            changed = registry.optimize() or changed
            ticket = self._applied_one()
        self._flush(ticket)
        return changed

    def indexed_vector_count(self) -> int:
        """Number of dense chunk vectors covered by an HNSW index (the rest are scanned).

        The engine's count includes the sparse BM25 vectors, which are always
        indexed (inverted index), so those are subtracted.
        """
        has_terms = CountRequest(exact=True, filter=Filter(must=[HasVectorCondition(KEYWORD)]))
        with self._lock.read():
            chunk_shard, _ = self._require_open()
            return chunk_shard.info().indexed_vectors_count - chunk_shard.count(has_terms)

    def close(self) -> None:
        """Flush and release both shards (and the directory lock). Idempotent."""
        with self._lock.write():
            with self._commit:  # a flush in progress finishes first
                self._stopping = True
                self._commit.notify_all()
                while self._flushing:
                    self._commit.wait()
                chunk_shard, registry = self._chunks, self._documents
                self._chunks = self._documents = None
            if self._flusher is not None:
                self._flusher.join()
            for shard in (chunk_shard, registry):
                if shard is not None:
                    shard.flush()
                    shard.close()

    def _require_open(self) -> tuple[EdgeShard, EdgeShard]:
        if self._chunks is None or self._documents is None:
            raise FailedPreconditionError("vector store is closed")
        return self._chunks, self._documents

    def _applied_one(self) -> int:
        """Number the mutation just applied (call under the write lock)."""
        with self._commit:
            self._applied += 1
            return self._applied

    def _flush_periodically(self) -> None:
        """Background flusher: every `flush_interval` s, flush if anything changed."""
        while True:
            with self._commit:
                self._commit.wait_for(lambda: self._stopping, self._flush_interval)
                if self._stopping:
                    return
                if self._flushing or self._durable >= self._applied:
                    continue
                if self._chunks is None or self._documents is None:
                    return
                self._flushing = True
                target = self._applied
                shards = (self._chunks, self._documents)
            try:
                self._flush_shards(shards, target)
            except Exception:  # keep flushing later; close() flushes again anyway
                log.exception("background flush of the vector store failed")

    def _linger(self) -> None:
        """Give mutations already on their way `_FLUSH_LINGER` to join the next flush.

        Called holding `_commit`; waiting releases it (and the GIL), so other
        threads can apply their mutations. Needed because a flush holds the GIL:
        nothing applies while it runs, so without a pause the next mutation to
        apply would start another flush alone.
        """
        deadline = time.monotonic() + _FLUSH_LINGER
        while (left := deadline - time.monotonic()) > 0:
            self._commit.wait(left)

    def _flush(self, ticket: int) -> None:
        """Called after each mutation, once the write lock is released (the change
        is visible). With a flush interval: nothing to do, the background flusher
        writes it within the interval. Without: return once mutation number
        `ticket` is on disk.

        Flushes are shared (group commit): a flush costs milliseconds of CPU
        even when little changed (docs/qdrant.md), and it holds the GIL, so no
        other mutation applies while it runs. The flushing thread therefore
        first lingers briefly for mutations already on their way; the others
        wait, and the next flush covers every mutation applied before it
        started. `close` waits for a running flush and flushes whatever came
        after.
        """
        if self._flush_interval > 0:
            return
        with self._commit:
            while self._durable < ticket:
                if self._chunks is None or self._documents is None:
                    closed = True  # close() flushes; wait below until it has
                    break
                if not self._flushing:
                    self._flushing = True
                    self._linger()
                    target = self._applied
                    shards = (self._chunks, self._documents)
                    closed = False
                    break
                self._commit.wait()
            else:
                return
        if closed:
            with self._lock.read():
                return
        self._flush_shards(shards, target)

    def _flush_shards(self, shards: tuple[EdgeShard, EdgeShard], target: int) -> None:
        """Flush, as the thread that set `_flushing`; on success mutations up to
        `target` are durable. Waiting threads are woken either way."""
        flushed = False
        try:
            for shard in shards:
                shard.flush()
            flushed = True
        finally:
            with self._commit:
                self._flushing = False
                if flushed:
                    self._durable = max(self._durable, target)
                self._commit.notify_all()


class EdgeGenerationStores:
    """Generations of the index beyond the first: directories beside its own,
    "<index>-gN" (one process owns them all, as it owns the first)."""

    def __init__(self, first: Path) -> None:
        self._first = first

    def open(self, name: str, dimension: int) -> EdgeVectorStore:
        return EdgeVectorStore.open(self._directory(name), dimension)

    def destroy(self, name: str, store: VectorStore) -> None:
        store.close()
        shutil.rmtree(self._directory(name), ignore_errors=True)

    def _directory(self, name: str) -> Path:
        return self._first.with_name(f"{self._first.name}-{name}")


def _chunk_config(dimension: int, settings: HnswSettings) -> EdgeConfig:
    return EdgeConfig(
        vectors={DENSE: EdgeVectorParams(size=dimension, distance=Distance.Cosine)},
        sparse_vectors={KEYWORD: EdgeSparseVectorParams(modifier=Modifier.Idf)},
        hnsw_config=HnswIndexConfig(
            m=settings.m,
            ef_construct=settings.ef_construct,
            full_scan_threshold=settings.full_scan_threshold_kb,
        ),
        optimizers=EdgeOptimizersConfig(indexing_threshold=settings.indexing_threshold_kb),
    )


def _registry_config() -> EdgeConfig:
    return EdgeConfig(vectors={PLACEHOLDER: EdgeVectorParams(size=1, distance=Distance.Dot)})


def _open_shard(path: Path, config: EdgeConfig, vector_name: str, dimension: int) -> EdgeShard:
    """Load the shard at `path`, or create it if the directory holds none yet.

    The persisted dimension is read from the shard's own config file first so the
    error names both dimensions; the engine's error only says "incompatible".
    """
    config_file = path / "edge_config.json"
    edge_migrations.finish_interrupted_migration(path)
    if not config_file.exists():
        try:
            return EdgeShard.create(str(path), config)
        except Exception as exc:
            raise FailedPreconditionError(f"cannot create vector shard at {path}: {exc}") from exc
    persisted = edge_migrations.persisted_dimension(config_file, vector_name)
    if persisted is not None and persisted != dimension:
        raise FailedPreconditionError(
            f"vector store at {path} holds vectors of dimension {persisted}, but dimension "
            f"{dimension} was requested; re-index with the new embedding model into a new "
            "data directory"
        )
    try:
        if vector_name == DENSE and edge_migrations.lacks_keyword_vectors(config_file):
            edge_migrations.add_keyword_vectors(path, config)
        return EdgeShard.load(str(path), config)
    except FailedPreconditionError:
        raise
    except Exception as exc:
        if "WouldBlock" in str(exc):
            raise FailedPreconditionError(
                f"vector store at {path} is already open in another store or process"
            ) from exc
        raise FailedPreconditionError(f"cannot load vector shard at {path}: {exc}") from exc


def _read_winners(
    chunk_shard: EdgeShard, fused: Sequence[ScoredPoint], limit: int, with_vector: Any
) -> list[Candidate]:
    """The `limit` best of `fused` (ids and scores), with their payloads and
    vectors read from `chunk_shard`: only the winners are read, not the legs'
    whole union. Call under the read lock that covered the query, so both see
    one snapshot."""
    best = best_first(fused, limit)
    ids = [str(point.id) for point in best]
    records = chunk_shard.retrieve(cast(list[Any], ids), with_payload=True, with_vector=with_vector)
    by_id = {str(record.id): record for record in records}
    return [_candidate(i, p.score, by_id[i]) for i, p in zip(ids, best, strict=True)]


def _candidate(chunk_id: str, score: float, record: Any) -> Candidate:
    """A winner with its record's payload and dense vector, as `ranking.hits` takes it."""
    vector = record.vector  # converted on each access: read once
    dense = vector.get(DENSE) if isinstance(vector, dict) else None
    return Candidate(chunk_id, float(score), record.payload or {}, dense)


def _chunk_vectors(dense: list[float], chunk: StoredChunk) -> dict[str, Any]:
    """A chunk's named vectors; qdrant-edge takes its own BM25 type as it is."""
    return chunk_vectors(dense, chunk.title, chunk.text, lambda terms: terms)


def _ensure_indexes(shard: EdgeShard, indexes: Mapping[str, IndexKind]) -> None:
    """Create the payload indexes the shard lacks (an older directory gains the new ones)."""
    existing = shard.info().payload_schema
    for name, kind in indexes.items():
        if name not in existing:
            shard.update(UpdateOperation.create_field_index(name, _INDEX_TYPES[kind]))
    shard.flush()


def _record_id(tenant: str, document_id: str) -> str:
    """Registry point id of the tenant's document."""
    return scoped_id(_RECORD_NAMESPACE, tenant, document_id)


def _engine_filter(spec: filters.AllOf) -> Filter:
    """The qdrant-edge filter of a neutral filter (`filters.py`)."""
    return Filter(
        must=[_condition(c) for c in spec.must],
        must_not=[_condition(c) for c in spec.must_not] or None,
    )


def _condition(condition: filters.Condition) -> ConditionType:
    match condition:
        case filters.Match(field, value):
            return FieldCondition(field, match=MatchValue(value))
        case filters.MatchAny(field, values):
            return FieldCondition(field, match=MatchAny(list(values)))
        case filters.IsEmpty(field):
            return IsEmptyCondition(field)
        case filters.Range(field, gte, lte):
            bounds = RangeFloat(
                gte=None if gte is None else float(gte), lte=None if lte is None else float(lte)
            )
            return FieldCondition(field, range=bounds)
        case filters.AnyOf(conditions):
            return Filter(should=[_condition(c) for c in conditions])
        case filters.AllOf():
            return _engine_filter(condition)


def _check_chunk_ownership(
    shard: EdgeShard, tenant: str, document_id: str, chunk_ids: Sequence[str]
) -> None:
    """`refuse_foreign_chunks`: point ids are chunk ids, so one read by id."""
    if not chunk_ids:
        return
    existing = shard.retrieve(
        list(chunk_ids),
        with_payload=PayloadSelector.Include(["tenant", "document_id"]),
        with_vector=False,
    )
    owners = {str(record.id): record.payload or {} for record in existing}
    refuse_foreign_chunks(chunk_ids, owners, tenant, document_id)


def _scan_registry(registry: EdgeShard, records_filter: Filter) -> Iterator[DocumentRecord]:
    for record in _scroll(registry, records_filter, True):
        yield record_from_payload(record.payload or {})


def _scroll(shard: EdgeShard, scroll_filter: Filter | None, payload: Any) -> Iterator[Any]:
    """Every point of `shard` matching `scroll_filter`, page by page."""

    def page(offset: Any) -> tuple[Sequence[Any], Any]:
        return shard.scroll(
            ScrollRequest(
                offset=offset,
                limit=SCROLL_BATCH,
                filter=scroll_filter,
                with_payload=payload,
                with_vector=False,
            )
        )

    yield from paged(page)


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file, sync it and rename it over `path`: a
    crash leaves the old content or the new, never a torn file."""
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
