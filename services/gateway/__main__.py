"""Run the REST gateway: `python -m services.gateway`.

Serves `create_app` with uvicorn on `RAG_GATEWAY_PORT`, bound to `RAG_LISTEN_HOST`,
with the same observability as every other service (JSON logs, tracing from
OTEL_*, /metrics on `RAG_GATEWAY_METRICS_PORT`); on SIGTERM uvicorn stops
accepting connections and lets in-flight requests finish for `RAG_DRAIN_SECONDS`.
A malformed setting (e.g. RAG_GATEWAY_API_KEYS) stops it at once with one message
naming the problem, never the keys.
"""

import math

import uvicorn
from pydantic import ValidationError

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.runtime.observability import start_observability


def main() -> None:
    try:
        settings = GatewaySettings()
    except ValidationError as error:
        raise SystemExit(f"gateway: invalid configuration: {error}") from None
    start_observability("gateway", settings)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.gateway_port,
        http="httptools",  # C parser: cheaper per request than h11 (docs/benchmarks.md)
        log_config=None,  # keep the JSON handler configure_logging installed
        access_log=settings.gateway_access_log == "all",
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=math.ceil(settings.drain_seconds),
    )


if __name__ == "__main__":
    main()
