"""The one gRPC server bootstrap every service runs.

It sets up the process's observability (JSON logs, tracing from OTEL_*, the
Prometheus /metrics port), binds the service's port, registers the standard
health service (so Kubernetes gRPC probes and `ragctl status` work) and server
reflection (so grpcurl works), authenticates and authorises callers when TLS is
configured (`security.py`), counts, times and traces every call, maps domain
errors to status codes, and on SIGTERM or SIGINT reports NOT_SERVING, stops
accepting calls and drains in-flight ones for `drain_seconds` before closing
the service's resources and exporting the last spans.
"""

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pool
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.runtime.errors import ErrorMappingInterceptor
from services.runtime.limits import ConcurrencyLimitInterceptor
from services.runtime.metrics import init_rpc_series
from services.runtime.observability import RpcTelemetryInterceptor, start_observability
from services.runtime.security import (
    AuthorizationInterceptor,
    TlsFiles,
    health_address,
    parse_clients,
)
from services.runtime.settings import PlatformSettings
from services.runtime.telemetry import shutdown_tracing

log = logging.getLogger(__name__)


@dataclass
class ServiceBinding:
    """A servicer to register: the generated `add_XServicer_to_server` and its full name."""

    add_to_server: Callable[[Any, aio.Server], None]
    servicer: Any
    full_name: str


@dataclass
class Service:
    """What a service contributes: bindings, plus cleanups run after draining."""

    bindings: Sequence[ServiceBinding]
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def serve(
    name: str,
    settings: PlatformSettings,
    build: Callable[[], Awaitable[Service]],
) -> None:
    """Build the service, serve it until a stop signal, then drain and clean up."""
    tracing = start_observability(name, settings)
    service = await build()
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    tls = TlsFiles.of(settings, name)
    interceptors: list[aio.ServerInterceptor] = [ErrorMappingInterceptor()]
    if settings.max_concurrent_rpcs:
        # Before the error mapping: a refusal is already a status, not a domain error.
        interceptors.insert(0, ConcurrencyLimitInterceptor(settings.max_concurrent_rpcs))
    if tls is not None:
        # Before the cap: a caller refused for who it is takes no slot.
        interceptors.insert(0, AuthorizationInterceptor(parse_clients(settings.grpc_clients)))
    if settings.metrics_enabled or tracing:
        # First, so that it sees the status code the error mapping chose.
        interceptors.insert(0, RpcTelemetryInterceptor(name, metrics=settings.metrics_enabled))
    if settings.metrics_enabled:
        pool = descriptor_pool.Default()
        methods = [
            method.name
            for binding in service.bindings
            for method in pool.FindServiceByName(binding.full_name).methods
        ]
        init_rpc_series(name, methods)
    server = aio.server(interceptors=interceptors, options=options)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in service.bindings:
        binding.add_to_server(binding.servicer, server)
    reflection.enable_server_reflection(
        [b.full_name for b in service.bindings]
        + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    address = settings.listen_address_of(name)
    if tls is None:
        bound = server.add_insecure_port(address)
        log.warning(
            "gRPC without TLS: every caller is trusted; set RAG_TLS_* (docs/security.md) "
            "anywhere but a loopback development platform",
            extra={"address": address},
        )
    else:
        bound = server.add_secure_port(address, tls.server_credentials())
        if server.add_insecure_port(health_address(settings, name)) == 0:
            raise SystemExit(f"{name}: cannot bind {health_address(settings, name)}")
    if bound == 0:
        raise SystemExit(f"{name}: cannot bind {address}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    for binding in service.bindings:
        await health_servicer.set(binding.full_name, serving)
    log.info("serving", extra={"address": address})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("draining", extra={"grace_seconds": settings.drain_seconds})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.drain_seconds)
    for cleanup in service.cleanups:
        await cleanup()
    log.info("stopped")
    shutdown_tracing()


def run(name: str, settings: PlatformSettings, build: Callable[[], Awaitable[Service]]) -> None:
    """Entry point for a service's `__main__`."""
    asyncio.run(serve(name, settings, build))
