"""Channels and stubs to the other services, with a deadline on every call.

One channel per address is shared by all stubs of a process. A client
interceptor puts the configured deadline on any call made without one, so no
call can hang forever on a stuck peer, and, while tracing is on, adds the
current W3C trace context to the call's metadata so that the callee's span
joins the caller's trace.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from grpc import aio

from ragplatform.v1 import (
    debug_pb2_grpc,
    embedding_pb2_grpc,
    generation_pb2_grpc,
    ingestion_pb2_grpc,
    query_pb2_grpc,
    retrieval_pb2_grpc,
)
from services.runtime.embedders import EmbedderRouter
from services.runtime.security import TlsFiles
from services.runtime.settings import PlatformSettings
from services.runtime.telemetry import outgoing_metadata, tracing_enabled

StubT = TypeVar("StubT")


class _CallDefaults:
    """Every outgoing call: the default deadline, and the trace context when tracing.

    grpc.aio files a channel's interceptor under the first of the call kinds
    it implements (an `elif` chain in `aio.Channel`), so one object
    implementing several would only ever see unary-unary calls: each kind the
    contract uses gets its own subclass below (`call_defaults`).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def _details(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        propagated = outgoing_metadata() if tracing_enabled() else []
        if details.timeout is not None and not propagated:
            return details
        metadata = details.metadata
        if propagated:
            metadata = aio.Metadata(*(metadata or ()), *propagated)
        return aio.ClientCallDetails(
            details.method, self.seconds if details.timeout is None else details.timeout,
            metadata, details.credentials, details.wait_for_ready,
        )  # fmt: skip


class _UnaryUnaryDefaults(_CallDefaults, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamDefaults(_CallDefaults, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryDefaults(_CallDefaults, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def call_defaults(seconds: float) -> list[aio.ClientInterceptor]:
    """The interceptors that give every kind of call the default deadline of
    `seconds` and, while tracing, the caller's trace context."""
    kinds = (_UnaryUnaryDefaults, _UnaryStreamDefaults, _StreamUnaryDefaults)
    return [kind(seconds) for kind in kinds]


class PlatformClients:
    """Typed stubs for each service, created lazily, sharing one channel per address."""

    def __init__(self, settings: PlatformSettings, identity: str = "ragctl") -> None:
        """`identity`: the process whose certificate the calls present with TLS
        (the "{process}" of RAG_TLS_*_FILE)."""
        self.settings = settings
        self._channels: dict[str, aio.Channel] = {}
        tls = TlsFiles.of(settings, identity)
        self._credentials = tls.channel_credentials() if tls is not None else None
        self.embedders = EmbedderRouter(self)
        """The embedding service of the index's live model (use it, not `embedding`,
        for vectors that go into the index or are searched in it)."""

    def channel(self, address: str) -> aio.Channel:
        """The shared channel to `address`."""
        if address not in self._channels:
            self._channels[address] = self._open(address)
        return self._channels[address]

    def _open(self, address: str) -> aio.Channel:
        options = [
            ("grpc.max_send_message_length", self.settings.max_message_bytes),
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            # gRPC's reconnect backoff grows to two minutes by default; a peer
            # restarted by Kubernetes would look down long after it serves.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        interceptors = call_defaults(self.settings.rpc_timeout_seconds)
        if self._credentials is None:
            return aio.insecure_channel(address, options=options, interceptors=interceptors)
        return aio.secure_channel(
            address, self._credentials, options=options, interceptors=interceptors
        )

    def _stub(self, service: str, factory: Callable[[aio.Channel], StubT]) -> StubT:
        return factory(self.channel(self.settings.address_of(service)))

    @property
    def embedding(self) -> embedding_pb2_grpc.EmbeddingServiceStub:
        return self._stub("embedding", embedding_pb2_grpc.EmbeddingServiceStub)

    def embedding_at(self, address: str) -> embedding_pb2_grpc.EmbeddingServiceStub:
        """EmbeddingService at `address`, one of several (one per model, `embedders`)."""
        return embedding_pb2_grpc.EmbeddingServiceStub(self.channel(address))

    @property
    def retrieval(self) -> retrieval_pb2_grpc.RetrievalServiceStub:
        return self._stub("retrieval", retrieval_pb2_grpc.RetrievalServiceStub)

    @property
    def index_generations(self) -> retrieval_pb2_grpc.IndexGenerationServiceStub:
        """IndexGenerationService, served by the retrieval process."""
        return self._stub("retrieval", retrieval_pb2_grpc.IndexGenerationServiceStub)

    @property
    def generation(self) -> generation_pb2_grpc.GenerationServiceStub:
        return self._stub("generation", generation_pb2_grpc.GenerationServiceStub)

    @property
    def ingestion(self) -> ingestion_pb2_grpc.IngestionServiceStub:
        return self._stub("ingestion", ingestion_pb2_grpc.IngestionServiceStub)

    @property
    def query(self) -> query_pb2_grpc.QueryServiceStub:
        return self._stub("query", query_pb2_grpc.QueryServiceStub)

    @property
    def request_debug(self) -> debug_pb2_grpc.RequestDebugServiceStub:
        """RequestDebugService, served by the query process."""
        return self._stub("query", debug_pb2_grpc.RequestDebugServiceStub)

    async def close(self) -> None:
        """Close every channel (after the server has drained)."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
