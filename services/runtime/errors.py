"""Mapping between domain errors and gRPC status codes, in both directions.

Servers: an interceptor turns any PlatformError raised by domain code into the
matching status with its message, and any other exception into INTERNAL with a
logged traceback. Clients: `downstream` turns a failed call into a PlatformError
that names the service, so errors crossing two hops still say who failed.
"""

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc import aio

from services.common.errors import PlatformError
from services.runtime.handlers import wrap_handler

log = logging.getLogger(__name__)


class DownstreamError(PlatformError):
    """A call to another service failed; keeps that service's status code."""

    def __init__(self, message: str, code_name: str) -> None:
        super().__init__(message)
        self.code_name = code_name


def status_code_of(error: PlatformError) -> grpc.StatusCode:
    """The gRPC status code for a domain error."""
    return getattr(grpc.StatusCode, error.code_name, grpc.StatusCode.INTERNAL)


@contextlib.contextmanager
def downstream(service: str, address: str) -> Iterator[None]:
    """Re-raise a failed gRPC call as a DownstreamError naming `service`.

    Codes the caller caused (INVALID_ARGUMENT, NOT_FOUND, ...) pass through with the
    downstream message; transport failures say which service at which address.
    """
    try:
        yield
    except aio.AioRpcError as err:
        code = err.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            message = f"{service} service at {address}: {code.name.lower()}: {err.details()}"
        else:
            message = err.details() or f"{service} service failed with {code.name}"
        raise DownstreamError(message, code.name) from err


async def _abort(context: aio.ServicerContext[Any, Any], error: BaseException) -> None:
    if isinstance(error, PlatformError):
        await context.abort(status_code_of(error), str(error))
    log.exception("unhandled error", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error)

    return wrapped


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error)

    return wrapped


class ErrorMappingInterceptor(aio.ServerInterceptor):
    """Applies the domain-error → status mapping to every method of every service."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return wrap_handler(handler, _wrap_unary, _wrap_stream)
