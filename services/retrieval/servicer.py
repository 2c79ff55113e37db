"""RetrievalService: converts protobuf to store calls; the store does the work.

The store is synchronous (the embedded engine is native code); calls run in a
worker thread so the event loop keeps serving other RPCs meanwhile.

Every call names its tenant (a search, its whole `Caller`); the store rejects
a missing one with INVALID_ARGUMENT, so no request ever reads across tenants.

Writes name the embedding model of their vectors, which the store records on
its first write and holds every later write and search to; the model also
picks the generation of the index a call goes to (`generations.py`).

Each search records its best score and how many chunks it returned: a falling
top score or empty results tell retrieval (or ingestion) is why answers decline.
"""

import asyncio
from typing import Any

from grpc import aio
from prometheus_client import Histogram

from ragplatform.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.common.errors import InvalidInputError, NotFoundError, UnavailableError
from services.common.search import search_filter_from_proto
from services.common.tenancy import validate_caller, validate_tenant
from services.retrieval.generations import Generation, IndexGenerations
from services.retrieval.store import (
    Caller,
    DocumentRecord,
    RetrievalMode,
    SearchOptions,
    StoredChunk,
    StoreStats,
    VectorStore,
)
from services.runtime.convert import from_proto, to_proto

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

TOP_SCORE = Histogram(
    "rag_retrieval_top_score",
    "Similarity score of the best chunk of each search that found any.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
RESULTS = Histogram(
    "rag_retrieval_results",
    "Chunks returned per search (fewer than top_k when filters or a small index limit it).",
    buckets=(0, 1, 2, 3, 5, 10, 20, 50, 100),
)


_MODES = {
    common_pb2.RETRIEVAL_MODE_DENSE: RetrievalMode.DENSE,
    common_pb2.RETRIEVAL_MODE_KEYWORD: RetrievalMode.KEYWORD,
    common_pb2.RETRIEVAL_MODE_HYBRID: RetrievalMode.HYBRID,
}


def _scored(hit_chunk: StoredChunk, score: float) -> common_pb2.ScoredChunk:
    return common_pb2.ScoredChunk(chunk=to_proto(hit_chunk, common_pb2.Chunk), score=score)


def _lister(request: retrieval_pb2.ListDocumentsRequest) -> tuple[str, tuple[str, ...] | None]:
    """(tenant, access labels or None for every document) of a listing."""
    if not request.HasField("caller"):
        return validate_tenant(request.tenant), None
    caller = validate_caller(_caller(request.caller))
    if request.tenant and request.tenant != caller.tenant:
        raise InvalidInputError(
            f"tenant {request.tenant!r} and caller.tenant {caller.tenant!r} differ"
        )
    return caller.tenant, caller.access_labels


def _caller(caller: common_pb2.Caller) -> Caller:
    return Caller(tenant=caller.tenant, access_labels=tuple(caller.access_labels))


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    """gRPC edge of the retrieval service."""

    def __init__(
        self,
        generations: IndexGenerations,
        default_mode: RetrievalMode = RetrievalMode.DENSE,
    ) -> None:
        self._generations = generations
        self._default_mode = default_mode

    def _mode(self, mode: common_pb2.RetrievalMode.ValueType) -> RetrievalMode:
        if mode == common_pb2.RETRIEVAL_MODE_UNSPECIFIED:
            return self._default_mode
        if mode not in _MODES:
            raise InvalidInputError(f"mode {mode} is not a known RetrievalMode")
        return _MODES[mode]

    async def ReplaceDocument(
        self, request: retrieval_pb2.ReplaceDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.ReplaceDocumentResponse:
        document = from_proto(request.document, DocumentRecord)
        chunks = [from_proto(item.chunk, StoredChunk) for item in request.chunks]
        vectors = [list(item.vector.values) for item in request.chunks]
        upserted, deleted = await asyncio.to_thread(
            self._replace, request.embedding_model, document, chunks, vectors
        )
        return retrieval_pb2.ReplaceDocumentResponse(
            chunks_upserted=upserted, chunks_deleted=deleted
        )

    async def Search(
        self, request: retrieval_pb2.SearchRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.SearchResponse:
        options = SearchOptions(
            mode=self._mode(request.mode),
            text=request.query_text,
            mmr_lambda=request.mmr_lambda,
        )
        vector = list(request.vector.values)
        model = request.embedding_model if vector else ""
        store, live_model = await asyncio.to_thread(self._generations.for_search, model)
        if model:
            await asyncio.to_thread(store.check_embedder, model)
        hits = await asyncio.to_thread(
            store.search,
            _caller(request.caller),
            vector,
            request.top_k,
            search_filter_from_proto(request.filter),
            options,
        )
        RESULTS.observe(len(hits))
        if hits and vector:  # with a vector, scores are cosines in any mode
            TOP_SCORE.observe(max(hit.score for hit in hits))
        return retrieval_pb2.SearchResponse(
            results=[_scored(h.chunk, h.score) for h in hits], live_embedding_model=live_model
        )

    async def GetDocument(
        self, request: retrieval_pb2.GetDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetDocumentResponse:
        record = await asyncio.to_thread(
            self._generations.live().get_document, request.tenant, request.document_id
        )
        if record is None:
            raise NotFoundError(
                f"document {request.document_id!r} not found in tenant {request.tenant!r}"
            )
        return retrieval_pb2.GetDocumentResponse(document=to_proto(record, common_pb2.DocumentInfo))

    async def LookupDocuments(
        self, request: retrieval_pb2.LookupDocumentsRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.LookupDocumentsResponse:
        ids = list(request.document_ids)
        records = await asyncio.to_thread(
            self._generations.live().lookup_documents, _caller(request.caller), ids
        )
        found = {record.document_id for record in records}
        return retrieval_pb2.LookupDocumentsResponse(
            found=[to_proto(r, common_pb2.DocumentInfo) for r in records],
            missing=[d for d in dict.fromkeys(ids) if d not in found],
        )

    async def ListDocuments(
        self, request: retrieval_pb2.ListDocumentsRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.ListDocumentsResponse:
        tenant, visible_to = _lister(request)
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if page_size > MAX_PAGE_SIZE:
            raise InvalidInputError(f"page_size {page_size} is over the limit {MAX_PAGE_SIZE}")
        # One extra record tells whether another page follows.
        store = await asyncio.to_thread(self._generations.named, request.generation)
        records = await asyncio.to_thread(
            store.list_documents, tenant, page_size + 1, request.page_token, visible_to
        )
        page = records[:page_size]
        next_token = page[-1].document_id if len(records) > page_size else ""
        return retrieval_pb2.ListDocumentsResponse(
            documents=[to_proto(r, common_pb2.DocumentInfo) for r in page],
            next_page_token=next_token,
        )

    async def RemoveDocument(
        self, request: retrieval_pb2.RemoveDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.RemoveDocumentResponse:
        deleted = await asyncio.to_thread(
            self._generations.remove, request.tenant, request.document_id, request.generation
        )
        return retrieval_pb2.RemoveDocumentResponse(chunks_deleted=deleted)

    async def GetStats(
        self, request: retrieval_pb2.GetStatsRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetStatsResponse:
        stats = await asyncio.to_thread(lambda: self._generations.live().stats())
        return to_proto(stats, retrieval_pb2.GetStatsResponse)

    def _replace(
        self,
        model: str,
        document: DocumentRecord,
        chunks: list[StoredChunk],
        vectors: list[list[float]],
    ) -> tuple[int, int]:
        store = self._generations.for_write(model)
        store.claim_embedder(model)
        return store.replace_document(document, chunks, vectors)


def _generation(row: Generation, stats: StoreStats | None = None) -> retrieval_pb2.Generation:
    return retrieval_pb2.Generation(
        name=row.name,
        embedding_model=row.embedding_model,
        dimension=row.dimension,
        state=row.state.value,
        created_at_unix=row.created_at_unix,
        promoted_at_unix=row.promoted_at_unix,
        document_count=stats.document_count if stats else 0,
        chunk_count=stats.chunk_count if stats else 0,
    )


def _consistent_chunks(
    store: VectorStore, tenant: str, document_id: str, attempts: int = 3
) -> tuple[DocumentRecord, list[StoredChunk]]:
    """A document's record and chunks of one version: read again when a
    replacement landed between the reads."""
    for _ in range(attempts):
        before = store.get_document(tenant, document_id)
        if before is None:
            break
        chunks = store.document_chunks(tenant, document_id)
        if store.get_document(tenant, document_id) == before:
            return before, chunks
    else:
        raise UnavailableError(
            f"document {document_id!r} of tenant {tenant!r} was replaced during every read; retry"
        )
    raise NotFoundError(f"document {document_id!r} not found in tenant {tenant!r}")


class IndexGenerationServicer(retrieval_pb2_grpc.IndexGenerationServiceServicer):
    """gRPC edge of the generation table (`generations.py`): what `ragctl reindex` drives."""

    def __init__(self, generations: IndexGenerations) -> None:
        self._generations = generations

    async def ListGenerations(
        self, request: retrieval_pb2.ListGenerationsRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.ListGenerationsResponse:
        rows = await asyncio.to_thread(self._generations.generations)
        return retrieval_pb2.ListGenerationsResponse(
            generations=[_generation(row, stats) for row, stats in rows]
        )

    async def CreateGeneration(
        self, request: retrieval_pb2.CreateGenerationRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.CreateGenerationResponse:
        row = await asyncio.to_thread(
            self._generations.create, request.embedding_model, request.dimension
        )
        return retrieval_pb2.CreateGenerationResponse(generation=_generation(row))

    async def PromoteGeneration(
        self,
        request: retrieval_pb2.PromoteGenerationRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> retrieval_pb2.PromoteGenerationResponse:
        row = await asyncio.to_thread(self._generations.promote, request.name)
        return retrieval_pb2.PromoteGenerationResponse(generation=_generation(row))

    async def DropGeneration(
        self, request: retrieval_pb2.DropGenerationRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.DropGenerationResponse:
        await asyncio.to_thread(self._generations.drop, request.name)
        return retrieval_pb2.DropGenerationResponse()

    async def ListTenants(
        self, request: retrieval_pb2.ListTenantsRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.ListTenantsResponse:
        store = await asyncio.to_thread(self._generations.named, request.generation)
        tenants = await asyncio.to_thread(store.tenants)
        return retrieval_pb2.ListTenantsResponse(tenants=tenants)

    async def GetDocumentChunks(
        self,
        request: retrieval_pb2.GetDocumentChunksRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> retrieval_pb2.GetDocumentChunksResponse:
        store = await asyncio.to_thread(self._generations.named, request.generation)
        record, chunks = await asyncio.to_thread(
            _consistent_chunks, store, request.tenant, request.document_id
        )
        return retrieval_pb2.GetDocumentChunksResponse(
            document=to_proto(record, common_pb2.DocumentInfo),
            chunks=[to_proto(chunk, common_pb2.Chunk) for chunk in chunks],
        )
