"""`VectorStore` on a Qdrant server, through the synchronous `qdrant-client`.

The production backend: every retrieval replica talks to one Qdrant cluster,
so nothing here may rely on a process-local lock. The data is laid out as
`schema.py` says, in two collections (`<collection>` holds a point per chunk
*version*, `<collection>_documents` the registry), and searches are planned
and finished by `ranking.py`, exactly as in the embedded engine. What is this
module's own is how a replacement stays atomic for readers of any replica: one
registry record per document names its live chunk version, a writer claims
the record while it writes a new version, and a search pins the documents
being written to their live version and retries if a write began meanwhile.
docs/qdrant.md gives the protocol, why it is safe, and what qdrant-client's
local mode (the tests' engine) does not show.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Self
from urllib.parse import urlsplit

import grpc
import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from qdrant_edge import SparseVector

from services.common.errors import (
    DeadlineError,
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    PlatformError,
    RateLimitedError,
    UnavailableError,
)
from services.retrieval import filters, schema
from services.retrieval.engine_store import EngineStore
from services.retrieval.fusion import RRF_K
from services.retrieval.ranking import Candidate, SearchPlan, best_first
from services.retrieval.store import (
    DocumentRecord,
    StoredChunk,
    VectorStore,
)

log = logging.getLogger(__name__)

BACKEND: Final = "qdrant"
MIN_SERVER_VERSION: Final = (1, 16)
"""Conditional upserts and RRF with a chosen k appeared in Qdrant 1.16."""
DEFAULT_GRPC_PORT: Final = 6334

_REGISTRY_SUFFIX: Final = "_documents"
_DOCUMENT: Final = "document"
_TOKEN: Final = "token"
_EMBEDDER: Final = "embedding_model"
"""Registry point kinds: a document record, a tenant's write token, the
embedding model of the store's vectors."""
_NEVER: Final = "-"
"""A `revision` no record has (revisions are hex): the condition of an insert."""

_CHUNK_NAMESPACE: Final = uuid.UUID("6f1b0c64-2a57-5d0e-b3c9-1e8a4d7f2b90")
_RECORD_NAMESPACE: Final = uuid.UUID("0b5e9a31-7c42-5f18-9d6e-3a2c8b4f1e07")
_TOKEN_NAMESPACE: Final = uuid.UUID("d27c4e19-8b3a-5a61-8f0d-5c9e2b7a4d13")
_EMBEDDER_POINT: Final = str(uuid.uuid5(_TOKEN_NAMESPACE, "embedding model"))
_GENERATIONS: Final = "generations"
_GENERATIONS_POINT: Final = str(uuid.uuid5(_TOKEN_NAMESPACE, "generations"))
"""Fixed namespaces of point ids: changing one orphans every stored point."""

_INDEX_TYPES: Final = {
    schema.IndexKind.KEYWORD: models.PayloadSchemaType.KEYWORD,
    schema.IndexKind.INTEGER: models.PayloadSchemaType.INTEGER,
}
_CHUNK_INDEXES: Final[Mapping[str, models.PayloadSchemaType | models.KeywordIndexParams]] = {
    **{name: _INDEX_TYPES[kind] for name, kind in schema.CHUNK_INDEXES.items()},
    # Tenant-aware: the server keeps each tenant's points together and builds
    # its HNSW graph per tenant (`m=0, payload_m=16` below).
    "tenant": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
    "chunk_id": models.PayloadSchemaType.KEYWORD,
    "version": models.PayloadSchemaType.KEYWORD,
}
"""Every chunk field a search, a delete or the ownership check filters on."""
_REGISTRY_INDEXES: Final[Mapping[str, models.PayloadSchemaType]] = {
    "tenant": models.PayloadSchemaType.KEYWORD,
    "kind": models.PayloadSchemaType.KEYWORD,
    "document_id": models.PayloadSchemaType.KEYWORD,
    "busy": models.PayloadSchemaType.BOOL,
    "indexed": models.PayloadSchemaType.BOOL,
}

_ID_BATCH: Final = 1024
"""Chunk ids per ownership-check request (a MatchAny condition)."""


@dataclass(frozen=True)
class QdrantTuning:
    """Operational parameters; the defaults suit a server on the same network."""

    hnsw_ef: int = 128
    """Search width of the dense leg (never below the leg size), as in `HnswSettings.ef`."""
    exact: bool = False
    """Scan exactly instead of HNSW (evaluation, or very small corpora)."""
    upsert_batch: int = 256
    """Chunk points per upsert request: bounds one request's size (384-d: ~0.5 MiB)."""
    claim_seconds: float = 60.0
    """How long a document's writer may hold it before another may take over."""
    lock_wait_seconds: float = 10.0
    """How long a writer waits for another writer of the same document."""
    search_attempts: int = 5
    """Optimistic search attempts before UNAVAILABLE (docs/qdrant.md)."""
    replication_factor: int = 1
    """Copies of each shard when the store creates its collections. Writes wait for
    every copy (write_consistency_factor = replication_factor), so a registry read
    right after a replacement sees it whichever replica answers."""

    def __post_init__(self) -> None:
        for name in ("hnsw_ef", "upsert_batch", "search_attempts", "replication_factor"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.claim_seconds > 0 or self.lock_wait_seconds < 0:
            raise InvalidInputError("claim_seconds must be > 0 and lock_wait_seconds >= 0")


@dataclass(frozen=True)
class _Snapshot:
    """What a search depends on besides the chunks: the tenant's write token and
    its busy documents as (document_id, live version, record revision)."""

    token: str
    busy: frozenset[tuple[str, str, str]]


@dataclass
class _Claim:
    """A writer's hold on one document's record (docs/qdrant.md)."""

    record_id: str
    token: str
    tenant: str
    document_id: str
    record: dict[str, Any] | None
    """The record as this writer last knew it (None: there is none)."""
    version: str | None = None
    """The chunk version this writer writes, once it has started writing chunks."""
    started: float = field(default_factory=time.monotonic)

    @property
    def live_version(self) -> str:
        """The chunk version the record names live ("" for none)."""
        return str((self.record or {}).get("version", ""))

    @property
    def indexed(self) -> bool:
        """Whether the record describes a document (for get, list and stats)."""
        return bool((self.record or {}).get("indexed", False))


class QdrantServerStore(EngineStore):
    """`VectorStore` on a Qdrant server (or qdrant-client's local mode in tests).

    Thread-safe: `QdrantClient` is, and the store keeps no mutable state besides it.
    """

    backend = BACKEND

    def __init__(
        self, client: QdrantClient, collection: str, dimension: int, tuning: QdrantTuning
    ) -> None:
        """Use `connect` or `open`; this only wires an already prepared client."""
        super().__init__(dimension)
        self._client: QdrantClient | None = client
        self._chunks = collection
        self._registry = collection + _REGISTRY_SUFFIX
        self._tuning = tuning

    @classmethod
    def connect(
        cls,
        url: str,
        collection: str,
        dimension: int,
        *,
        api_key: str = "",
        timeout_seconds: float = 10.0,
        tuning: QdrantTuning | None = None,
    ) -> Self:
        """Open the store on the server at `url`, its gRPC endpoint
        (http[s]://host:6334, as the Helm chart sets RAG_QDRANT_URL)."""
        client = server_client(url, api_key=api_key, timeout_seconds=timeout_seconds)
        try:
            return cls.open(client, collection, dimension, tuning=tuning)
        except BaseException:
            client.close()
            raise

    @classmethod
    def open(
        cls,
        client: QdrantClient,
        collection: str,
        dimension: int,
        *,
        tuning: QdrantTuning | None = None,
    ) -> Self:
        """Open the store on `client`, creating its collections on first use.

        The store owns `client` once this returns (`close` closes it); if this
        raises, the caller still does. Reopening with another dimension raises
        FailedPreconditionError: the stored vectors came from another embedding
        model and must be re-indexed into a new collection.
        """
        if dimension < 1:
            raise InvalidInputError(f"dimension must be at least 1, got {dimension}")
        if not collection:
            raise InvalidInputError("collection must not be empty")
        store = cls(client, collection, dimension, tuning or QdrantTuning())
        store._prepare()
        return store

    def _replace(
        self, document: DocumentRecord, chunks: Sequence[StoredChunk], vectors: list[list[float]]
    ) -> tuple[int, int]:
        """The writer's steps (docs/qdrant.md); a failure before the flip removes
        this writer's chunks and leaves the old version live. `deleted` counts
        the previous version's chunks whose ids are not among the new ones, as
        the embedded store does (it rewrites the others in place)."""
        tenant, document_id = document.tenant, document.document_id
        new_ids = [chunk.chunk_id for chunk in chunks]
        self._check_chunk_ownership(tenant, document_id, new_ids)
        version = uuid.uuid4().hex
        points = [
            models.PointStruct(
                id=_chunk_point_id(tenant, chunk.chunk_id, version),
                vector=schema.chunk_vectors(row, chunk.title, chunk.text, _sparse),
                payload={**schema.chunk_payload(chunk), "version": version},
            )
            for chunk, row in zip(chunks, vectors, strict=True)
        ]
        with self._claim(tenant, document_id) as claim:
            self._change_token(tenant)
            claim.version = version
            with self._engine() as client:
                for start in range(0, len(points), self._tuning.upsert_batch):
                    batch = points[start : start + self._tuning.upsert_batch]
                    client.upsert(self._chunks, batch, wait=True)
            deleted = 0
            if claim.live_version:
                superseded = models.Filter(
                    must=[
                        *_document_conditions(tenant, document_id),
                        _match("version", claim.live_version),
                    ],
                    must_not=[_match_any("chunk_id", new_ids)] if new_ids else None,
                )
                deleted = self._count(self._chunks, superseded)
            fields = {**schema.record_payload(document), "version": version, "indexed": True}
            self._flip(claim, fields)
        return len(points), deleted

    def _candidates(self, plan: SearchPlan, exact: bool | None) -> list[Candidate]:
        """One `query_points` call per attempt, its filter the plan's plus the
        pins of the documents being written; an attempt that raced the start of
        a write in the tenant is retried (docs/qdrant.md)."""
        tenant = plan.tenant
        for attempt in range(self._tuning.search_attempts):
            if attempt:  # back off, with jitter so that racing searches spread out
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
            before = self._snapshot(tenant, token_first=True)
            points = self._query(plan, _pinned(plan.filter, before), exact)
            if self._snapshot(tenant, token_first=False) == before:
                return points
        raise UnavailableError(
            f"Qdrant: every search of tenant '{tenant}' raced a document "
            f"replacement ({self._tuning.search_attempts} attempts); retry"
        )

    def _records(self, tenant: str, document_ids: Sequence[str]) -> list[DocumentRecord]:
        """One registry read; a document whose first replacement is under way
        does not exist yet."""
        with self._engine() as client:
            found = client.retrieve(
                self._registry, [_record_id(tenant, d) for d in document_ids], with_payload=True
            )
        return [
            schema.record_from_payload(point.payload)
            for point in found
            if point.payload is not None and point.payload.get("indexed")
        ]

    def _scan_records(self, tenant: str) -> Iterator[DocumentRecord]:
        documents = models.Filter(
            must=[_match("tenant", tenant), _match("kind", _DOCUMENT), _match("indexed", True)]
        )
        for payload in self._scan(self._registry, documents, with_payload=True):
            yield schema.record_from_payload(payload)

    def _remove(self, tenant: str, document_id: str) -> int:
        """Readers see the document until the record flips to "no version", then
        nothing of it."""
        of_document = models.Filter(must=_document_conditions(tenant, document_id))
        not_found = NotFoundError(f"document '{document_id}' not found in tenant '{tenant}'")
        if self._record(_record_id(tenant, document_id)) is None and not self._count(
            self._chunks, of_document
        ):
            raise not_found  # nothing to lock: no writer has touched it
        with self._claim(tenant, document_id) as claim:
            deleted = self._count(self._chunks, of_document)
            if not claim.indexed and not deleted:
                raise not_found
            self._change_token(tenant)
            self._flip(claim, {"version": "", "indexed": False})
        return deleted

    def _counts(self) -> tuple[int, int]:
        """(documents, chunks) over every tenant, exact at rest."""
        indexed = models.Filter(must=[_match("kind", _DOCUMENT), _match("indexed", True)])
        return self._count(self._registry, indexed), self._count(self._chunks, None)

    def _read_embedder(self) -> str:
        return str((self._record(_EMBEDDER_POINT) or {}).get(_EMBEDDER, ""))

    def _record_embedder(self, model: str) -> str:
        """A registry point inserted only if none exists (the conditional upsert
        of a document claim), then read back: a concurrent first write of
        another replica may have won."""
        point = models.PointStruct(
            id=_EMBEDDER_POINT, vector={}, payload={"kind": _EMBEDDER, _EMBEDDER: model}
        )
        with self._engine() as client:
            client.upsert(
                self._registry,
                [point],
                wait=True,
                update_filter=models.Filter(must=[_match(_EMBEDDER, _NEVER)]),
            )
        return self._read_embedder()

    def _document_chunks(self, tenant: str, document_id: str) -> list[StoredChunk]:
        """The chunks of the live version; read again if a replacement flipped
        the version between the record's read and the chunks'."""
        record_id = _record_id(tenant, document_id)
        for _ in range(self._tuning.search_attempts):
            record = self._record(record_id) or {}
            if not record.get("indexed"):
                return []
            version = str(record["version"])
            live = models.Filter(
                must=[*_document_conditions(tenant, document_id), _match("version", version)]
            )
            chunks = [
                schema.chunk_from_payload(payload)
                for payload in self._scan(self._chunks, live, with_payload=True)
            ]
            if (self._record(record_id) or {}).get("version") == version:
                return chunks
        raise UnavailableError(
            f"Qdrant: document '{document_id}' of tenant '{tenant}' was replaced during "
            f"every read ({self._tuning.search_attempts} attempts); retry"
        )

    def _tenants(self) -> Iterator[str]:
        documents = models.Filter(must=[_match("kind", _DOCUMENT), _match("indexed", True)])
        for payload in self._scan(self._registry, documents, with_payload=["tenant"]):
            yield str(payload["tenant"])

    def _read_generations(self) -> str:
        return str((self._record(_GENERATIONS_POINT) or {}).get(_GENERATIONS, ""))

    def _write_generations(self, table: str) -> None:
        point = models.PointStruct(
            id=_GENERATIONS_POINT, vector={}, payload={"kind": _GENERATIONS, _GENERATIONS: table}
        )
        with self._engine() as client:
            client.upsert(self._registry, [point], wait=True)

    def close(self) -> None:
        """Close the client; later calls raise FailedPreconditionError. Idempotent.

        The server keeps the data: every write was acknowledged with `wait=True`.
        """
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- set-up ---------------------------------------------------------------

    def _prepare(self) -> None:
        """Check the server version and create or verify both collections."""
        with self._engine() as client:
            version = _parse_version(client.info().version)
            if version is not None and version < MIN_SERVER_VERSION:
                raise FailedPreconditionError(
                    f"Qdrant server {'.'.join(map(str, version))} is too old: the store needs "
                    f">= {'.'.join(map(str, MIN_SERVER_VERSION))} (conditional updates)"
                )
            self._ensure_collection(
                client,
                self._chunks,
                vectors={
                    schema.DENSE: models.VectorParams(
                        size=self._dimension, distance=models.Distance.COSINE
                    )
                },
                sparse={schema.KEYWORD: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                hnsw=models.HnswConfigDiff(m=0, payload_m=16),
                indexes=_CHUNK_INDEXES,
            )
            self._ensure_collection(
                client,
                self._registry,
                vectors={
                    schema.PLACEHOLDER: models.VectorParams(size=1, distance=models.Distance.DOT)
                },
                sparse=None,
                hnsw=None,
                indexes=_REGISTRY_INDEXES,
            )
            self._check_layout(client)

    def _ensure_collection(
        self,
        client: QdrantClient,
        name: str,
        *,
        vectors: dict[str, models.VectorParams],
        sparse: dict[str, models.SparseVectorParams] | None,
        hnsw: models.HnswConfigDiff | None,
        indexes: Mapping[str, models.PayloadSchemaType | models.KeywordIndexParams],
    ) -> None:
        """Create `name` with its payload indexes unless it exists (another replica
        may create it concurrently: losing that race is fine); add missing indexes."""
        if not client.collection_exists(name):
            try:
                client.create_collection(
                    name,
                    vectors_config=vectors,
                    sparse_vectors_config=sparse,
                    hnsw_config=hnsw,
                    replication_factor=self._tuning.replication_factor,
                    write_consistency_factor=self._tuning.replication_factor,
                )
            except (UnexpectedResponse, grpc.RpcError, ValueError):
                if not client.collection_exists(name):
                    raise
        existing = client.get_collection(name).payload_schema
        for field_name, index in indexes.items():
            if field_name not in existing:
                client.create_payload_index(name, field_name, index, wait=True)

    def _check_layout(self, client: QdrantClient) -> None:
        """Refuse a chunk collection of another dimension or not made by this store."""
        params = client.get_collection(self._chunks).config.params
        dense = params.vectors.get(schema.DENSE) if isinstance(params.vectors, dict) else None
        if dense is None or schema.KEYWORD not in (params.sparse_vectors or {}):
            raise FailedPreconditionError(
                f"Qdrant collection '{self._chunks}' exists but lacks the '{schema.DENSE}' "
                f"dense and '{schema.KEYWORD}' sparse vectors of this store; use another "
                "RAG_QDRANT_COLLECTION"
            )
        if dense.size != self._dimension:
            raise FailedPreconditionError(
                f"Qdrant collection '{self._chunks}' holds vectors of dimension {dense.size}, "
                f"but dimension {self._dimension} was requested; re-index with the new "
                "embedding model into a new collection"
            )

    # -- engine calls ---------------------------------------------------------

    @contextmanager
    def _engine(self) -> Iterator[QdrantClient]:
        """The client, with transport failures raised as the platform's errors."""
        client = self._client
        if client is None:
            raise FailedPreconditionError("vector store is closed")
        try:
            yield client
        except PlatformError:
            raise
        except grpc.RpcError as exc:
            mapped = _rpc_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        except ResponseHandlingException as exc:
            if isinstance(exc.source, httpx.TimeoutException):
                raise DeadlineError(f"Qdrant did not answer in time: {exc.source}") from exc
            raise UnavailableError(f"Qdrant is unreachable: {exc.source}") from exc
        except UnexpectedResponse as exc:
            if exc.status_code == 429:
                raise RateLimitedError(f"Qdrant refused for load: {exc.reason_phrase}") from exc
            if exc.status_code in (502, 503, 504):
                raise UnavailableError(f"Qdrant is unavailable: {exc.reason_phrase}") from exc
            raise

    def _query(self, plan: SearchPlan, spec: filters.AllOf, exact: bool | None) -> list[Candidate]:
        """One engine query: the dense leg, the keyword leg, or both fused by RRF."""
        query_filter = _engine_filter(spec)
        legs: list[models.Prefetch] = []
        if plan.dense is not None:
            params = models.SearchParams(
                hnsw_ef=max(self._tuning.hnsw_ef, plan.leg_size),
                exact=self._tuning.exact if exact is None else exact,
            )
            legs.append(
                models.Prefetch(
                    query=plan.dense,
                    using=schema.DENSE,
                    limit=plan.leg_size,
                    filter=query_filter,
                    params=params,
                )
            )
        if plan.terms is not None:
            legs.append(
                models.Prefetch(
                    query=_sparse(plan.terms),
                    using=schema.KEYWORD,
                    limit=plan.leg_size,
                    filter=query_filter,
                )
            )
        vectors: list[str] | bool = [schema.DENSE] if plan.needs_vectors else False
        with self._engine() as client:
            if not plan.fused:
                (leg,) = legs
                response = client.query_points(
                    self._chunks,
                    query=leg.query,
                    using=leg.using,
                    query_filter=query_filter,
                    search_params=leg.params,
                    limit=plan.fetch,
                    with_payload=True,
                    with_vectors=vectors,
                )
                return best_first([_candidate(p) for p in response.points], plan.limit)
            response = client.query_points(
                self._chunks,
                prefetch=legs,
                query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
                query_filter=query_filter,
                limit=plan.fetch,
                with_payload=True,
                with_vectors=vectors,
            )
        return best_first([_candidate(p) for p in response.points], plan.limit)

    def _snapshot(self, tenant: str, *, token_first: bool) -> _Snapshot:
        """Read the tenant's write token and busy records, in the order the
        protocol needs: token first before the query, token last after it."""
        token = self._token(tenant) if token_first else ""
        busy_filter = models.Filter(
            must=[_match("tenant", tenant), _match("kind", _DOCUMENT), _match("busy", True)]
        )
        busy = frozenset(
            (str(p["document_id"]), str(p["version"]), str(p["revision"]))
            for p in self._scan(
                self._registry, busy_filter, with_payload=["document_id", "version", "revision"]
            )
        )
        if not token_first:
            token = self._token(tenant)
        return _Snapshot(token, busy)

    def _token(self, tenant: str) -> str:
        with self._engine() as client:
            found = client.retrieve(
                self._registry, [_token_point_id(tenant)], with_payload=[_TOKEN]
            )
        return str((found[0].payload or {}).get(_TOKEN, "")) if found else ""

    def _change_token(self, tenant: str) -> None:
        """Tell searches of `tenant` that running now that a writer is about to
        change chunks (docs/qdrant.md)."""
        point = models.PointStruct(
            id=_token_point_id(tenant),
            vector={},
            payload={"kind": _TOKEN, "tenant": tenant, _TOKEN: uuid.uuid4().hex},
        )
        with self._engine() as client:
            client.upsert(self._registry, [point], wait=True)

    def _record(self, record_id: str) -> dict[str, Any] | None:
        with self._engine() as client:
            found = client.retrieve(self._registry, [record_id], with_payload=True)
        return dict(found[0].payload or {}) if found else None

    def _count(self, collection: str, count_filter: models.Filter | None) -> int:
        with self._engine() as client:
            return client.count(collection, count_filter=count_filter, exact=True).count

    def _delete(self, collection: str, selector: models.Filter) -> None:
        with self._engine() as client:
            client.delete(collection, models.FilterSelector(filter=selector), wait=True)

    def _scan(
        self, collection: str, scan_filter: models.Filter, *, with_payload: bool | list[str]
    ) -> Iterator[dict[str, Any]]:
        """Payloads of every point matching `scan_filter`, page by page."""

        def page(offset: Any) -> tuple[Sequence[Any], Any]:
            with self._engine() as client:
                return client.scroll(
                    collection,
                    scroll_filter=scan_filter,
                    limit=schema.SCROLL_BATCH,
                    offset=offset,
                    with_payload=with_payload,
                    with_vectors=False,
                )

        for record in schema.paged(page):
            yield dict(record.payload or {})

    def _check_chunk_ownership(self, tenant: str, document_id: str, chunk_ids: list[str]) -> None:
        """`schema.refuse_foreign_chunks`. Point ids include the tenant and
        version, so nothing would be overwritten here; the check keeps the
        backends' contracts equal."""
        own = models.Filter(must=_document_conditions(tenant, document_id))
        for start in range(0, len(chunk_ids), _ID_BATCH):
            batch = chunk_ids[start : start + _ID_BATCH]
            others = models.Filter(must=[_match_any("chunk_id", batch)], must_not=[own])
            with self._engine() as client:
                records, _ = client.scroll(
                    self._chunks,
                    scroll_filter=others,
                    limit=2 * len(batch),  # a chunk has two versions while it is replaced
                    with_payload=["tenant", "document_id", "chunk_id"],
                )
            owners = {str((r.payload or {}).get("chunk_id")): r.payload or {} for r in records}
            schema.refuse_foreign_chunks(batch, owners, tenant, document_id)

    # -- the document claim ---------------------------------------------------

    @contextmanager
    def _claim(self, tenant: str, document_id: str) -> Iterator[_Claim]:
        """Hold the document's claim for the block, then `_release` it; if the
        block fails, `_abandon` it instead (and raise the block's error)."""
        claim = self._acquire(tenant, document_id)
        try:
            yield claim
        except BaseException:
            try:
                self._abandon(claim)
            except Exception:
                log.exception(
                    "could not clean up after a failed write of document %r (tenant %r); it "
                    "stays pinned to its live version until the next writer takes it over",
                    document_id,
                    tenant,
                )
            raise
        self._release(claim)

    def _acquire(self, tenant: str, document_id: str) -> _Claim:
        record_id = _record_id(tenant, document_id)
        deadline = time.monotonic() + self._tuning.lock_wait_seconds
        pause = 0.005
        while True:
            current = self._record(record_id)
            now = time.time()
            free = current is None or not current.get("busy")
            expired = not free and float((current or {}).get("writer_since", 0.0)) < (
                now - self._tuning.claim_seconds
            )
            if free or expired:
                token = uuid.uuid4().hex
                base = current or {
                    "kind": _DOCUMENT,
                    "tenant": tenant,
                    "document_id": document_id,
                    "version": "",
                    "indexed": False,
                }
                payload = {
                    **base,
                    "busy": True,
                    "writer": token,
                    "writer_since": now,
                    "revision": uuid.uuid4().hex,
                }
                unchanged = _match("revision", str(current["revision"]) if current else _NEVER)
                with self._engine() as client:
                    client.upsert(
                        self._registry,
                        [models.PointStruct(id=record_id, vector={}, payload=payload)],
                        wait=True,
                        update_filter=models.Filter(must=[unchanged]),
                    )
                if (self._record(record_id) or {}).get("writer") == token:
                    if expired:
                        log.warning(
                            "took over the expired claim of document %r (tenant %r)",
                            document_id,
                            tenant,
                        )
                    return _Claim(record_id, token, tenant, document_id, record=current)
            if time.monotonic() >= deadline:
                raise FailedPreconditionError(
                    f"document '{document_id}' of tenant '{tenant}' is being changed by another "
                    f"writer (waited {self._tuning.lock_wait_seconds:g} s); retry later"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _flip(self, claim: _Claim, fields: Mapping[str, Any]) -> None:
        """Make `fields` (the new live version and record) visible in one point
        write, if this writer still holds the claim; on return `claim.record` is
        the new live state, so the release keeps only its chunks."""
        if time.monotonic() - claim.started > self._tuning.claim_seconds / 2:
            raise UnavailableError(
                f"writing document '{claim.document_id}' took longer than half its claim "
                f"({self._tuning.claim_seconds:g} s); nothing was changed, retry"
            )
        revision = uuid.uuid4().hex
        self._set_record(claim, {**fields, "revision": revision})
        current = self._record(claim.record_id) or {}
        if current.get("revision") != revision:
            raise FailedPreconditionError(
                f"document '{claim.document_id}' of tenant '{claim.tenant}' was taken over by "
                "another writer after this one's claim expired; nothing was changed"
            )
        claim.record = current

    def _release(self, claim: _Claim) -> None:
        """Delete the document's chunks of every version but the live one, then
        free the record, or delete it when no document is indexed under it."""
        stale = models.Filter(must=_document_conditions(claim.tenant, claim.document_id))
        if claim.live_version:
            stale.must_not = [_match("version", claim.live_version)]
        self._delete(self._chunks, stale)
        if claim.indexed:
            self._set_record(claim, {"busy": False, "writer": "", "revision": uuid.uuid4().hex})
        else:
            self._delete(self._registry, _held(claim))

    def _abandon(self, claim: _Claim) -> None:
        """Clean up after a failed write, from the record as it is now.

        A failure may come after the flip reached the server (its read-back
        failed), so the live version is read again rather than assumed. While
        the claim is held and young, `_release` restores "only the live version's
        chunks". Otherwise another writer may hold the document: delete only
        this writer's own chunks, and only if they are not live; whatever is
        left is the next writer's to clean, and searches pin the document meanwhile.
        """
        current = self._record(claim.record_id)
        held = current is not None and current.get("writer") == claim.token
        if held and time.monotonic() - claim.started < self._tuning.claim_seconds / 2:
            claim.record = current
            self._release(claim)
        elif claim.version and (current or {}).get("version") != claim.version:
            self._delete(
                self._chunks,
                models.Filter(
                    must=[
                        *_document_conditions(claim.tenant, claim.document_id),
                        _match("version", claim.version),
                    ]
                ),
            )

    def _set_record(self, claim: _Claim, fields: Mapping[str, Any]) -> None:
        """Update the record's `fields` only if this writer still holds it."""
        with self._engine() as client:
            client.set_payload(
                self._registry, dict(fields), models.FilterSelector(filter=_held(claim)), wait=True
            )


def server_client(url: str, *, api_key: str = "", timeout_seconds: float = 10.0) -> QdrantClient:
    """A client of the Qdrant server at `url`, its gRPC endpoint."""
    return QdrantClient(
        url=url,
        grpc_port=urlsplit(url).port or DEFAULT_GRPC_PORT,
        prefer_grpc=True,
        api_key=api_key or None,
        timeout=max(1, math.ceil(timeout_seconds)),
        check_compatibility=False,  # `open` checks the version itself, over gRPC
    )


class QdrantGenerationStores:
    """Generations of the index beyond the first on one Qdrant server: the
    collections of generation N are named after the first one's, "<name>_gN"."""

    def __init__(
        self, connect: Callable[[], QdrantClient], collection: str, tuning: QdrantTuning
    ) -> None:
        self._connect = connect
        self._collection = collection
        self._tuning = tuning

    def open(self, name: str, dimension: int) -> QdrantServerStore:
        client = self._connect()
        try:
            return QdrantServerStore.open(
                client, f"{self._collection}_{name}", dimension, tuning=self._tuning
            )
        except BaseException:
            client.close()
            raise

    def destroy(self, name: str, store: VectorStore) -> None:
        store.close()
        client = self._connect()
        try:
            for collection in (
                f"{self._collection}_{name}",
                f"{self._collection}_{name}{_REGISTRY_SUFFIX}",
            ):
                client.delete_collection(collection)
        finally:
            client.close()


def _held(claim: _Claim) -> models.Filter:
    """The claim's record, only while its writer holds it."""
    return models.Filter(
        must=[models.HasIdCondition(has_id=[claim.record_id]), _match("writer", claim.token)]
    )


def _pinned(spec: filters.AllOf, snapshot: _Snapshot) -> filters.AllOf:
    """`spec`, with each busy document restricted to its live version (none if "")."""
    pins: list[filters.Condition] = []
    for document_id, version, _ in sorted(snapshot.busy):
        document = filters.Match("document_id", document_id)
        if version:
            pins.append(filters.AllOf((document,), must_not=(filters.Match("version", version),)))
        else:
            pins.append(document)
    return filters.AllOf(spec.must, (*spec.must_not, *pins))


def _engine_filter(spec: filters.AllOf) -> models.Filter:
    """The qdrant-client filter of a neutral filter (`filters.py`)."""
    return models.Filter(
        must=[_condition(c) for c in spec.must],
        must_not=[_condition(c) for c in spec.must_not] or None,
    )


def _condition(condition: filters.Condition) -> models.Condition:
    match condition:
        case filters.Match(field, value):
            return _match(field, value)
        case filters.MatchAny(field, values):
            return _match_any(field, values)
        case filters.IsEmpty(field):
            return models.IsEmptyCondition(is_empty=models.PayloadField(key=field))
        case filters.Range(field, gte, lte):
            return models.FieldCondition(key=field, range=models.Range(gte=gte, lte=lte))
        case filters.AnyOf(conditions):
            return models.Filter(should=[_condition(c) for c in conditions])
        case filters.AllOf():
            return _engine_filter(condition)


def _document_conditions(tenant: str, document_id: str) -> list[models.Condition]:
    """The chunks (or the record) of one tenant's document."""
    return [_condition(c) for c in filters.of_document(tenant, document_id).must]


def _match(key: str, value: str | int | bool) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _match_any(key: str, values: Sequence[str]) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))


def _sparse(terms: SparseVector) -> models.SparseVector:
    """The client's form of a BM25 vector."""
    return models.SparseVector(indices=list(terms.indices), values=list(terms.values))


def _candidate(point: models.ScoredPoint) -> Candidate:
    """A scored point as `ranking.hits` takes it, named by its chunk id (point
    ids are per version)."""
    payload = point.payload or {}
    vector = point.vector
    dense = vector.get(schema.DENSE) if isinstance(vector, dict) else None
    return Candidate(str(payload.get("chunk_id")), point.score, payload, dense)  # type: ignore[arg-type]


def _chunk_point_id(tenant: str, chunk_id: str, version: str) -> str:
    """Two versions of a chunk coexist while a replacement is under way."""
    return schema.scoped_id(_CHUNK_NAMESPACE, tenant, chunk_id, version)


def _record_id(tenant: str, document_id: str) -> str:
    return schema.scoped_id(_RECORD_NAMESPACE, tenant, document_id)


def _token_point_id(tenant: str) -> str:
    return schema.scoped_id(_TOKEN_NAMESPACE, tenant)


def _parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of a version string such as "1.16.3" or "v1.16.0-dev"."""
    parts = text.lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _rpc_error(exc: grpc.RpcError) -> PlatformError | None:
    """The platform error for a failed gRPC call to Qdrant; None: raise it as it is."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code is grpc.StatusCode.UNAVAILABLE:
        return UnavailableError(f"Qdrant is unavailable: {details}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineError(f"Qdrant did not answer in time: {details}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimitedError(f"Qdrant refused for load: {details}")
    return None
