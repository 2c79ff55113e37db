"""`VectorStore` on qdrant-edge: the Qdrant engine embedded in this process.

Layout under `data_dir`:

* `chunks/`: one EdgeShard holding a point per chunk. Point id = chunk_id, a
  named dense vector "dense" (cosine), a named sparse vector "bm25" (BM25 term
  weights of title and text, computed here at upsert; the engine applies IDF at
  query time), payload = every `StoredChunk` field (tuples stored as lists),
  keyword payload indexes on tenant, access_labels, tags, document_id,
  media_type and source_uri and an integer index on document_date_unix, so
  filtered searches and delete-by-document do not scan every payload.
* `documents/`: a second EdgeShard, the document registry. Point id =
  uuid5(tenant + "/" + document_id) (see `_record_id`; a tenant id cannot
  contain "/", so the pair is unambiguous and two tenants can hold the same
  document id), payload = every `DocumentRecord` field, keyword indexes on
  tenant and document_id, no vector (an EdgeConfig must declare at least one
  vector, so it declares a 1-dimensional placeholder that no point uses).
  Keeping the registry in the engine makes the data directory the single
  source of truth: there is no side database that can disagree with the
  chunks after a crash or a restore.

Tenancy. Every read is confined to one tenant by the engine's own filter, never
by filtering results afterwards (see `_engine_filter`): a search's filter is
`tenant == caller.tenant AND (access_labels is empty OR access_labels has one
of the caller's labels) AND <the request's metadata filter>`, and it is given
to every prefetch leg and to the fused query, so RRF fusion and MMR only ever
rank chunks the caller may see. Writes and deletes match the tenant too.
A data directory written before tenancy is migrated on open: its chunks and
records get tenant `LEGACY_TENANT` and its records the new ids (see
`_migrate_to_tenancy`).

Engine behaviour this module relies on (measured with qdrant-edge-py 0.9.0):

* Every update is appended to a write-ahead log whose pages are only written
  back by `flush()`; a killed process loses nothing (the WAL is replayed on
  load, also without any flush), but an OS crash or power loss can lose updates
  not yet flushed. A flush of both shards takes 13-23 ms (~200 ms under
  concurrent disk load) and ~7 ms of CPU however little changed.
* The WAL holds an exclusive lock, so a second store (in this or another
  process) cannot open the same directory; it fails instead of corrupting it.
  Each shard preallocates 2 x 32 MiB of WAL, so a store takes ~130 MiB of disk
  even when empty.
* The engine never builds an HNSW index on its own: `optimize()` must be called,
  and even then only segments larger than the indexing threshold get one.
  Until then search is an exact scan (correct, and fast enough for tens of
  thousands of chunks). `optimize()` holds the GIL for the whole build, so it
  stalls every thread of the process; call it at start-up or in a maintenance
  window, not per request.
* `query` releases the GIL, so searches run in parallel with each other.
  `flush` holds it (measured: a Python thread gets no time during a 15-80 ms
  flush), although the engine itself allows updates and searches during a
  flush.
* A shard cannot be loaded with a config declaring a vector its segments lack.
  Chunk shards written before keyword search (no "bm25" vector) are therefore
  migrated on open: rebuilt beside the old one from its stored vectors and
  payload text, then swapped in by renames (see `_add_keyword_vectors`).

Durability (`flush_interval`). By default a mutation is acknowledged once it is
in the write-ahead log, and a background thread flushes at most
`DEFAULT_FLUSH_INTERVAL` (1 s) later; `close()` (a clean shutdown) flushes
everything, so acknowledged writes survive a clean shutdown and a killed
process, and only an OS crash or power loss can lose the last second of them.
Re-running the ingestion restores them (the index is derived data, and the
content hashes that make re-ingestion skip unchanged documents live in the same
store, so they are lost together). This is what Qdrant's own server does (WAL
without fsync per update, flush every 5 s). The cost it avoids: flushing per
ReplaceDocument took ~7 ms of CPU per document and, because a flush holds the
GIL, serialised writers; on a 2-core machine that CPU is taken from the
embedding model during bulk ingestion. `flush_interval=0` flushes every
mutation before acknowledging it instead (sharing flushes between concurrent
mutations: group commit).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, cast

import numpy as np
from qdrant_edge import (
    Bm25,
    Bm25Config,
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
from services.common.tenancy import DEFAULT_TENANT, validate_tenant
from services.retrieval.fusion import RRF_K
from services.retrieval.mmr import mmr_order
from services.retrieval.store import (
    DENSE_SEARCH,
    Caller,
    DocumentRecord,
    RetrievalMode,
    SearchFilter,
    SearchHit,
    SearchOptions,
    StoredChunk,
    StoreStats,
    best_first,
    candidate_count,
    chunk_from_payload,
    chunk_payload,
    keyword_text,
    listing_page,
    record_from_payload,
    record_payload,
    validate_caller,
    validate_filter,
    validate_list_limit,
    validate_lookup,
    validate_replacement,
    validate_search_options,
    validate_top_k,
    validate_vector,
    visible_records,
)

if TYPE_CHECKING:
    from qdrant_edge import ConditionType  # a stub-only alias

log = logging.getLogger(__name__)

BACKEND: Final = "qdrant-edge"
DENSE: Final = "dense"
"""Name of the chunk's dense (embedding) vector."""
KEYWORD: Final = "bm25"
"""Name of the chunk's sparse BM25 vector."""
_RRF: Final = cast(Fusion, Fusion.Rrf(RRF_K))  # the stub does not type Rrf as a Fusion
_BM25: Final = Bm25(Bm25Config())
"""English tokenizer, stemmer and stopwords; k=1.2, b=0.75. Changing the config
changes document weights, so already indexed chunks would need re-indexing."""

_PLACEHOLDER: Final = "placeholder"
"""The registry's declared-but-unused vector (an EdgeConfig needs at least one)."""

_CHUNKS_DIR: Final = "chunks"
_DOCUMENTS_DIR: Final = "documents"
_CHUNK_INDEXES: Final = {
    "tenant": PayloadSchemaType.Keyword,
    "access_labels": PayloadSchemaType.Keyword,
    "tags": PayloadSchemaType.Keyword,
    "document_id": PayloadSchemaType.Keyword,
    "media_type": PayloadSchemaType.Keyword,
    "source_uri": PayloadSchemaType.Keyword,
    "document_date_unix": PayloadSchemaType.Integer,
}
"""Payload indexes of the chunk shard: every field a search or delete filters on."""
_REGISTRY_INDEXES: Final = {
    "tenant": PayloadSchemaType.Keyword,
    "document_id": PayloadSchemaType.Keyword,
}
_RECORD_NAMESPACE: Final = uuid.UUID("a4f0c7d2-5b19-5e3a-8c6d-2e7f9b1a0c54")
"""Fixed namespace for registry point ids (`_record_id`): changing it orphans every record."""
_LEGACY_RECORD_NAMESPACE: Final = uuid.UUID("3f6c2a52-7e0b-5d8e-9a41-6c0b7f1d2e90")
"""Namespace of the registry ids written before tenancy: uuid5(it, document_id)."""
LEGACY_TENANT: Final = DEFAULT_TENANT
"""Tenant given on open to chunks and records written before tenancy: the one
ragctl and a gateway without API keys act for, so an existing deployment keeps
answering from its documents."""

_SCROLL_BATCH: Final = 1024
_FLUSH_LINGER: Final = 0.005
"""Seconds a flush waits for concurrent mutations to join it (see `_linger`)."""
DEFAULT_FLUSH_INTERVAL: Final = 1.0
"""Seconds between background flushes (see the module docstring on durability)."""


@dataclass(frozen=True)
class HnswSettings:
    """HNSW index and search parameters.

    The defaults are Qdrant's index defaults (m=16, ef_construct=100) plus an
    explicit search width, so recall does not depend on an engine default that
    can change between releases. On clustered 384-d data, shaped like text
    embeddings, recall@10 against exact search measured 1.0 at 3,000 and at
    20,000 chunks (the unit tests assert >= 0.95). Uniformly random vectors are a
    worst case no embedding model produces: on 20,000 of them recall@10 was 0.13
    at ef=16, 0.41 with the engine default, 0.48 at ef=128 and 0.69 at ef=256;
    set `exact` if such data must be searched exhaustively.

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


class EdgeVectorStore:
    """`VectorStore` persisted in `data_dir` by the embedded qdrant-edge engine.

    Thread-safe. One instance owns the directory; open it once per process.
    """

    def __init__(
        self,
        chunks: EdgeShard,
        documents: EdgeShard,
        dimension: int,
        settings: HnswSettings,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        """Use `EdgeVectorStore.open`; this only wires already opened shards."""
        if flush_interval < 0:
            raise InvalidInputError(f"flush_interval must be >= 0, got {flush_interval}")
        self._chunks: EdgeShard | None = chunks
        self._documents: EdgeShard | None = documents
        self._dimension = dimension
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

        A directory written before tenancy is migrated (tenant `LEGACY_TENANT`,
        see `_migrate_to_tenancy`); opening a migrated one again changes nothing.
        """
        if dimension < 1:
            raise InvalidInputError(f"dimension must be at least 1, got {dimension}")
        settings = hnsw or HnswSettings()
        data_dir.mkdir(parents=True, exist_ok=True)
        chunks = _open_shard(
            data_dir / _CHUNKS_DIR, _chunk_config(dimension, settings), DENSE, dimension
        )
        try:
            _ensure_indexes(chunks, _CHUNK_INDEXES)
            documents = _open_shard(data_dir / _DOCUMENTS_DIR, _registry_config(), _PLACEHOLDER, 1)
        except BaseException:
            chunks.close()
            raise
        try:
            _ensure_indexes(documents, _REGISTRY_INDEXES)
            _migrate_to_tenancy(chunks, documents)
        except BaseException:
            documents.close()
            chunks.close()
            raise
        return cls(chunks, documents, dimension, settings, flush_interval)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def dimension(self) -> int:
        """Length every stored and query vector must have."""
        return self._dimension

    @property
    def settings(self) -> HnswSettings:
        """The HNSW settings this store was opened with."""
        return self._settings

    def replace_document(
        self,
        document: DocumentRecord,
        chunks: Sequence[StoredChunk],
        vectors: Sequence[Sequence[float]],
    ) -> tuple[int, int]:
        """Make `chunks` the only chunks of the document; return (upserted, deleted).

        Order: upsert the new chunks, delete the document's chunks whose ids are
        not among them, write the record, all under the write lock so no search
        observes an intermediate state; then flush. Replacing with identical chunks
        rewrites them in place and deletes nothing. Only the document of
        `document.tenant` is touched: the stale-chunk filter matches the tenant
        too, and chunk ids already used by a point of another document (of this
        or another tenant) are refused.

        Atomicity is towards readers of this process, not across a crash: if the
        process dies between the engine calls, a restart can show new and stale
        chunks together. Re-running the same replacement (ingestion is
        idempotent) repairs that.
        """
        rows = validate_replacement(document, chunks, vectors, self._dimension)
        points = [
            Point(chunk.chunk_id, _vectors(row, chunk.title, chunk.text), chunk_payload(chunk))
            for chunk, row in zip(chunks, rows, strict=True)
        ]
        new_ids = {chunk.chunk_id for chunk in chunks}
        stale = Filter(
            must=_document_conditions(document.tenant, document.document_id),
            must_not=[HasIdCondition(set(new_ids))] if new_ids else None,
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

    def search(
        self,
        caller: Caller,
        vector: Sequence[float],
        top_k: int,
        filter: SearchFilter,
        options: SearchOptions = DENSE_SEARCH,
        *,
        exact: bool | None = None,
    ) -> list[SearchHit]:
        """Return up to `top_k` of the chunks `caller` may see, ranked as
        `options` says, best first.

        Dense ranks by cosine, keyword by BM25, hybrid fuses a dense and a
        keyword leg of `candidate_count(top_k)` chunks each by RRF inside the
        engine (one call, one consistent snapshot). The filter (`_engine_filter`:
        the caller's tenant and access labels, then `filter`) applies to every
        leg and to the fused query, so fusion never sees a chunk the caller may
        not see or excluded. With MMR the engine returns `candidate_count(top_k)`
        such chunks with their dense vectors and `mmr_order` picks `top_k` of them.

        `exact` overrides `HnswSettings.exact` for this call (evaluation, recall
        checks). The search width is max(ef, limit) because HNSW cannot return
        more results than candidates it keeps.
        """
        validate_caller(caller)
        validate_filter(filter)
        validate_top_k(top_k)
        validate_search_options(options)
        query_vector = (
            validate_vector(vector, self._dimension, "query vector")
            if vector or options.mode is not RetrievalMode.KEYWORD
            else None
        )
        mmr = options.mmr_lambda > 0
        limit = candidate_count(top_k) if mmr else top_k
        engine_filter = _engine_filter(caller, filter)
        legs = self._legs(query_vector, options, candidate_count(top_k), engine_filter, exact)
        with_vector = [DENSE] if mmr or query_vector is not None else False
        if len(legs) == 1:
            request = QueryRequest(
                limit=limit,
                query=legs[0].query,
                filter=engine_filter,
                params=legs[0].params,
                with_payload=True,
                with_vector=with_vector,
            )
        else:
            # Ids and scores only: the legs' union (see `best_first`) is cut to
            # `limit` before any payload or vector is read (`_read_winners`).
            request = QueryRequest(
                limit=2 * candidate_count(top_k),
                prefetches=legs,
                query=_RRF,
                filter=engine_filter,
                with_payload=False,
                with_vector=False,
            )
        points: Sequence[ScoredPoint | _Candidate]
        with self._lock.read():
            chunk_shard, _ = self._require_open()
            points = chunk_shard.query(request)
            if len(legs) > 1:
                points = _read_winners(chunk_shard, points, limit)
        if mmr:
            points = _mmr_points(points, top_k, options.mmr_lambda)
        if query_vector is None:
            return [SearchHit(chunk_from_payload(p.payload or {}), float(p.score)) for p in points]
        return _cosine_hits(points, query_vector)

    def _legs(
        self,
        query_vector: list[float] | None,
        options: SearchOptions,
        leg_size: int,
        engine_filter: Filter,
        exact: bool | None,
    ) -> list[Prefetch]:
        """The engine queries the mode needs: dense, keyword, or both (hybrid)."""
        legs: list[Prefetch] = []
        if options.mode is not RetrievalMode.KEYWORD and query_vector is not None:
            params = SearchParams(
                hnsw_ef=max(self._settings.ef, leg_size),
                exact=self._settings.exact if exact is None else exact,
            )
            legs.append(
                Prefetch(
                    leg_size,
                    query=Query.Nearest(query_vector, using=DENSE),
                    params=params,
                    filter=engine_filter,
                )
            )
        if options.mode is not RetrievalMode.DENSE:
            terms = _BM25.embed_query(options.text)
            legs.append(
                Prefetch(leg_size, query=Query.Nearest(terms, using=KEYWORD), filter=engine_filter)
            )
        return legs

    def get_document(self, tenant: str, document_id: str) -> DocumentRecord | None:
        """Return the tenant's record, or None when the tenant has no such document."""
        validate_tenant(tenant)
        if not document_id:
            raise InvalidInputError("document_id must not be empty")
        with self._lock.read():
            _, registry = self._require_open()
            found = registry.retrieve(
                [_record_id(tenant, document_id)], with_payload=True, with_vector=False
            )
        records = [record_from_payload(point.payload or {}) for point in found]
        # The id is derived from the tenant; checking the payload as well costs nothing.
        return next(
            (r for r in records if (r.tenant, r.document_id) == (tenant, document_id)), None
        )

    def lookup_documents(self, caller: Caller, document_ids: Sequence[str]) -> list[DocumentRecord]:
        """Return the caller's visible records of `document_ids`, in request order:
        one registry read by point id (ids derive from tenant and document id)."""
        ids = validate_lookup(caller, document_ids)
        with self._lock.read():
            _, registry = self._require_open()
            found = registry.retrieve(
                [_record_id(caller.tenant, d) for d in ids], with_payload=True, with_vector=False
            )
        records = [record_from_payload(point.payload or {}) for point in found]
        return visible_records(caller, ids, records)

    def list_documents(
        self,
        tenant: str,
        limit: int,
        after: str = "",
        visible_to: Sequence[str] | None = None,
    ) -> list[DocumentRecord]:
        """Return up to `limit` of the tenant's records with document_id > `after`,
        by document_id; with `visible_to` (a caller's access labels), only the
        records those labels may see (`may_see`).

        Each page scans the tenant's registry (`listing_page`). Measured ~65 ms
        per 10,000 documents: fine for an admin listing; at hundreds of
        thousands of documents keep a sorted id index instead.
        """
        validate_tenant(tenant)
        validate_list_limit(limit)
        with self._lock.read():
            _, registry = self._require_open()
            records = _scan_registry(registry, Filter(must=[_tenant_condition(tenant)]))
            return listing_page(records, limit, after, visible_to)

    def remove_document(self, tenant: str, document_id: str) -> int:
        """Delete the tenant's document (chunks and record); return the chunks deleted.

        Chunks are deleted even when the record is missing (left by a crash in
        the middle of a first `replace_document`), so this also cleans up orphans;
        NotFoundError only when the tenant has neither a record nor a chunk of
        the document. Another tenant's document of the same id is never touched.
        """
        validate_tenant(tenant)
        if not document_id:
            raise InvalidInputError("document_id must not be empty")
        record_id = _record_id(tenant, document_id)
        of_document = Filter(must=_document_conditions(tenant, document_id))
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

    def stats(self) -> StoreStats:
        """Return document and chunk counts (consistent with each other)."""
        with self._lock.read():
            chunk_shard, registry = self._require_open()
            chunk_count = chunk_shard.count(CountRequest(exact=True))
            document_count = registry.count(CountRequest(exact=True))
        return StoreStats(
            document_count=document_count,
            chunk_count=chunk_count,
            dimension=self._dimension,
            backend=BACKEND,
        )

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
            flushed = False
            try:
                for shard in shards:
                    shard.flush()
                flushed = True
            except Exception:  # keep flushing later; close() flushes again anyway
                log.exception("background flush of the vector store failed")
            finally:
                with self._commit:
                    self._flushing = False
                    if flushed:
                        self._durable = max(self._durable, target)
                    self._commit.notify_all()

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

        Flushes are shared (group commit): a flush costs 13-23 ms (up to ~200 ms
        under concurrent disk load) and ~7 ms of CPU even when little changed,
        and it holds the GIL, so no other mutation applies while it runs. The
        flushing thread therefore first lingers briefly for mutations already on
        their way; the others wait, and the next flush covers every mutation
        applied before it started. `close` waits for a running flush and
        flushes whatever came after.
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
    return EdgeConfig(vectors={_PLACEHOLDER: EdgeVectorParams(size=1, distance=Distance.Dot)})


def _open_shard(path: Path, config: EdgeConfig, vector_name: str, dimension: int) -> EdgeShard:
    """Load the shard at `path`, or create it if the directory holds none yet.

    The persisted dimension is read from the shard's own config file first so the
    error names both dimensions; the engine's error only says "incompatible".
    """
    config_file = path / "edge_config.json"
    _finish_interrupted_migration(path)
    if not config_file.exists():
        try:
            return EdgeShard.create(str(path), config)
        except Exception as exc:
            raise FailedPreconditionError(f"cannot create vector shard at {path}: {exc}") from exc
    persisted = _persisted_dimension(config_file, vector_name)
    if persisted is not None and persisted != dimension:
        raise FailedPreconditionError(
            f"vector store at {path} holds vectors of dimension {persisted}, but dimension "
            f"{dimension} was requested; re-index with the new embedding model into a new "
            "data directory"
        )
    try:
        if vector_name == DENSE and not _has_sparse_vector(config_file, KEYWORD):
            _add_keyword_vectors(path, config)
        return EdgeShard.load(str(path), config)
    except FailedPreconditionError:
        raise
    except Exception as exc:
        if "WouldBlock" in str(exc):
            raise FailedPreconditionError(
                f"vector store at {path} is already open in another store or process"
            ) from exc
        raise FailedPreconditionError(f"cannot load vector shard at {path}: {exc}") from exc


def _persisted_dimension(config_file: Path, vector_name: str) -> int | None:
    """Return the size of `vector_name` recorded in the shard config, if readable."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        size = config["vectors"][vector_name]["size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # let the engine's own compatibility check decide
    return size if isinstance(size, int) else None


def _has_sparse_vector(config_file: Path, vector_name: str) -> bool:
    """Whether the shard config at `config_file` declares sparse `vector_name`."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        return vector_name in (config.get("sparse_vectors") or {})
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: let the engine's own compatibility check decide


_MIGRATING_SUFFIX: Final = ".migrating"
_REPLACED_SUFFIX: Final = ".pre-bm25"


def _add_keyword_vectors(path: Path, config: EdgeConfig) -> None:
    """Rebuild a chunk shard written before keyword search, adding BM25 vectors.

    The engine refuses to load a shard with a vector its segments lack, and
    cannot add one in place, so the points (dense vectors and payloads, which
    hold the text) are copied into a new shard beside it with their BM25
    vectors computed here. The old shard is only removed after the new one is
    complete and renamed into place; an interruption at any point leaves either
    the old shard (the migration re-runs) or a finished one (see
    `_finish_interrupted_migration`). Cost: about one second per 10,000 chunks.
    """
    staging = path.with_name(path.name + _MIGRATING_SUFFIX)
    replaced = path.with_name(path.name + _REPLACED_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)
    old = EdgeShard.load(str(path))  # with its persisted config
    try:
        new = EdgeShard.create(str(staging), config)
        try:
            offset: Any = None
            while True:
                records, offset = old.scroll(
                    ScrollRequest(
                        offset=offset, limit=_SCROLL_BATCH, with_payload=True, with_vector=[DENSE]
                    )
                )
                points = [_with_keyword_vector(r.id, r.vector, r.payload or {}) for r in records]
                if points:
                    new.update(UpdateOperation.upsert_points(points))
                if offset is None:
                    break
            new.flush()
        finally:
            new.close()
    finally:
        old.close()
    path.rename(replaced)
    staging.rename(path)
    shutil.rmtree(replaced)


def _finish_interrupted_migration(path: Path) -> None:
    """Complete or roll back a `_add_keyword_vectors` that was interrupted."""
    replaced = path.with_name(path.name + _REPLACED_SUFFIX)
    if not replaced.exists():
        return
    if path.exists():  # the new shard is in place; only the old one is left
        shutil.rmtree(replaced)
    else:  # stopped between the two renames: restore the old shard, migrate again
        replaced.rename(path)


def _with_keyword_vector(point_id: Any, vector: Any, payload: Mapping[str, Any]) -> Point:
    title, text = str(payload.get("title", "")), str(payload.get("text", ""))
    return Point(point_id, _vectors(_dense_of(vector), title, text), dict(payload))


@dataclass
class _Candidate:
    """A fused chunk as `search` needs it: what the engine's scored points carry."""

    id: str
    score: float
    payload: Mapping[str, Any] | None = None
    vector: Any = None


def _read_winners(
    chunk_shard: EdgeShard, fused: Sequence[ScoredPoint | _Candidate], limit: int
) -> list[_Candidate]:
    """The `limit` best of `fused` (ids and scores), with their payloads and
    dense vectors read from `chunk_shard`: only the winners are read, because
    reading those of the legs' whole union took about a third of a hybrid
    search. Call under the read lock that covered the query, so both see one
    snapshot."""
    best = best_first(fused, limit)
    records = chunk_shard.retrieve(
        [str(point.id) for point in best], with_payload=True, with_vector=[DENSE]
    )
    by_id = {str(record.id): record for record in records}
    return [
        _Candidate(str(p.id), float(p.score), by_id[str(p.id)].payload, by_id[str(p.id)].vector)
        for p in best
    ]


def _vectors(dense: list[float], title: str, text: str) -> dict[str, Any]:
    """A chunk's named vectors; no BM25 vector when its text has no indexable term.

    Leaving an empty sparse vector out keeps the engine's sparse index count
    equal to the points that have one, which `indexed_vector_count` relies on.
    """
    terms = _BM25.embed_document(keyword_text(title, text))
    return {DENSE: dense, KEYWORD: terms} if terms.indices else {DENSE: dense}


def _dense_of(vector: Any) -> list[float]:
    """The dense vector of a point read with `with_vector=[DENSE]` (a dict by name)."""
    return cast(list[float], vector[DENSE] if isinstance(vector, dict) else vector)


def _cosine_hits(
    points: Sequence[ScoredPoint | _Candidate], query_vector: Sequence[float]
) -> list[SearchHit]:
    """Hits in the engine's order, each scored by its cosine to the query.

    Fused (RRF) and BM25 scores have no fixed scale, while consumers threshold
    the score (the extractive answerer declines below a tuned cosine, the
    top-score metric tracks cosine); so whenever the query has a vector, every
    mode reports cosine and only the order depends on the mode. The engine
    stores cosine vectors normalised, so a dot product with the normalised
    query is the cosine.
    """
    if not points:
        return []
    query = np.asarray(query_vector, dtype=np.float32)
    query /= np.linalg.norm(query)
    cosines = np.asarray([_dense_of(p.vector) for p in points], dtype=np.float32) @ query
    return [
        SearchHit(chunk_from_payload(p.payload or {}), float(cosine))
        for p, cosine in zip(points, cosines, strict=True)
    ]


def _mmr_points(
    points: Sequence[ScoredPoint | _Candidate], top_k: int, mmr_lambda: float
) -> list[ScoredPoint | _Candidate]:
    """The `top_k` of `points` that `mmr_order` picks, in its order."""
    vectors = [_dense_of(p.vector) for p in points]
    order = mmr_order([p.score for p in points], vectors, top_k, mmr_lambda)
    return [points[i] for i in order]


def _ensure_indexes(shard: EdgeShard, indexes: Mapping[str, PayloadSchemaType]) -> None:
    """Create the payload indexes the shard lacks (an older directory gains the new ones)."""
    existing = shard.info().payload_schema
    for name, schema in indexes.items():
        if name not in existing:
            shard.update(UpdateOperation.create_field_index(name, schema))
    shard.flush()


def _migrate_to_tenancy(chunks: EdgeShard, registry: EdgeShard) -> None:
    """Give chunks and records written before tenancy the tenant `LEGACY_TENANT`.

    Such points lack the tenant (and the access labels, tags and date) in their
    payload, so no search would ever match them. Chunks keep their ids (chunk
    ids are only ever compared, not derived here) and get the missing fields in
    one engine update. Records move to the tenant-scoped id (`_record_id`): each
    batch is written under the new id before the old one is deleted, so an
    interruption leaves at worst a duplicate that the next open resolves (the
    old record still lacks the tenant and is moved again, to the same id).
    Idempotent: a migrated directory has no point without a tenant, and the
    check is one indexed count per shard.
    """
    untenanted = Filter(must=[IsEmptyCondition("tenant")])
    legacy_fields = {
        "tenant": LEGACY_TENANT,
        "access_labels": [],
        "tags": [],
        "document_date_unix": 0,
    }
    migrated = False
    if chunks.count(CountRequest(exact=True, filter=untenanted)):
        chunks.update(UpdateOperation.set_payload_by_filter(untenanted, legacy_fields))
        chunks.flush()
        migrated = True
    while True:
        records, _ = registry.scroll(
            ScrollRequest(
                limit=_SCROLL_BATCH, filter=untenanted, with_payload=True, with_vector=False
            )
        )
        if not records:
            break
        moved = []
        for record in records:
            payload = {**(record.payload or {}), **legacy_fields}
            moved.append(Point(_record_id(LEGACY_TENANT, str(payload["document_id"])), {}, payload))
        registry.update(UpdateOperation.upsert_points(moved))
        registry.update(UpdateOperation.delete_points([record.id for record in records]))
        migrated = True
    if migrated:
        registry.flush()
        log.info("vector store migrated to tenancy: existing data is tenant %r", LEGACY_TENANT)


def _record_id(tenant: str, document_id: str) -> str:
    """Registry point id of the tenant's document: "/" cannot occur in a tenant id
    (see `validate_tenant`), so different (tenant, document_id) pairs never share one."""
    return str(uuid.uuid5(_RECORD_NAMESPACE, f"{tenant}/{document_id}"))


def _tenant_condition(tenant: str) -> FieldCondition:
    return FieldCondition("tenant", match=MatchValue(tenant))


def _document_conditions(tenant: str, document_id: str) -> list[ConditionType]:
    """The chunks (or record) of one tenant's document."""
    return [_tenant_condition(tenant), FieldCondition("document_id", match=MatchValue(document_id))]


def _access_condition(access_labels: Sequence[str]) -> IsEmptyCondition | Filter:
    """Chunks visible to a caller holding `access_labels`: those without access
    labels, or, if the caller holds any, those sharing one with the caller."""
    unrestricted = IsEmptyCondition("access_labels")
    if not access_labels:
        return unrestricted
    shared = FieldCondition("access_labels", match=MatchAny(list(access_labels)))
    return Filter(should=[unrestricted, shared])


def _engine_filter(caller: Caller, search_filter: SearchFilter) -> Filter:
    """The engine filter of a search: what the caller may see AND what it asked for.

        must:
          tenant == caller.tenant
          access_labels is empty  OR  access_labels has any of caller.access_labels
                                      (the second only when the caller holds labels)
          document_id in filter.document_ids      (MatchAny; each line only when
          media_type in filter.media_types         the filter field is non-empty)
          source_uri in filter.source_uris
          tags has any of filter.tags
          filter.date_from_unix <= document_date_unix <= filter.date_to_unix
                                      (Range gte/lte; either bound may be absent)
        must_not (only when a date bound is set):
          document_date_unix == 0     (dateless documents never match a date range)

    The same filter goes to every prefetch leg and to the fused query.
    """
    conditions: list[ConditionType] = [
        _tenant_condition(caller.tenant),
        _access_condition(caller.access_labels),
    ]
    fields_and_values = (
        ("document_id", search_filter.document_ids),
        ("media_type", search_filter.media_types),
        ("source_uri", search_filter.source_uris),
        ("tags", search_filter.tags),
    )
    conditions.extend(
        FieldCondition(key, match=MatchAny(list(values)))
        for key, values in fields_and_values
        if values
    )
    start, end = search_filter.date_from_unix, search_filter.date_to_unix
    if start is None and end is None:
        return Filter(must=conditions)
    date_range = RangeFloat(
        gte=None if start is None else float(start), lte=None if end is None else float(end)
    )
    conditions.append(FieldCondition("document_date_unix", range=date_range))
    dateless = FieldCondition("document_date_unix", match=MatchValue(0))
    return Filter(must=conditions, must_not=[dateless])


def _check_chunk_ownership(
    shard: EdgeShard, tenant: str, document_id: str, chunk_ids: Sequence[str]
) -> None:
    """Refuse chunk ids that already belong to another document (or another tenant's).

    An upsert would silently move such a point, corrupting the other document.
    The error names the first such chunk in `chunk_ids` order (the request's),
    and the other document only when it is the same tenant's.
    """
    if not chunk_ids:
        return
    existing = shard.retrieve(
        list(chunk_ids),
        with_payload=PayloadSelector.Include(["tenant", "document_id"]),
        with_vector=False,
    )
    owners = {str(record.id): record.payload or {} for record in existing}
    for chunk_id in chunk_ids:
        if chunk_id not in owners:
            continue
        owner_tenant, owner = owners[chunk_id].get("tenant"), owners[chunk_id].get("document_id")
        if owner_tenant != tenant:
            raise InvalidInputError(
                f"chunk_id '{chunk_id}' already belongs to another tenant's document, "
                f"not to '{document_id}' of tenant '{tenant}'"
            )
        if owner != document_id:
            raise InvalidInputError(
                f"chunk_id '{chunk_id}' already belongs to document '{owner}', not '{document_id}'"
            )


def _scan_registry(registry: EdgeShard, records_filter: Filter) -> Iterator[DocumentRecord]:
    offset: Any = None
    while True:
        records, offset = registry.scroll(
            ScrollRequest(
                offset=offset,
                limit=_SCROLL_BATCH,
                filter=records_filter,
                with_payload=True,
                with_vector=False,
            )
        )
        for record in records:
            yield record_from_payload(record.payload or {})
        if offset is None:
            return
