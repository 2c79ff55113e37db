"""Re-wrapping gRPC method handlers, shared by the server interceptors.

An aio server interceptor that needs to run code around each call has to build a
new handler of the same kind (unary or streaming response) with the same codec;
this does that once for all of them.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

UnaryBehavior = Callable[..., Awaitable[Any]]
StreamBehavior = Callable[..., AsyncIterator[Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    wrap_unary: Callable[[UnaryBehavior], UnaryBehavior],
    wrap_stream: Callable[[StreamBehavior], StreamBehavior],
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped: `wrap_unary` for calls answered by one
    message, `wrap_stream` for calls answered by a stream."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **codec)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **codec)
    return handler


def around_calls(
    handler: grpc.RpcMethodHandler,
    enter: Callable[[Any, Any], Awaitable[Any]],
    leave: Callable[[], None] | None = None,
) -> grpc.RpcMethodHandler:
    """`handler` with `enter(request, context)` awaited before each call (it may
    abort the call, and returns the request to serve) and `leave()` run when the
    call ends, a stream when it is exhausted; `leave` only after `enter` passed."""

    def unary(behavior: UnaryBehavior) -> UnaryBehavior:
        async def wrapped(request: Any, context: Any) -> Any:
            request = await enter(request, context)
            try:
                return await behavior(request, context)
            finally:
                if leave is not None:
                    leave()

        return wrapped

    def stream(behavior: StreamBehavior) -> StreamBehavior:
        async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
            request = await enter(request, context)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                if leave is not None:
                    leave()

        return wrapped

    return wrap_handler(handler, unary, stream)
