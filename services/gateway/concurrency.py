"""A cap on the HTTP requests one gateway process serves at once.

Past the cap a request is answered at once with 503, `Retry-After: 1` and the
JSON error shape, which the client (or the load balancer) retries, perhaps on
another replica, instead of queueing without bound behind requests this
process cannot finish in time. The gRPC services have the same cap
(services/runtime/limits.py, RAG_MAX_CONCURRENT_RPCS). Health probes are never
refused: a saturated gateway whose liveness probe failed would be restarted,
turning overload into an outage.
"""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.errors import error_response
from services.gateway.ratelimit import ROUTE_CLASSES, route_class_of

REFUSED = Counter(
    "rag_http_refused_total",
    "HTTP requests refused with 503 because the gateway process served "
    "RAG_GATEWAY_MAX_CONCURRENT_REQUESTS already, by route class (ask, upload, write, other).",
    ["route_class"],
)
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
RETRY_AFTER_SECONDS = 1
"""A slot frees as soon as any request ends, so a short wait is enough."""


class ConcurrencyCapMiddleware:
    """Refuses HTTP requests beyond `limit` in flight (a streamed answer counts
    until its last byte)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self._limit = limit
        self._in_flight = 0
        for route_class in (*ROUTE_CLASSES, "other"):
            REFUSED.labels(route_class)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self._in_flight >= self._limit:
            REFUSED.labels(route_class_of(scope["method"], scope["path"]) or "other").inc()
            response = error_response(
                503,
                "UNAVAILABLE",
                f"this gateway replica is serving {self._limit} requests already "
                "(RAG_GATEWAY_MAX_CONCURRENT_REQUESTS); retry, another replica may have room",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            await response(scope, receive, send)
            return
        self._in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight -= 1
