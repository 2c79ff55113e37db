"""Request debugging: the recent-request log and RequestDebugService.

When an answer is wrong, an engineer walks one checklist: what was asked, which
chunks came back with which scores, whether the expected document is indexed at
all and where its best chunk ranks, the exact prompt, model and parameters, the
citations and the grounding verdict. The query servicer writes one record per
request into a bounded in-memory log (a ring: oldest out first, and records
older than the TTL are never returned); this service reads it back by request
id or trace id, and ranks a document against a question.

The records hold questions, chunk text and prompts: debug data. They live only
in the query process's memory, are never logged, and the service is not exposed
by the REST gateway; set RAG_QUERY_DEBUG_RECORDS=0 to keep none. Each record
keeps its request whole, the caller (tenant, access labels) included, and
CheckDocument looks at the index as that caller would: a document of another
tenant, or one its labels hide, is "not indexed" for it.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpc import aio

from ragplatform.v1 import (
    common_pb2,
    debug_pb2,
    debug_pb2_grpc,
    retrieval_pb2,
)
from services.common.errors import InvalidInputError, NotFoundError
from services.common.tenancy import Caller, validate_caller
from services.runtime.clients import PlatformClients
from services.runtime.convert import from_proto
from services.runtime.errors import DownstreamError, downstream

DEFAULT_RANK_DEPTH = 100
MAX_RANK_DEPTH = 1000
"""Most chunks CheckDocument ranks; beyond that a rank says little anyway."""


@dataclass
class _Entry:
    record: debug_pb2.RequestRecord
    stored_at: float


class RequestLog:
    """The last `capacity` request records, each kept at most `ttl_seconds`,
    found by request id or trace id. Used from the event loop only."""

    def __init__(
        self, capacity: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: deque[_Entry] = deque()
        self._by_request: dict[str, _Entry] = {}
        self._by_trace: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, record: debug_pb2.RequestRecord) -> None:
        """Keep `record` (the caller must not change it afterwards)."""
        if not record.request_id and not record.trace_id:
            return  # nothing could ever find it
        now = self._clock()
        while self._entries and (
            len(self._entries) >= self._capacity or now - self._entries[0].stored_at > self._ttl
        ):
            self._forget(self._entries.popleft())
        entry = _Entry(record, now)
        self._entries.append(entry)
        if record.request_id:
            self._by_request[record.request_id] = entry
        if record.trace_id:
            self._by_trace[record.trace_id] = entry  # a trace's latest request

    def _forget(self, entry: _Entry) -> None:
        for index, key in (
            (self._by_request, entry.record.request_id),
            (self._by_trace, entry.record.trace_id),
        ):
            if index.get(key) is entry:
                del index[key]

    def find(self, request_id: str = "", trace_id: str = "") -> debug_pb2.RequestRecord | None:
        """The record with that request id (or else trace id), unless evicted or expired."""
        entry = self._by_request.get(request_id) if request_id else None
        if entry is None and trace_id:
            entry = self._by_trace.get(trace_id.lower())
        if entry is None or self._clock() - entry.stored_at > self._ttl:
            return None
        return entry.record


def _may_read(caller: Caller, record: debug_pb2.RequestRecord) -> bool:
    """Whether `caller` may read `record`: its tenant, and every label the
    request's caller held (the record holds what those labels could see)."""
    asked_for = record.request.caller
    return asked_for.tenant == caller.tenant and set(asked_for.access_labels) <= set(
        caller.access_labels
    )


class RequestDebugServicer(debug_pb2_grpc.RequestDebugServiceServicer):
    """gRPC edge of request debugging (served by the query process)."""

    def __init__(self, requests: RequestLog | None, clients: PlatformClients) -> None:
        self._requests = requests
        self._clients = clients

    async def GetRequestRecord(
        self, request: debug_pb2.GetRequestRecordRequest, context: aio.ServicerContext[Any, Any]
    ) -> debug_pb2.GetRequestRecordResponse:
        caller = validate_caller(from_proto(request.caller, Caller))
        key = request.WhichOneof("key")
        value = getattr(request, key) if key else ""
        if not value:
            raise InvalidInputError("give a request_id or a trace_id")
        if self._requests is None:
            raise NotFoundError(
                "this query service keeps no request records (RAG_QUERY_DEBUG_RECORDS=0)"
            )
        record = self._requests.find(request.request_id, request.trace_id)
        if record is None or not _may_read(caller, record):
            raise NotFoundError(
                f"no record of {key} {value!r}: not handled by this query instance, "
                "or evicted or expired (RAG_QUERY_DEBUG_RECORDS, RAG_QUERY_DEBUG_TTL_SECONDS)"
            )
        return debug_pb2.GetRequestRecordResponse(record=record)

    async def CheckDocument(
        self, request: debug_pb2.CheckDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> debug_pb2.CheckDocumentResponse:
        caller = request.caller
        validate_caller(from_proto(caller, Caller))
        question = request.question.strip()
        if not question:
            raise InvalidInputError("question is empty")
        if not request.document_id:
            raise InvalidInputError("document_id is empty")
        depth = min(request.depth or DEFAULT_RANK_DEPTH, MAX_RANK_DEPTH)
        settings = self._clients.settings
        not_indexed = debug_pb2.CheckDocumentResponse(indexed=False, depth=depth)
        try:
            with downstream("retrieval", settings.retrieval_addr):
                found = await self._clients.retrieval.GetDocument(
                    retrieval_pb2.GetDocumentRequest(
                        document_id=request.document_id, tenant=caller.tenant
                    )
                )
        except DownstreamError as error:
            if error.code_name != "NOT_FOUND":
                raise
            return not_indexed
        embedded = await self._clients.embedders.embed_question(question)
        vector = embedded.vectors[0]
        only_document = common_pb2.MetadataFilter(document_ids=[request.document_id])
        with downstream("retrieval", settings.retrieval_addr):
            best, ranked = await asyncio.gather(
                self._clients.retrieval.Search(
                    retrieval_pb2.SearchRequest(
                        vector=vector,
                        query_text=question,
                        top_k=1,
                        filter=only_document,
                        caller=caller,
                        embedding_model=embedded.model,
                        # Dense always finds a chunk the caller may see, whatever the
                        # words; a keyword default could miss one and mislead below.
                        mode=common_pb2.RETRIEVAL_MODE_DENSE,
                    )
                ),
                self._clients.retrieval.Search(
                    retrieval_pb2.SearchRequest(
                        vector=vector,
                        query_text=question,
                        top_k=depth,
                        caller=caller,
                        embedding_model=embedded.model,
                    )
                ),
            )
        if not best.results:
            # Every indexed document has a chunk, so none found means the caller's
            # access labels hide it: the engine's own rule decides, not a copy here.
            return not_indexed
        rank = next(
            (
                position
                for position, hit in enumerate(ranked.results, start=1)
                if hit.chunk.document_id == request.document_id
            ),
            0,
        )
        response = debug_pb2.CheckDocumentResponse(
            indexed=True, document=found.document, rank=rank, depth=depth
        )
        response.best_chunk.CopyFrom(best.results[0])
        return response
