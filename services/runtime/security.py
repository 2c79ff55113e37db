"""Authenticated internal calls: mutual TLS between processes, and who may call what.

With RAG_TLS_CERT_FILE, RAG_TLS_KEY_FILE and RAG_TLS_CA_FILE set, every server
accepts only TLS connections whose client presents a certificate signed by the
CA, and every client presents its own and checks the server's. A certificate's
common name is its holder's identity:

* a platform process ("gateway", "query", "ingestion", "ragctl", ...) may call
  the services its flows need (`PLATFORM_CALLERS`) for any tenant: it acts for
  callers it has authenticated itself (the gateway's API keys);
* an internal client named in RAG_GRPC_CLIENTS acts for one tenant and the
  access labels it is granted, exactly as an API key does at the gateway: its
  requests must name that caller, and may call only what the gateway exposes
  (`CLIENT_METHODS`);
* anyone else is UNAUTHENTICATED, and a call outside an identity's grant is
  PERMISSION_DENIED.

Kubernetes' gRPC probes cannot present a certificate, so a TLS server also
serves its port + RAG_HEALTH_PORT_OFFSET in plaintext, where only the health
service answers; any other call there is UNAUTHENTICATED. Without the three
files a process serves plaintext, trusting every caller, and says so at start-up:
the embedded default on loopback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, ValidationError

from ragplatform.v1 import common_pb2
from services.common.tenancy import validate_labels, validate_tenant
from services.runtime.handlers import around_calls
from services.runtime.settings import PlatformSettings

log = logging.getLogger(__name__)

REFUSED = Counter(
    "rag_rpc_unauthorized_total",
    "Calls refused by the authorization layer, by method and status "
    "(UNAUTHENTICATED: no known identity; PERMISSION_DENIED: outside its grant).",
    ["method", "code"],
)

_PACKAGE = "ragplatform.v1."
_ANYONE = ("/grpc.health.v1.Health/",)
"""Answered for any caller, also on the plaintext health port."""
_AUTHENTICATED = ("/grpc.reflection.",)
"""Answered for any authenticated caller (grpcurl)."""

PLATFORM_CALLERS: Mapping[str, frozenset[str]] = {
    "gateway": frozenset({"QueryService", "IngestionService", "RetrievalService"}),
    "query": frozenset({"EmbeddingService", "RetrievalService", "GenerationService"}),
    "ingestion": frozenset({"EmbeddingService", "RetrievalService"}),
    "ragctl": frozenset(
        {
            "QueryService",
            "RequestDebugService",
            "IngestionService",
            "RetrievalService",
            "IndexGenerationService",
            "EmbeddingService",
            "GenerationService",
        }
    ),
}
"""The services each platform identity's flows call (docs/security.md has the flows)."""

CLIENT_METHODS = frozenset(
    {
        "QueryService/Ask",
        "QueryService/AskStream",
        "RequestDebugService/GetRequestRecord",
        "IngestionService/UploadDocument",
        "IngestionService/DeleteDocument",
        "RetrievalService/ListDocuments",
        "RetrievalService/LookupDocuments",
    }
)
"""What an internal client may call: the gateway's surface, each with a caller."""


class ClientGrant(BaseModel):
    """Whom an internal client's certificate acts for (RAG_GRPC_CLIENTS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    access_labels: tuple[str, ...] = ()


def parse_clients(text: str) -> dict[str, ClientGrant]:
    """RAG_GRPC_CLIENTS: a JSON object from certificate common name to its grant."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
        grants = {str(name): ClientGrant.model_validate(grant) for name, grant in raw.items()}
    except (ValueError, AttributeError, ValidationError) as error:
        raise ValueError(f"RAG_GRPC_CLIENTS is not a JSON object of grants: {error}") from None
    for name, grant in grants.items():
        if name in PLATFORM_CALLERS:
            raise ValueError(f"RAG_GRPC_CLIENTS: {name!r} is a platform identity")
        validate_tenant(grant.tenant)
        validate_labels(grant.access_labels, "access label")
    return grants


@dataclass(frozen=True)
class TlsFiles:
    """This process's certificate and key, and the CA every peer's chains to."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def of(cls, settings: PlatformSettings, process: str) -> TlsFiles | None:
        """The files of `process` ("{process}" in a path is its name), or None
        when TLS is off; ValueError when only some are set."""
        given = {
            "RAG_TLS_CERT_FILE": settings.tls_cert_file,
            "RAG_TLS_KEY_FILE": settings.tls_key_file,
            "RAG_TLS_CA_FILE": settings.tls_ca_file,
        }
        if not any(given.values()):
            return None
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise ValueError(f"TLS needs {', '.join(missing)} as well (or none of the three)")
        cert, key, ca = (Path(v.replace("{process}", process)) for v in given.values())
        return cls(cert, key, ca)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AuthorizationInterceptor(aio.ServerInterceptor):
    """Lets a call through only for an identity allowed to make it (module docstring)."""

    def __init__(self, clients: Mapping[str, ClientGrant]) -> None:
        self._clients = dict(clients)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_ANYONE):
            return handler

        async def enter(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            grant = await self._admit(method, context)
            if grant is None:
                return request
            return await self._confined(request, grant, method, context)

        return around_calls(handler, enter)

    async def _admit(
        self, method: str, context: aio.ServicerContext[Any, Any]
    ) -> ClientGrant | None:
        """The client's grant (None for a platform identity), or abort the call."""
        identity = _identity(context)
        try:
            if identity is None:
                raise _Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "no client certificate: this port answers health checks only; call the "
                    "service's TLS port with a certificate of the platform's CA",
                )
            if method.startswith(_AUTHENTICATED):
                return self._clients.get(identity)
            service, name = method.removeprefix("/" + _PACKAGE).split("/", 1)
            if identity in PLATFORM_CALLERS:
                if service not in PLATFORM_CALLERS[identity]:
                    raise _Refused(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"{identity!r} may not call {service}",
                    )
                return None
            grant = self._clients.get(identity)
            if grant is None:
                raise _Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"certificate {identity!r} is neither a platform process nor a client "
                    "in RAG_GRPC_CLIENTS",
                )
            if f"{service}/{name}" not in CLIENT_METHODS:
                raise _Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"client {identity!r} may not call {service}/{name}",
                )
            return grant
        except _Refused as refused:
            REFUSED.labels(method.rsplit("/", 1)[-1], refused.code.name).inc()
            await context.abort(refused.code, refused.message)
            raise  # abort raises; this keeps the type checker sure

    async def _confined(
        self, request: Any, grant: ClientGrant, method: str, context: aio.ServicerContext[Any, Any]
    ) -> Any:
        """`request` checked to act for `grant` (a stream: as each message arrives)."""
        if not hasattr(request, "__aiter__"):
            await self._check(request, grant, method, context)
            return request

        async def checked_messages() -> AsyncIterator[Any]:
            async for message in request:
                await self._check(message, grant, method, context, stream=True)
                yield message

        return checked_messages()

    async def _check(
        self,
        message: Any,
        grant: ClientGrant,
        method: str,
        context: aio.ServicerContext[Any, Any],
        stream: bool = False,
    ) -> None:
        problem = _outside(message, grant, stream)
        if problem:
            REFUSED.labels(method.rsplit("/", 1)[-1], "PERMISSION_DENIED").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)


def _outside(message: Any, grant: ClientGrant, stream: bool) -> str:
    """Why `message` acts beyond `grant` ("" when it does not): it must name its
    caller, of the grant's tenant with labels among the grant's."""
    if stream:
        if not message.HasField("header"):
            return ""  # data parts of an upload whose header was checked
        message = message.header
    if not message.HasField("caller"):
        return f"a client acting for tenant {grant.tenant!r} must name its caller"
    caller: common_pb2.Caller = message.caller
    tenant = getattr(message, "tenant", "") or caller.tenant
    if caller.tenant != grant.tenant or tenant != grant.tenant:
        return f"this client acts for tenant {grant.tenant!r} only"
    extra = sorted(set(caller.access_labels) - set(grant.access_labels))
    if extra:
        return f"this client does not hold the access labels {extra}"
    return ""


def _identity(context: aio.ServicerContext[Any, Any]) -> str | None:
    """The common name of the peer's verified certificate; None without TLS."""
    names: Iterable[bytes] = context.auth_context().get("x509_common_name", [])
    for name in names:
        return name.decode()
    return None


def health_address(settings: PlatformSettings, process: str) -> str:
    """The plaintext health-only address of a TLS process: its port + the offset."""
    port = int(settings.listen_address_of(process).rsplit(":", 1)[1])
    return f"{settings.listen_host}:{port + settings.health_port_offset}"
