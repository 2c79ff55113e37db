"""Health routes: /healthz (the process is up) and /readyz (the services it calls serve)."""

import asyncio

import grpc
from fastapi import APIRouter, Response
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.schemas import Liveness, Readiness
from services.runtime.clients import PlatformClients

READINESS_TIMEOUT_SECONDS = 2.0
"""Deadline of each health check behind /readyz: a probe must answer quickly."""
READINESS_SERVICES = ("query", "ingestion", "retrieval")
"""The services the gateway calls directly; it is ready only when they serve."""


async def _health_of(clients: PlatformClients, service: str) -> str:
    stub = health_pb2_grpc.HealthStub(clients.channel(clients.settings.address_of(service)))
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=READINESS_TIMEOUT_SECONDS
        )
    except aio.AioRpcError as err:
        unreachable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return "UNREACHABLE" if err.code() in unreachable else str(err.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def health_routes(clients: PlatformClients) -> APIRouter:
    """The probe routes, outside /v1 and without authentication."""
    router = APIRouter()

    @router.get("/healthz", response_model=Liveness, tags=["health"], summary="Liveness")
    async def healthz() -> Liveness:
        """The gateway process is up (nothing else is checked, so that a slow
        dependency never gets the gateway restarted)."""
        return Liveness(status="ok")

    @router.get(
        "/readyz",
        response_model=Readiness,
        tags=["health"],
        summary="Readiness",
        responses={503: {"model": Readiness, "description": "Some services are not serving."}},
    )
    async def readyz(response: Response) -> Readiness:
        """gRPC health of the services the gateway calls; 503 names those not serving."""
        states = await asyncio.gather(*(_health_of(clients, s) for s in READINESS_SERVICES))
        services = dict(zip(READINESS_SERVICES, states, strict=True))
        not_serving = [name for name, state in services.items() if state != "SERVING"]
        if not_serving:
            response.status_code = 503
        return Readiness(
            status="not_ready" if not_serving else "ready",
            services=services,
            not_serving=not_serving,
        )

    return router
