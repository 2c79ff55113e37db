"""Channels and stubs to the other services, with a deadline on every call.

One channel per address is shared by all stubs of a process. A client
interceptor puts the configured deadline on any call made without one, so no
call can hang forever on a stuck peer.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from grpc import aio

from ragplatform.v1 import (
    embedding_pb2_grpc,
    generation_pb2_grpc,
    ingestion_pb2_grpc,
    query_pb2_grpc,
    retrieval_pb2_grpc,
)
from services.runtime.settings import PlatformSettings

StubT = TypeVar("StubT")


class _DefaultDeadline(
    aio.UnaryUnaryClientInterceptor,
    aio.UnaryStreamClientInterceptor,
    aio.StreamUnaryClientInterceptor,
    aio.StreamStreamClientInterceptor,
):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def _with_deadline(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return aio.ClientCallDetails(
            details.method, self.seconds, details.metadata, details.credentials,
            details.wait_for_ready,
        )  # fmt: skip

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_deadline(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_deadline(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_deadline(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_deadline(details), requests)


class PlatformClients:
    """Typed stubs for each service, created lazily, sharing one channel per address."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self._channels: dict[str, aio.Channel] = {}

    def channel(self, address: str) -> aio.Channel:
        """The shared channel to `address`."""
        if address not in self._channels:
            self._channels[address] = aio.insecure_channel(
                address,
                options=[
                    ("grpc.max_send_message_length", self.settings.max_message_bytes),
                    ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                    # gRPC's reconnect backoff grows to two minutes by default; a peer
                    # restarted by Kubernetes would look down long after it serves.
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                ],
                interceptors=[_DefaultDeadline(self.settings.rpc_timeout_seconds)],
            )
        return self._channels[address]

    def _stub(self, service: str, factory: Callable[[aio.Channel], StubT]) -> StubT:
        return factory(self.channel(self.settings.address_of(service)))

    @property
    def embedding(self) -> embedding_pb2_grpc.EmbeddingServiceStub:
        return self._stub("embedding", embedding_pb2_grpc.EmbeddingServiceStub)

    @property
    def retrieval(self) -> retrieval_pb2_grpc.RetrievalServiceStub:
        return self._stub("retrieval", retrieval_pb2_grpc.RetrievalServiceStub)

    @property
    def generation(self) -> generation_pb2_grpc.GenerationServiceStub:
        return self._stub("generation", generation_pb2_grpc.GenerationServiceStub)

    @property
    def ingestion(self) -> ingestion_pb2_grpc.IngestionServiceStub:
        return self._stub("ingestion", ingestion_pb2_grpc.IngestionServiceStub)

    @property
    def query(self) -> query_pb2_grpc.QueryServiceStub:
        return self._stub("query", query_pb2_grpc.QueryServiceStub)

    async def close(self) -> None:
        """Close every channel (after the server has drained)."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
