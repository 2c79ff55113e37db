"""Prometheus metrics of the generation service (default registry, low-cardinality labels).

Defined once at import so every module records into the same series; the
service's /metrics endpoint (served by the runtime) exposes the default
registry. Labels are bounded: model and backend names come from
configuration, tiers and codes from fixed sets, never from requests.
"""

from prometheus_client import Counter, Gauge, Histogram

TOKENS = Counter(
    "rag_generation_tokens_total",
    "Model tokens used, by model, route (tier) and kind (input or output).",
    ["model", "route", "kind"],
)
COST = Counter(
    "rag_generation_cost_usd_total",
    "Cost of model tokens in US dollars, by model and route (tier).",
    ["model", "route"],
)
ROUTER_DECISIONS = Counter(
    "rag_router_decisions_total",
    "Router decisions, by tier and kind of reason "
    "(score, low_retrieval, override, grounding_escalation).",
    ["tier", "reason_kind"],
)
FALLBACKS = Counter(
    "rag_generation_fallbacks_total",
    "Answers passed on to the next backend of the chain, by the backend that "
    "failed and the cause: its status code, lowercased; circuit_open; or what was "
    "wrong with its reply: stream_error (an error inside the stream), truncated "
    "(cut at the output limit), prompt_blocked, answer_blocked (a content filter).",
    ["from_backend", "cause"],
)
BACKEND_ERRORS = Counter(
    "rag_generation_backend_errors_total",
    "Failed backend calls, by backend and gRPC status code name.",
    ["backend", "code"],
)
GROUNDING_SCORE = Histogram(
    "rag_grounding_score",
    "Grounding score of answers that did not decline (share of supported sentences).",
    buckets=(0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
AB_REQUESTS = Counter("rag_ab_requests_total", "Requests assigned to each A/B arm.", ["arm"])
CIRCUIT_BREAKER_OPEN = Gauge(
    "rag_circuit_breaker_open",
    "1 while a backend's circuit breaker is open or half-open, else 0.",
    ["backend"],
)
