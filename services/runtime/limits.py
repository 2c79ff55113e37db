"""A cap on the calls one service process runs at once.

Past the cap a call is refused at once with RESOURCE_EXHAUSTED, which the
caller retries (on another replica behind the Service), instead of queueing
without bound behind calls the process cannot finish in time. Health checks
and reflection are never refused: gRPC's own `maximum_concurrent_rpcs` counts
them too, and a saturated process whose liveness probe is refused would be
restarted by Kubernetes, turning overload into an outage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from prometheus_client import Counter

from services.runtime.handlers import around_calls

REFUSED = Counter(
    "rag_rpc_refused_total",
    "Calls refused with RESOURCE_EXHAUSTED because the process ran RAG_MAX_CONCURRENT_RPCS "
    "calls already, by method.",
    ["method"],
)
_EXEMPT = ("/grpc.health.", "/grpc.reflection.")


class ConcurrencyLimitInterceptor(aio.ServerInterceptor):
    """Refuses calls beyond `limit` in flight (streams count until they end)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_flight = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_EXEMPT):
            return handler

        async def enter(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await self._enter(method, context)
            return request

        def leave() -> None:
            self._in_flight -= 1

        return around_calls(handler, enter, leave)

    async def _enter(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        """Take a slot, or abort the call with RESOURCE_EXHAUSTED."""
        if self._in_flight >= self._limit:
            REFUSED.labels(method.rsplit("/", 1)[-1]).inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this replica is running {self._limit} calls already "
                "(RAG_MAX_CONCURRENT_RPCS); retry, another replica may have room",
            )
        self._in_flight += 1
