"""QueryService: the gRPC edge of the question-answering pipeline.

Besides delegating to QueryPipeline it observes each answer: the per-stage
timings the pipeline measured go to `rag_stage_duration_seconds`, and, when a
RequestLog is given, each request (with its debug view, computed even when the
caller did not ask for it and then stripped from the reply) is recorded for
RequestDebugService.
"""

import time
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio
from prometheus_client import Histogram

from ragplatform.v1 import debug_pb2, query_pb2, query_pb2_grpc
from services.common.errors import PlatformError
from services.query.debug import RequestLog
from services.query.pipeline import QueryPipeline
from services.runtime.metrics import LATENCY_BUCKETS
from services.runtime.telemetry import current_ids

STAGE_DURATION = Histogram(
    "rag_stage_duration_seconds",
    "Time spent in each stage of answering a question (cache, embed, retrieve, "
    "semantic_cache, generate, verify, and total).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)


def _observe_stages(response: query_pb2.AskResponse) -> None:
    for timing in response.timings:
        STAGE_DURATION.labels(timing.stage).observe(timing.seconds)


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """Delegates to QueryPipeline; errors map to status codes in the runtime."""

    def __init__(self, pipeline: QueryPipeline, requests: RequestLog | None = None) -> None:
        self._pipeline = pipeline
        self._requests = requests

    def _record(
        self, request: query_pb2.AskRequest | query_pb2.AskStreamRequest
    ) -> debug_pb2.RequestRecord | None:
        if self._requests is None:
            return None
        ids = current_ids()
        record = debug_pb2.RequestRecord(
            trace_id=ids[0] if ids else "",
            received_at_unix_ms=int(time.time() * 1000),
            streamed=isinstance(request, query_pb2.AskStreamRequest),
        )
        record.request.ParseFromString(request.SerializeToString())  # same fields, same numbers
        return record

    def _answered(
        self, record: debug_pb2.RequestRecord | None, response: query_pb2.AskResponse, debug: bool
    ) -> None:
        """Observe and record `response`; leave it with a debug view only if asked for."""
        _observe_stages(response)
        if record is not None and self._requests is not None:
            record.request_id = response.request_id
            record.response.CopyFrom(response)
            self._requests.add(record)
        if not debug:
            response.ClearField("debug")

    def _failed(self, record: debug_pb2.RequestRecord | None, error: Exception) -> None:
        if record is None or self._requests is None:
            return
        code = error.code_name if isinstance(error, PlatformError) else "INTERNAL"
        record.error_code = code
        record.error_message = str(error)
        self._requests.add(record)

    def _with_debug(self, request: Any, record: debug_pb2.RequestRecord | None) -> Any:
        """The request to run: with the debug view on when a record will keep it.

        A caller's own debug request skips the answer cache's lookup (a cached
        answer has no retrieval or prompt to show); the debug view forced on for
        the record does not, or the log would disable the cache.
        """
        if record is None and not request.debug:
            return request
        internal = type(request)()
        internal.CopyFrom(request)
        if request.debug:
            internal.bypass_cache = True
        internal.debug = True
        return internal

    async def Ask(
        self, request: query_pb2.AskRequest, context: aio.ServicerContext[Any, Any]
    ) -> query_pb2.AskResponse:
        record = self._record(request)
        try:
            response = await self._pipeline.ask(self._with_debug(request, record))
        except Exception as error:
            self._failed(record, error)
            raise
        self._answered(record, response, request.debug)
        return response

    async def AskStream(
        self, request: query_pb2.AskStreamRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[query_pb2.AskStreamResponse]:
        record = self._record(request)
        try:
            async for event in self._pipeline.ask_stream(self._with_debug(request, record)):
                if event.HasField("final"):
                    self._answered(record, event.final, request.debug)
                yield event
        except Exception as error:
            self._failed(record, error)
            raise
