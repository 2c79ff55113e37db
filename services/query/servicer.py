"""QueryService: the gRPC edge of the question-answering pipeline."""

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from ragplatform.v1 import query_pb2, query_pb2_grpc
from services.query.pipeline import QueryPipeline


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """Delegates to QueryPipeline; errors map to status codes in the runtime."""

    def __init__(self, pipeline: QueryPipeline) -> None:
        self._pipeline = pipeline

    async def Ask(
        self, request: query_pb2.AskRequest, context: aio.ServicerContext[Any, Any]
    ) -> query_pb2.AskResponse:
        return await self._pipeline.ask(request)

    async def AskStream(
        self, request: query_pb2.AskStreamRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[query_pb2.AskStreamResponse]:
        async for event in self._pipeline.ask_stream(request):
            yield event
