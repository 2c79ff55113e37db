"""Question routes: /v1/ask as JSON or Server-Sent Events, one QueryService call each."""

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from grpc import aio

from ragplatform.v1 import common_pb2, query_pb2
from services.gateway.auth import CallerDep
from services.gateway.errors import GatewayError, error_responses
from services.gateway.schemas import AskBody, AskResponse, from_proto
from services.runtime.clients import PlatformClients


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _sse_events(
    first: query_pb2.AskStreamResponse | None, rest: AsyncIterator[Any], call: Any
) -> AsyncIterator[bytes]:
    """AskStream events as Server-Sent Events; a failure after the response has
    started (status already sent) arrives as a final `event: error`."""
    try:
        if first is not None:
            yield _sse_event_of(first)
            async for message in rest:
                yield _sse_event_of(message)
    except aio.AioRpcError as err:
        failure = GatewayError.from_rpc(err)
        yield _sse("error", {"error": {"code": failure.code, "message": failure.message}})
    finally:
        call.cancel()  # the client went away or the stream ended: free the server's work


def _sse_event_of(message: query_pb2.AskStreamResponse) -> bytes:
    kind = message.WhichOneof("event")
    if kind == "final":
        return _sse("answer", from_proto(message.final, AskResponse).model_dump(mode="json"))
    if kind == "restart":
        return _sse("restart", {"reason": message.restart.reason})
    return _sse("delta", {"text": message.delta})


SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One event of the stream: its name and its data, one line of JSON (the "
    "schema of a `text/event-stream` describes each event, as OpenAPI 3.2's `itemSchema` "
    "does).",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["delta", "answer", "restart", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
"""What each Server-Sent Event of an answer looks like."""

_SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'Server-Sent Events: `event: delta` with `{"text": ...}` per piece of '
        "the answer, then `event: answer` with the AskResponse JSON (citations, usage, cost, "
        'route); `event: restart` with `{"reason": ...}` means: drop the text received so '
        "far, a new answer follows (a model failed mid-answer, or the answer was escalated); "
        "a failure after the stream began arrives as `event: error` with the error JSON.",
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
    }
}


def query_routes(clients: PlatformClients) -> APIRouter:
    """The question routes, answered by `clients.query`."""
    router = APIRouter(tags=["query"])

    async def stream_answer(body: AskBody, caller: common_pb2.Caller) -> StreamingResponse:
        request = query_pb2.AskStreamRequest(**body.request_fields(caller))
        call = clients.query.AskStream(request)
        events = call.__aiter__()
        # Wait for the first event so that an error before any output (bad
        # question, service down) still gets its proper HTTP status.
        try:
            first: query_pb2.AskStreamResponse | None = await events.__anext__()
        except StopAsyncIteration:
            first = None
        except aio.AioRpcError as err:
            call.cancel()
            raise GatewayError.from_rpc(err) from None
        return StreamingResponse(
            _sse_events(first, events, call),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post(
        "/ask",
        response_model=AskResponse,
        summary="Answer a question",
        responses={**error_responses(429), **_SSE_RESPONSE},
    )
    async def ask(
        body: AskBody,
        caller: CallerDep,
        stream: Annotated[
            bool, Query(description="Answer as Server-Sent Events (same as /v1/ask/stream).")
        ] = False,
    ) -> AskResponse | StreamingResponse:
        """QueryService.Ask: embed, retrieve, generate and verify citations, from the
        documents of the key's tenant that its access labels may see."""
        if stream:
            return await stream_answer(body, caller)
        request = query_pb2.AskRequest(**body.request_fields(caller))
        reply: query_pb2.AskResponse = await clients.query.Ask(request)
        return from_proto(reply, AskResponse)

    @router.post(
        "/ask/stream",
        response_class=StreamingResponse,
        summary="Answer a question as Server-Sent Events",
        responses={**error_responses(429), **_SSE_RESPONSE},
    )
    async def ask_stream(body: AskBody, caller: CallerDep) -> StreamingResponse:
        """QueryService.AskStream: answer deltas as they are written, then the answer."""
        return await stream_answer(body, caller)

    return router
