"""`VectorStore` on qdrant-edge: the Qdrant engine embedded in this process.

Layout under `data_dir`:

* `chunks/`: one EdgeShard holding a point per chunk. Point id = chunk_id, one
  named dense vector "dense" (cosine), payload = every `StoredChunk` field, and
  keyword payload indexes on document_id, media_type and source_uri so filtered
  searches and delete-by-document do not scan every payload.
* `documents/`: a second EdgeShard, the document registry. Point id =
  uuid5(document_id), payload = every `DocumentRecord` field, no vector (an
  EdgeConfig must declare at least one vector, so it declares a 1-dimensional
  placeholder that no point uses). Keeping the registry in the engine makes the
  data directory the single source of truth: there is no side database that can
  disagree with the chunks after a crash or a restore.

Engine behaviour this module relies on (measured with qdrant-edge-py 0.9.0):

* Every update is appended to a write-ahead log whose pages are only written
  back by `flush()`; a killed process loses nothing (the WAL is replayed on
  load), but an OS crash or power loss can lose updates not yet flushed. So
  every mutation is flushed before it is acknowledged.
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
* `query` and `flush` release the GIL, so searches can run in parallel with
  each other and with a flush.
"""

from __future__ import annotations

import heapq
import json
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    HasIdCondition,
    HnswIndexConfig,
    MatchAny,
    MatchValue,
    PayloadSchemaType,
    PayloadSelector,
    Point,
    Query,
    QueryRequest,
    ScrollRequest,
    SearchParams,
    UpdateOperation,
)

from services.common.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from services.retrieval.store import (
    DocumentRecord,
    SearchFilter,
    SearchHit,
    StoredChunk,
    StoreStats,
    validate_list_limit,
    validate_replacement,
    validate_top_k,
    validate_vector,
)

BACKEND: Final = "qdrant-edge"
DENSE: Final = "dense"
"""Name of the chunk vector; named so sparse or multi vectors can be added later."""

_PLACEHOLDER: Final = "placeholder"
"""The registry's declared-but-unused vector (an EdgeConfig needs at least one)."""

_CHUNKS_DIR: Final = "chunks"
_DOCUMENTS_DIR: Final = "documents"
_CHUNK_INDEXED_FIELDS: Final = ("document_id", "media_type", "source_uri")
_DOCUMENT_NAMESPACE: Final = uuid.UUID("3f6c2a52-7e0b-5d8e-9a41-6c0b7f1d2e90")
"""Fixed namespace for registry point ids: changing it orphans every record."""

_SCROLL_BATCH: Final = 1024


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
    ) -> None:
        """Use `EdgeVectorStore.open`; this only wires already opened shards."""
        self._chunks: EdgeShard | None = chunks
        self._documents: EdgeShard | None = documents
        self._dimension = dimension
        self._settings = settings
        self._lock = _ReadWriteLock()

    @classmethod
    def open(cls, data_dir: Path, dimension: int, hnsw: HnswSettings | None = None) -> Self:
        """Open the store in `data_dir`, creating it on first use.

        `hnsw` is written to the shard's config on every open (None means the
        defaults, not whatever was persisted), so changed settings apply to
        indexes built from then on; existing indexes keep theirs until the
        optimizer rebuilds them. The search width and `exact` apply at once.

        The dimension cannot change: reopening with a different one raises
        FailedPreconditionError, because the stored vectors came from another
        embedding model and must be re-indexed.
        """
        if dimension < 1:
            raise InvalidInputError(f"dimension must be at least 1, got {dimension}")
        settings = hnsw or HnswSettings()
        data_dir.mkdir(parents=True, exist_ok=True)
        chunks = _open_shard(
            data_dir / _CHUNKS_DIR, _chunk_config(dimension, settings), DENSE, dimension
        )
        try:
            _ensure_keyword_indexes(chunks, _CHUNK_INDEXED_FIELDS)
            documents = _open_shard(data_dir / _DOCUMENTS_DIR, _registry_config(), _PLACEHOLDER, 1)
        except BaseException:
            chunks.close()
            raise
        try:
            _ensure_keyword_indexes(documents, ("document_id",))
        except BaseException:
            documents.close()
            chunks.close()
            raise
        return cls(chunks, documents, dimension, settings)

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
        rewrites them in place and deletes nothing.

        Atomicity is towards readers of this process, not across a crash: if the
        process dies between the engine calls, a restart can show new and stale
        chunks together. Re-running the same replacement (ingestion is
        idempotent) repairs that.
        """
        rows = validate_replacement(document, chunks, vectors, self._dimension)
        points = [
            Point(chunk.chunk_id, {DENSE: row}, _chunk_payload(chunk))
            for chunk, row in zip(chunks, rows, strict=True)
        ]
        new_ids = {chunk.chunk_id for chunk in chunks}
        stale = Filter(
            must=[_document_condition(document.document_id)],
            must_not=[HasIdCondition(set(new_ids))] if new_ids else None,
        )
        record = Point(_record_id(document.document_id), {}, _record_payload(document))
        with self._lock.write():
            chunk_shard, registry = self._require_open()
            _check_chunk_ownership(chunk_shard, document.document_id, new_ids)
            deleted = chunk_shard.count(CountRequest(exact=True, filter=stale))
            if points:
                chunk_shard.update(UpdateOperation.upsert_points(points))
            if deleted:
                chunk_shard.update(UpdateOperation.delete_points_by_filter(stale))
            registry.update(UpdateOperation.upsert_points([record]))
        self._flush()
        return len(points), deleted

    def search(
        self,
        vector: Sequence[float],
        top_k: int,
        filter: SearchFilter,
        *,
        exact: bool | None = None,
    ) -> list[SearchHit]:
        """Return up to `top_k` chunks closest to `vector` by cosine, best first.

        `exact` overrides `HnswSettings.exact` for this call (evaluation, recall
        checks). The search width is max(ef, top_k) because HNSW cannot return
        more results than candidates it keeps.
        """
        validate_top_k(top_k)
        query_vector = validate_vector(vector, self._dimension, "query vector")
        request = QueryRequest(
            limit=top_k,
            query=Query.Nearest(query_vector, using=DENSE),
            filter=_engine_filter(filter),
            with_payload=True,
            with_vector=False,
            params=SearchParams(
                hnsw_ef=max(self._settings.ef, top_k),
                exact=self._settings.exact if exact is None else exact,
            ),
        )
        with self._lock.read():
            chunk_shard, _ = self._require_open()
            points = chunk_shard.query(request)
        return [SearchHit(_chunk_from_payload(p.payload or {}), float(p.score)) for p in points]

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """Return the registry record, or None when the document is not indexed."""
        if not document_id:
            raise InvalidInputError("document_id must not be empty")
        with self._lock.read():
            _, registry = self._require_open()
            found = registry.retrieve(
                [_record_id(document_id)], with_payload=True, with_vector=False
            )
        return _record_from_payload(found[0].payload or {}) if found else None

    def list_documents(self, limit: int, after: str = "") -> list[DocumentRecord]:
        """Return up to `limit` records with document_id > `after`, by document_id.

        The engine orders scrolls only by numeric payload indexes, not keywords,
        so each page scans the whole registry and keeps the `limit` smallest ids
        (a bounded heap, so memory stays O(limit)). Measured ~65 ms per 10,000
        documents: fine for an admin listing; at hundreds of thousands of
        documents keep a sorted id index instead.
        """
        validate_list_limit(limit)
        with self._lock.read():
            _, registry = self._require_open()
            candidates = (
                record for record in _scan_registry(registry) if record.document_id > after
            )
            return heapq.nsmallest(limit, candidates, key=lambda record: record.document_id)

    def remove_document(self, document_id: str) -> int:
        """Delete the document's chunks and record; return the chunks deleted.

        Chunks are deleted even when the record is missing (left by a crash in
        the middle of a first `replace_document`), so this also cleans up orphans;
        NotFoundError only when there is neither a record nor a chunk.
        """
        if not document_id:
            raise InvalidInputError("document_id must not be empty")
        record_id = _record_id(document_id)
        of_document = Filter(must=[_document_condition(document_id)])
        with self._lock.write():
            chunk_shard, registry = self._require_open()
            known = bool(registry.retrieve([record_id], with_payload=False, with_vector=False))
            deleted = chunk_shard.count(CountRequest(exact=True, filter=of_document))
            if not known and not deleted:
                raise NotFoundError(f"document '{document_id}' not found")
            if deleted:
                chunk_shard.update(UpdateOperation.delete_points_by_filter(of_document))
            if known:
                registry.update(UpdateOperation.delete_points([record_id]))
        self._flush()
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
        self._flush()
        return changed

    def indexed_vector_count(self) -> int:
        """Number of chunk vectors covered by an HNSW index (the rest are scanned)."""
        with self._lock.read():
            chunk_shard, _ = self._require_open()
            return chunk_shard.info().indexed_vectors_count

    def close(self) -> None:
        """Flush and release both shards (and the directory lock). Idempotent."""
        with self._lock.write():
            chunk_shard, registry = self._chunks, self._documents
            self._chunks = self._documents = None
            for shard in (chunk_shard, registry):
                if shard is not None:
                    shard.flush()
                    shard.close()

    def _require_open(self) -> tuple[EdgeShard, EdgeShard]:
        if self._chunks is None or self._documents is None:
            raise FailedPreconditionError("vector store is closed")
        return self._chunks, self._documents

    def _flush(self) -> None:
        """Write the WAL and segments to disk before a mutation is acknowledged.

        Runs under the read lock, after the write lock is released: the change is
        already visible, and searches keep running during the msync/fsync work
        (measured 13-23 ms per mutation for both shards on an idle disk, up to
        ~200 ms under concurrent disk load). Taking the read side still keeps
        `close` out.
        """
        with self._lock.read():
            if self._chunks is None or self._documents is None:
                return  # closed meanwhile; close() flushed
            self._chunks.flush()
            self._documents.flush()


def _chunk_config(dimension: int, settings: HnswSettings) -> EdgeConfig:
    return EdgeConfig(
        vectors={DENSE: EdgeVectorParams(size=dimension, distance=Distance.Cosine)},
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
        return EdgeShard.load(str(path), config)
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


def _ensure_keyword_indexes(shard: EdgeShard, names: Sequence[str]) -> None:
    existing = shard.info().payload_schema
    for name in names:
        if name not in existing:
            shard.update(UpdateOperation.create_field_index(name, PayloadSchemaType.Keyword))
    shard.flush()


def _record_id(document_id: str) -> str:
    return str(uuid.uuid5(_DOCUMENT_NAMESPACE, document_id))


def _document_condition(document_id: str) -> FieldCondition:
    return FieldCondition("document_id", match=MatchValue(document_id))


def _engine_filter(search_filter: SearchFilter) -> Filter | None:
    """Translate the domain filter: AND across fields, OR (MatchAny) within one."""
    fields_and_values = (
        ("document_id", search_filter.document_ids),
        ("media_type", search_filter.media_types),
        ("source_uri", search_filter.source_uris),
    )
    conditions: list[FieldCondition | Filter] = [
        FieldCondition(key, match=MatchAny(list(values)))
        for key, values in fields_and_values
        if values
    ]
    return Filter(must=list(conditions)) if conditions else None


def _check_chunk_ownership(shard: EdgeShard, document_id: str, chunk_ids: set[str]) -> None:
    """Refuse chunk ids that already belong to another document.

    An upsert would silently move such a point, corrupting the other document.
    """
    if not chunk_ids:
        return
    existing = shard.retrieve(
        list(chunk_ids),
        with_payload=PayloadSelector.Include(["document_id"]),
        with_vector=False,
    )
    for record in existing:
        owner = (record.payload or {}).get("document_id")
        if owner != document_id:
            raise InvalidInputError(
                f"chunk_id '{record.id}' already belongs to document '{owner}', not '{document_id}'"
            )


def _scan_registry(registry: EdgeShard) -> Iterator[DocumentRecord]:
    offset: Any = None
    while True:
        records, offset = registry.scroll(
            ScrollRequest(offset=offset, limit=_SCROLL_BATCH, with_payload=True, with_vector=False)
        )
        for record in records:
            yield _record_from_payload(record.payload or {})
        if offset is None:
            return


_CHUNK_FIELDS: Final = tuple(f.name for f in fields(StoredChunk))
_RECORD_FIELDS: Final = tuple(f.name for f in fields(DocumentRecord))


def _chunk_payload(chunk: StoredChunk) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies every value, 20x slower per chunk.
    return {name: getattr(chunk, name) for name in _CHUNK_FIELDS}


def _record_payload(record: DocumentRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _RECORD_FIELDS}


def _chunk_from_payload(payload: Mapping[str, Any]) -> StoredChunk:
    return StoredChunk(**{name: payload[name] for name in _CHUNK_FIELDS})


def _record_from_payload(payload: Mapping[str, Any]) -> DocumentRecord:
    return DocumentRecord(**{name: payload[name] for name in _RECORD_FIELDS})
