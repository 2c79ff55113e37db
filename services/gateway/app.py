"""REST gateway: the platform's HTTP/JSON face for external applications.

Every endpoint converts an HTTP request into one call of the gRPC contract
(``ragplatform.v1``) and the reply back into JSON; no domain logic lives here, so
the services stay the single source of behaviour and the gateway can be scaled
or replaced without touching them. Reads of documents go to RetrievalService,
writes to IngestionService, questions to QueryService.

`create_app` wires the parts, one module each: settings, schemas, errors, auth
and the routes package.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from services.gateway.auth import ApiKeyMiddleware, with_security
from services.gateway.concurrency import ConcurrencyCapMiddleware
from services.gateway.errors import ERROR_RESPONSES, install_error_handlers
from services.gateway.limits import BodyLimitMiddleware
from services.gateway.ratelimit import (
    MemoryBuckets,
    RateLimitMiddleware,
    RedisBuckets,
    TokenBuckets,
)
from services.gateway.routes.documents import document_routes
from services.gateway.routes.health import health_routes
from services.gateway.routes.jobs import job_routes
from services.gateway.routes.query import query_routes
from services.gateway.settings import GatewaySettings
from services.runtime.cache import redis_client
from services.runtime.clients import PlatformClients
from services.runtime.observability import HttpTelemetryMiddleware

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def create_app(settings: GatewaySettings, clients: PlatformClients | None = None) -> FastAPI:
    """The gateway application.

    `clients` defaults to new PlatformClients, closed when the app shuts down;
    clients passed in stay the caller's to close. API keys and the default tenant
    come from `settings`; with no keys, authentication is off (every call acts
    for the default tenant) and a warning says so.
    """
    owned = clients is None
    platform = clients if clients is not None else PlatformClients(settings, "gateway")
    grants = settings.api_keys()
    if not grants:
        log.warning(
            "gateway authentication disabled: RAG_GATEWAY_API_KEYS is empty, every client "
            "may call /v1 as tenant %r",
            settings.gateway_default_tenant,
        )

    buckets: TokenBuckets = (
        RedisBuckets(redis_client(settings))
        if settings.gateway_rate_limit_backend == "redis"
        else MemoryBuckets()
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await buckets.close()
        if owned:
            await platform.close()

    app = FastAPI(
        title="ragplatform gateway",
        version=API_VERSION,
        description=(
            "HTTP/JSON access to the RAG platform: ask grounded questions, upload, list "
            "and delete documents. Each endpoint maps to one call of the `ragplatform.v1` "
            "gRPC contract. Authenticate with `Authorization: Bearer <key>` or "
            "`X-API-Key: <key>` when the gateway has keys configured; every call acts for "
            "the tenant and access labels of its key, which no request field can change. "
            "Errors are "
            '`{"error": {"code": "<gRPC code>", "message": "..."}}`.'
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    router = APIRouter(
        prefix="/v1",
        responses=ERROR_RESPONSES,
    )
    router.include_router(query_routes(platform))
    router.include_router(document_routes(platform))
    router.include_router(job_routes(platform))
    app.include_router(router)
    app.include_router(health_routes(platform))
    app.openapi = with_security(app)  # type: ignore[method-assign]
    # Innermost: a request without a valid key is refused before its body is read.
    app.add_middleware(
        BodyLimitMiddleware,
        upload_bytes=settings.gateway_max_upload_bytes,
        other_bytes=settings.gateway_max_request_bytes,
    )
    # Inside authentication (buckets are per key and tenant), outside the body limit:
    # a refused upload is never read.
    app.add_middleware(
        RateLimitMiddleware,
        buckets=buckets,
        limits=settings.rate_limits(),
        tenants=sorted({c.tenant for c in grants.values()} or {settings.gateway_default_tenant}),
    )
    app.add_middleware(ApiKeyMiddleware, grants=grants, default=settings.default_caller())
    if settings.gateway_max_concurrent_requests:
        # Before authentication: an overloaded replica refuses at the least cost.
        app.add_middleware(ConcurrencyCapMiddleware, limit=settings.gateway_max_concurrent_requests)
    # Outermost, so that refused (401) requests are counted and traced too.
    app.add_middleware(
        HttpTelemetryMiddleware,
        openapi=app.openapi,
        metrics=settings.metrics_enabled,
        log_failures=settings.gateway_access_log == "errors",
    )
    return app


__all__ = ["create_app"]
