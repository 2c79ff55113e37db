"""RetrievalService: converts protobuf to store calls; the store does the work.

The store is synchronous (the embedded engine is native code); calls run in a
worker thread so the event loop keeps serving other RPCs meanwhile.

Every call names its tenant (a search, its whole `Caller`); the store rejects
a missing one with INVALID_ARGUMENT, so no request ever reads across tenants.

Writes name the embedding model of their vectors, which the store records on
its first write and holds every later write and search to.

Each search records its best score and how many chunks it returned: a falling
top score or empty results tell retrieval (or ingestion) is why answers decline.
"""

import asyncio
from typing import Any

from grpc import aio
from prometheus_client import Histogram

from ragplatform.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.common.errors import InvalidInputError, NotFoundError
from services.common.search import search_filter_from_proto
from services.common.tenancy import validate_caller, validate_tenant
from services.retrieval.store import (
    Caller,
    DocumentRecord,
    RetrievalMode,
    SearchOptions,
    StoredChunk,
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
        store: VectorStore,
        default_mode: RetrievalMode = RetrievalMode.DENSE,
    ) -> None:
        self._store = store
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
        await asyncio.to_thread(self._store.claim_embedder, request.embedding_model)
        upserted, deleted = await asyncio.to_thread(
            self._store.replace_document, document, chunks, vectors
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
        if vector and request.embedding_model:
            await asyncio.to_thread(self._store.check_embedder, request.embedding_model)
        hits = await asyncio.to_thread(
            self._store.search,
            _caller(request.caller),
            vector,
            request.top_k,
            search_filter_from_proto(request.filter),
            options,
        )
        RESULTS.observe(len(hits))
        if hits and vector:  # with a vector, scores are cosines in any mode
            TOP_SCORE.observe(max(hit.score for hit in hits))
        return retrieval_pb2.SearchResponse(results=[_scored(h.chunk, h.score) for h in hits])

    async def GetDocument(
        self, request: retrieval_pb2.GetDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetDocumentResponse:
        record = await asyncio.to_thread(
            self._store.get_document, request.tenant, request.document_id
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
            self._store.lookup_documents, _caller(request.caller), ids
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
        records = await asyncio.to_thread(
            self._store.list_documents, tenant, page_size + 1, request.page_token, visible_to
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
            self._store.remove_document, request.tenant, request.document_id
        )
        return retrieval_pb2.RemoveDocumentResponse(chunks_deleted=deleted)

    async def GetStats(
        self, request: retrieval_pb2.GetStatsRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetStatsResponse:
        stats = await asyncio.to_thread(self._store.stats)
        return to_proto(stats, retrieval_pb2.GetStatsResponse)
