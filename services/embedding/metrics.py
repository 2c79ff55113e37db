"""Prometheus metrics of a remote embedding model (default registry), metered like
generation's LLM calls: tokens and their cost per model, each HTTP request's
duration, retries after a throttle or an outage, and requests that failed for good.

Labels are bounded: the model comes from configuration, codes from fixed sets.
"""

from prometheus_client import Counter, Histogram

from services.runtime.metrics import LATENCY_BUCKETS

TOKENS = Counter(
    "rag_embedding_tokens_total",
    "Input tokens of a remote embedding model, as it reported them, by model.",
    ["model"],
)
COST = Counter(
    "rag_embedding_cost_usd_total",
    "Cost of a remote embedding model's tokens in US dollars (RAG_EMBEDDING_PRICES), by model.",
    ["model"],
)
REQUEST_SECONDS = Histogram(
    "rag_embedding_backend_request_seconds",
    "Duration of each HTTP request to a remote embedding model (every attempt), by model.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
RETRIES = Counter(
    "rag_embedding_backend_retries_total",
    "Requests to a remote embedding model sent again after a backoff, by model and the "
    "status that caused it (RESOURCE_EXHAUSTED: HTTP 429, UNAVAILABLE: HTTP 503).",
    ["model", "status"],
)
FAILURES = Counter(
    "rag_embedding_backend_failures_total",
    "Requests to a remote embedding model that failed for good (refused, or throttled past "
    "the last attempt), by model and the gRPC code name returned for them.",
    ["model", "code"],
)
