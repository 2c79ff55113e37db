"""RetrievalService: converts protobuf to store calls; the store does the work.

The store is synchronous (the embedded engine is native code); calls run in a
worker thread so the event loop keeps serving other RPCs meanwhile.

Every call names its tenant (a search, its whole `Caller`); the store rejects
a missing one with INVALID_ARGUMENT, so no request ever reads across tenants.

Writes and leased lookups go through a LeaseTable (see leases.py): a lookup
may promise the answer cache that documents stay unchanged, for a moment or for
as long as its lease session (WatchLeases) lives, and a write to such a document
waits for the promise to run out or to be given back. A store shared by several
replicas (Qdrant server) keeps timed leases in its own data instead
(`LeasingStore`), so that they hold whichever replica writes.

Each search records its best score and how many chunks it returned: a falling
top score or empty results tell retrieval (or ingestion) is why answers decline.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import suppress
from typing import Any, NoReturn

from grpc import aio
from prometheus_client import Histogram

from ragplatform.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.common.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from services.common.search import search_filter_from_proto
from services.common.tenancy import validate_caller, validate_tenant
from services.retrieval.leases import (
    LEASES_GRANTED,
    Grant,
    LeaseSession,
    LeaseTable,
    Renewed,
    SessionEvent,
)
from services.retrieval.store import (
    Caller,
    DocumentRecord,
    KeywordLeg,
    LeasingStore,
    RetrievalMode,
    SearchFilter,
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


def _settle(task: "asyncio.Task[Any]") -> None:
    """Cancel `task` if it still runs, else mark its error as seen: the error the
    caller gets is the stream's own."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


REFUSAL_DRAIN_MESSAGES = 3
REFUSAL_DRAIN_SECONDS = 1.0


async def _refuse_after_the_stream(steps: AsyncIterator[Any], error: Exception) -> NoReturn:
    """Raise `error` once the client has finished writing (its half-close, or at
    most REFUSAL_DRAIN_MESSAGES more messages or REFUSAL_DRAIN_SECONDS): a client
    write that crosses the refusal fails in grpc.aio with INTERNAL, which would
    replace the status that names the problem."""
    with suppress(Exception):
        async with asyncio.timeout(REFUSAL_DRAIN_SECONDS):
            for _ in range(REFUSAL_DRAIN_MESSAGES):
                if await anext(steps, None) is None:
                    break
    raise error


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


async def _follow_holder(
    steps: AsyncIterator[retrieval_pb2.WatchLeasesRequest], session: LeaseSession
) -> None:
    """Renewals, acknowledgements and the release from the holder. Only a
    release ends the session at once: a stream that ends without one may have
    been cut (grpc ends a cancelled call's requests as if they were done), and
    its holder may still trust its leases."""
    try:
        async for step in steps:
            kind = step.WhichOneof("kind")
            if kind == "keep_alive":
                await session.keep_alive(step.keep_alive)
            elif kind == "revoked":
                if not await session.acknowledge(step.revoked):
                    raise InvalidInputError(f"revoked: no revocation {step.revoked} is pending")
            elif kind == "release" and step.release:
                session.close()
                return
            else:
                raise InvalidInputError("a WatchLeases message sets keep_alive, revoked or release")
    finally:
        session.disconnect()


def _event_message(event: SessionEvent) -> retrieval_pb2.WatchLeasesResponse:
    if isinstance(event, Renewed):
        return retrieval_pb2.WatchLeasesResponse(renewed=event.sequence)
    return retrieval_pb2.WatchLeasesResponse(
        revoke=retrieval_pb2.LeaseRevocation(
            revocation_id=event.revocation_id,
            tenant=event.tenant,
            document_ids=[event.document_id],
        )
    )


def _caller(caller: common_pb2.Caller) -> Caller:
    return Caller(tenant=caller.tenant, access_labels=tuple(caller.access_labels))


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    """gRPC edge of the retrieval service."""

    def __init__(
        self,
        store: VectorStore,
        default_mode: RetrievalMode = RetrievalMode.DENSE,
        leases: LeaseTable | None = None,
        store_lease_seconds: float = 0.0,
    ) -> None:
        self._store = store
        self._default_mode = default_mode
        self._leases = leases or LeaseTable(0.0)
        self._store_lease_seconds = store_lease_seconds if isinstance(store, LeasingStore) else 0.0
        """Timed read leases a store shared between replicas keeps itself."""

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
        if not document.document_id:
            raise InvalidInputError("document.document_id is empty")
        chunks = [from_proto(item.chunk, StoredChunk) for item in request.chunks]
        vectors = [list(item.vector.values) for item in request.chunks]
        validate_tenant(document.tenant)
        async with self._leases.writing(document.tenant, document.document_id):
            upserted, deleted = await asyncio.to_thread(
                self._store.replace_document, document, chunks, vectors
            )
        return retrieval_pb2.ReplaceDocumentResponse(
            chunks_upserted=upserted, chunks_deleted=deleted
        )

    def _search_of(
        self, request: retrieval_pb2.SearchRequest
    ) -> tuple[Caller, SearchFilter, SearchOptions]:
        options = SearchOptions(
            mode=self._mode(request.mode),
            text=request.query_text,
            mmr_lambda=request.mmr_lambda,
        )
        return _caller(request.caller), search_filter_from_proto(request.filter), options

    async def _search(
        self,
        request: retrieval_pb2.SearchRequest,
        vector: list[float],
        keyword_leg: KeywordLeg | None = None,
    ) -> retrieval_pb2.SearchResponse:
        caller, search_filter, options = self._search_of(request)
        hits = await asyncio.to_thread(
            self._store.search,
            caller,
            vector,
            request.top_k,
            search_filter,
            options,
            keyword_leg,
        )
        RESULTS.observe(len(hits))
        if hits and vector:  # with a vector, scores are cosines in any mode
            TOP_SCORE.observe(max(hit.score for hit in hits))
        return retrieval_pb2.SearchResponse(results=[_scored(h.chunk, h.score) for h in hits])

    async def Search(
        self, request: retrieval_pb2.SearchRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.SearchResponse:
        return await self._search(request, list(request.vector.values))

    async def SearchAhead(
        self,
        request_iterator: AsyncIterator[retrieval_pb2.SearchAheadRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> retrieval_pb2.SearchAheadResponse:
        """The keyword leg runs (in a worker thread) while the vector is awaited;
        the search starts on the vector, while the stream's end is awaited.
        A refusal waits for the rest of the stream (`_refuse_after_the_stream`)."""
        steps = aiter(request_iterator)
        try:
            return await self._search_ahead(steps)
        except InvalidInputError as error:
            await _refuse_after_the_stream(steps, error)

    async def _search_ahead(
        self, steps: AsyncIterator[retrieval_pb2.SearchAheadRequest]
    ) -> retrieval_pb2.SearchAheadResponse:
        first = await anext(steps, None)
        if first is None or not first.HasField("search"):
            raise InvalidInputError("a SearchAhead stream must begin with its search")
        request = first.search
        if request.vector.values:
            raise InvalidInputError(
                "search.vector must be empty in SearchAhead: the vector is the second message"
            )
        caller, search_filter, options = self._search_of(request)
        leg = asyncio.create_task(
            asyncio.to_thread(
                self._store.keyword_leg, caller, request.top_k, search_filter, options
            )
        )
        try:
            second = await anext(steps, None)
            if second is None or not second.HasField("vector"):
                raise InvalidInputError("the second message of a SearchAhead stream is the vector")
            keyword_leg = await leg
        finally:
            _settle(leg)
        search = asyncio.create_task(self._search(request, list(second.vector.values), keyword_leg))
        try:
            if await anext(steps, None) is not None:
                raise InvalidInputError("a SearchAhead stream ends after its vector")
            found = await search
        finally:
            _settle(search)
        return retrieval_pb2.SearchAheadResponse(results=found.results)

    async def GetDocument(
        self, request: retrieval_pb2.GetDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetDocumentResponse:
        validate_tenant(request.tenant)
        if not request.document_id:
            raise InvalidInputError("document_id is empty")
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
        caller = _caller(request.caller)
        ids = list(request.document_ids)

        def read() -> Awaitable[list[DocumentRecord]]:
            return asyncio.to_thread(self._store.lookup_documents, caller, ids)

        if request.lease and self._store_lease_seconds > 0:
            assert isinstance(self._store, LeasingStore)
            records, seconds = await asyncio.to_thread(
                self._store.lookup_and_lease, caller, ids, self._store_lease_seconds
            )
            LEASES_GRANTED.labels("granted" if seconds > 0 else "refused").inc()
            grant = Grant(seconds=seconds)
        elif request.lease:
            validate_tenant(caller.tenant)
            records, grant = await self._leases.leased_read(
                caller.tenant,
                read,
                lambda found: [r.document_id for r in found],
                request.lease_session,
            )
        else:
            records, grant = await read(), Grant()
        found = {record.document_id for record in records}
        return retrieval_pb2.LookupDocumentsResponse(
            found=[to_proto(r, common_pb2.DocumentInfo) for r in records],
            missing=[d for d in dict.fromkeys(ids) if d not in found],
            lease_seconds=grant.seconds,
            session_lease=grant.session,
        )

    async def WatchLeases(
        self,
        request_iterator: AsyncIterator[retrieval_pb2.WatchLeasesRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[retrieval_pb2.WatchLeasesResponse]:
        """One lease session per stream: the holder's messages are followed in a
        task, the session's events are sent from here until it ends.

        The opening keep-alive is read before anything is refused: a holder's
        write that crosses the refusal fails in grpc with INTERNAL, which would
        hide the status (FAILED_PRECONDITION tells the holder to stop asking)."""
        steps = aiter(request_iterator)
        first = await anext(steps, None)
        if first is None or first.WhichOneof("kind") != "keep_alive":
            raise InvalidInputError("a WatchLeases stream begins with a keep_alive")
        if not self._leases.sessions_enabled:
            raise FailedPreconditionError(
                "this retrieval service grants no lease sessions (backend qdrant, or "
                "RAG_RETRIEVAL_LEASE_SESSION_SECONDS=0)"
            )
        session = await self._leases.open_session()
        holder = asyncio.create_task(_follow_holder(steps, session))
        try:
            yield retrieval_pb2.WatchLeasesResponse(
                session=retrieval_pb2.LeaseSession(
                    session_id=session.session_id, session_seconds=session.seconds
                )
            )
            async for event in session.events():
                yield _event_message(event)
            error = holder.exception() if holder.done() and not holder.cancelled() else None
            if error is not None:
                raise error
        finally:
            _settle(holder)
            if not session.ended:
                session.disconnect()

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
        validate_tenant(request.tenant)
        if not request.document_id:
            raise InvalidInputError("document_id is empty")
        async with self._leases.writing(request.tenant, request.document_id):
            deleted = await asyncio.to_thread(
                self._store.remove_document, request.tenant, request.document_id
            )
        return retrieval_pb2.RemoveDocumentResponse(chunks_deleted=deleted)

    async def GetStats(
        self, request: retrieval_pb2.GetStatsRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetStatsResponse:
        stats = await asyncio.to_thread(self._store.stats)
        return to_proto(stats, retrieval_pb2.GetStatsResponse)
