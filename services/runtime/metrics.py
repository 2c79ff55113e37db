"""Prometheus metrics shared by every process, and the /metrics endpoint.

Names follow Prometheus conventions (base units, `_seconds`, `_total`) and
labels stay low-cardinality: service, method, route, status code, stage, cache
name; never a question, a document id or a user. Metrics that one service alone
records are defined beside the code that records them (ingestion, embedding,
query, retrieval servicers; generation's own module), so each process exposes
only the families it can fill.

Counters with labels have no series until first used, which makes a dashboard
panel or an alert look broken on a quiet system and makes `rate()` miss the first
event. Where the label values are known up front (every gRPC method × status
code, every documented HTTP status of every route, every ingestion status), they
are initialised to 0 when the process starts, as go-grpc-prometheus does.
"""

import logging
from collections.abc import Iterable, Sequence

from prometheus_client import Counter, Histogram, disable_created_metrics, start_http_server

log = logging.getLogger(__name__)

# `_created` series double every counter's and histogram's series for a value no
# dashboard or rule here reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds; from a cache hit (ms) to a slow LLM answer or a long upload (a minute).
The ask latency SLO threshold (5 s) is one of the bounds, so the SLI is exact."""

GRPC_CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)

RPC_REQUESTS = Counter(
    "rag_rpc_requests",
    "gRPC calls handled, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "rag_rpc_duration_seconds",
    "Time to handle a gRPC call (a whole stream for streaming calls).",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "rag_http_requests",
    "HTTP requests answered by the gateway, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "rag_http_request_duration_seconds",
    "Time from an HTTP request's arrival to the end of its response body.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
CACHE_REQUESTS = Counter(
    "rag_cache_requests",
    "Cache lookups by cache name and result (hit or miss).",
    ["cache", "result"],
)
CACHE_ERRORS = Counter(
    "rag_cache_errors",
    "Cache operations that failed (the store was unreachable or slow) and were served "
    "as if the cache were empty, by cache name and operation (get, set, delete).",
    ["cache", "operation"],
)


def init_rpc_series(service: str, methods: Iterable[str]) -> None:
    """Create the RPC series of `methods` (every status code) at 0."""
    for method in methods:
        RPC_DURATION.labels(service, method)
        for code in GRPC_CODES:
            RPC_REQUESTS.labels(service, method, code)


def init_http_series(routes: Iterable[tuple[str, str, Sequence[int]]]) -> None:
    """Create the HTTP series of each (route, method, documented statuses) at 0."""
    for route, method, statuses in routes:
        HTTP_DURATION.labels(route, method)
        for status in statuses:
            HTTP_REQUESTS.labels(route, method, str(status))


def record_cache_lookup(cache: str, hit: bool) -> None:
    """Count one lookup of `cache` (caches call this on every get)."""
    CACHE_REQUESTS.labels(cache, "hit" if hit else "miss").inc()


def record_cache_error(cache: str, operation: str) -> None:
    """Count one failed operation of `cache` (it was then served as a miss or skipped)."""
    CACHE_ERRORS.labels(cache, operation).inc()


def init_cache_series(caches: Iterable[str], operations: Sequence[str] = ()) -> None:
    """Create the hit and miss series of each cache, and its error series for each
    of `operations`, at 0 (call when a cache is built)."""
    for cache in caches:
        for result in ("hit", "miss"):
            CACHE_REQUESTS.labels(cache, result)
        for operation in operations:
            CACHE_ERRORS.labels(cache, operation)


def start_metrics_server(host: str, port: int) -> None:
    """Serve the default registry on http://host:port/metrics from a daemon thread.

    A separate port keeps scraping off the service's own port and out of its
    authentication; a port that cannot be bound stops the process with a message.
    """
    try:
        start_http_server(port, addr=host)
    except OSError as error:
        raise SystemExit(f"cannot serve /metrics on {host}:{port}: {error}") from error
    log.info("metrics", extra={"address": f"{host}:{port}"})
