"""Per-process observability: logs, tracing and /metrics set up in one call, and
the server-side instrumentation of both kinds of server the platform runs.

`RpcTelemetryInterceptor` (every gRPC service, installed by `serve()`) and
`HttpTelemetryMiddleware` (the gateway) each do two things per request: count it
and time it in Prometheus (`rag_rpc_*`, `rag_http_*`), and open a SERVER span
that continues the caller's W3C trace context. Health checks, reflection and
the gateway's probes are left out of both: Kubernetes calls them every few
seconds, and they would drown the request rate and fill traces with noise.
"""

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime.handlers import StreamBehavior, UnaryBehavior, wrap_handler
from services.runtime.logs import configure_logging
from services.runtime.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    RPC_DURATION,
    RPC_REQUESTS,
    init_http_series,
    start_metrics_server,
)
from services.runtime.settings import PlatformSettings
from services.runtime.telemetry import (
    MODEL_CALLS,
    TracingConfigError,
    annotate_model_call,
    configure_tracing,
    incoming_context,
    tracer,
    tracing_enabled,
    unsampled,
)

UNOBSERVED_RPC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
UNOBSERVED_HTTP_PATHS = frozenset({"/healthz", "/readyz"})
UNMATCHED_ROUTE = "unmatched"
"""Route label of requests no route matches, so that scanners cannot mint labels."""
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Method labels kept as they are; any other method is labelled OTHER."""


def start_observability(process: str, settings: PlatformSettings) -> bool:
    """JSON logs, tracing (when OTEL_* turns it on) and the /metrics endpoint (when
    RAG_METRICS_ENABLED) for `process`; returns whether tracing is on."""
    configure_logging(process, settings.log_level, settings.log_content)
    try:
        tracing = configure_tracing(process)
    except TracingConfigError as error:
        raise SystemExit(f"{process}: {error}") from error
    if settings.metrics_enabled:
        start_metrics_server(settings.listen_host, settings.metrics_port_of(process))
    return tracing


# --------------------------------------------------------------------------- spans


def _enter_server_span(
    carrier: Mapping[str, str], name: str, attributes: dict[str, str]
) -> tuple[Span | None, object]:
    """Continue the caller's trace (from its headers or metadata): a SERVER span
    made current, or, when the caller's trace is not sampled, only its context, so
    that the calls made from here carry it on. Returns the span and the context token."""
    parent = incoming_context(carrier)
    if unsampled(parent):
        return None, otel_context.attach(parent)
    span = tracer().start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def _leave_server_span(
    span: Span | None, token: object, attributes: dict[str, int], error: str | None
) -> None:
    """End what `_enter_server_span` started; `error` marks the span failed."""
    if span is not None:
        span.set_attributes(attributes)
        if error is not None:
            span.set_status(StatusCode.ERROR, error)
        span.end()
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- gRPC


def _code_name(code: grpc.StatusCode | None) -> str:
    return "OK" if code is None else code.name


class RpcTelemetryInterceptor(aio.ServerInterceptor):
    """Counts, times and traces every call of `service`'s gRPC methods.

    Install it before the error-mapping interceptor so that it sees the status
    code that mapping chose (domain errors reach it as an abort).
    """

    def __init__(self, service: str, *, metrics: bool) -> None:
        self.service = service
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Any,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler: grpc.RpcMethodHandler = await continuation(handler_call_details)
        full_method: str = handler_call_details.method
        if handler is None or full_method.startswith(UNOBSERVED_RPC_PREFIXES):
            return handler
        call = _RpcCall(
            self.service, full_method, handler_call_details.invocation_metadata, self.metrics
        )

        def wrap_unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def observed(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                with call.observe(context) as span:
                    response = await behavior(request, context)
                    call.annotate(span, response)
                    return response

            return observed

        def wrap_stream(behavior: StreamBehavior) -> StreamBehavior:
            async def observed(
                request: Any, context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                with call.observe(context) as span:
                    async for response in behavior(request, context):
                        call.annotate(span, response)
                        yield response

            return observed

        return wrap_handler(handler, wrap_unary, wrap_stream)


class _RpcCall:
    """One call's labels, parent context and model-call kind."""

    def __init__(
        self, service: str, full_method: str, metadata: Sequence[Any] | None, metrics: bool
    ) -> None:
        grpc_service, _, method = full_method.lstrip("/").partition("/")
        self.service = service
        self.method = method
        self.grpc_service = grpc_service
        self.metadata = metadata
        self.metrics = metrics
        self.model_operation = MODEL_CALLS.get(full_method)

    @contextlib.contextmanager
    def observe(self, context: aio.ServicerContext[Any, Any]) -> Iterator[Span | None]:
        started = time.perf_counter()
        span: Span | None = None
        token: object = None
        if tracing_enabled():
            carrier = {key: value for key, value in self.metadata or () if isinstance(value, str)}
            span, token = _enter_server_span(
                carrier,
                f"{self.grpc_service}/{self.method}",
                {"rpc.system": "grpc", "rpc.service": self.grpc_service, "rpc.method": self.method},
            )
        code = "OK"
        try:
            yield span
        except aio.AbortError:
            code = _code_name(context.code())
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except BaseException:
            code = "UNKNOWN"
            raise
        finally:
            if self.metrics:
                RPC_REQUESTS.labels(self.service, self.method, code).inc()
                RPC_DURATION.labels(self.service, self.method).observe(
                    time.perf_counter() - started
                )
            _leave_server_span(
                span,
                token,
                {"rpc.grpc.status_code": grpc.StatusCode[code].value[0]},
                None if code == "OK" else code,
            )

    def annotate(self, span: Span | None, response: Any) -> None:
        if span is not None and self.model_operation is not None:
            annotate_model_call(span, self.model_operation, response)


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class _Route:
    template: str
    pattern: re.Pattern[str]
    statuses: dict[str, list[int]]
    """HTTP method → the statuses the OpenAPI document declares for it."""


def _routes_of(openapi: Mapping[str, Any]) -> list[_Route]:
    """The API's routes from its OpenAPI document, most specific first.

    The document is the public contract, independent of how the web framework
    nests its routers; a path parameter matches any non-empty text (ids may hold
    slashes).
    """
    routes = []
    for template, operations in openapi.get("paths", {}).items():
        if template in UNOBSERVED_HTTP_PATHS:
            continue
        parts = re.split(r"\{[^}]+\}", template)
        pattern = re.compile(".+".join(re.escape(part) for part in parts) + "$")
        statuses = {
            method.upper(): sorted(
                int(code) for code in operation.get("responses", {}) if code.isdigit()
            )
            for method, operation in operations.items()
        }
        routes.append(_Route(template, pattern, statuses))
    return sorted(routes, key=lambda r: (r.template.count("{"), -len(r.template)))


ACCESS_LOG = logging.getLogger("ragplatform.access")


class HttpTelemetryMiddleware:
    """Counts, times and traces every HTTP request (pure ASGI, so streamed
    responses are timed to their last byte and the span stays current in the
    endpoint), and with `log_failures` logs each that failed (status 400 and
    up: a warning for 5xx, info for 4xx). Requests are labelled by their route's
    template from the OpenAPI document (`/v1/documents/{document_id}`), never by
    the concrete path, and every documented (route, method, status) starts at 0."""

    def __init__(
        self,
        app: ASGIApp,
        openapi: Callable[[], Mapping[str, Any]],
        metrics: bool = True,
        log_failures: bool = False,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_failures = log_failures
        self.routes = _routes_of(openapi())
        if metrics:
            init_http_series(
                (route.template, method, statuses)
                for route in self.routes
                for method, statuses in route.statuses.items()
            )

    def _route_of(self, path: str) -> str:
        for route in self.routes:
            if route.pattern.match(path):
                return route.template
        return UNMATCHED_ROUTE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracing = tracing_enabled()
        if (
            scope["type"] != "http"
            or scope["path"] in UNOBSERVED_HTTP_PATHS
            or not (self.metrics or tracing or self.log_failures)
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = self._route_of(scope["path"])
        method = scope["method"] if scope["method"] in HTTP_METHODS else "OTHER"
        status = 500  # what the client gets if the app fails before answering

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        span: Span | None = None
        token: object = None
        if tracing:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            span, token = _enter_server_span(
                headers,
                f"{method} {route}",
                {
                    "http.request.method": method,
                    "http.route": route,
                    "url.path": scope["path"],
                    "url.scheme": scope.get("scheme", "http"),
                },
            )
        try:
            await self.app(scope, receive, send_observed)
        finally:
            seconds = time.perf_counter() - started
            if self.metrics:
                HTTP_REQUESTS.labels(route, method, str(status)).inc()
                HTTP_DURATION.labels(route, method).observe(seconds)
            if self.log_failures and status >= 400:
                ACCESS_LOG.log(
                    logging.WARNING if status >= 500 else logging.INFO,
                    "%s %s %d",
                    method,
                    scope["path"],
                    status,
                    extra={
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1e3, 1),
                    },
                )
            _leave_server_span(
                span,
                token,
                {"http.response.status_code": status},
                str(status) if status >= 500 else None,
            )
