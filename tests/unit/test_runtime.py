"""Shared runtime: domain errors become the right status, deadlines apply, settings."""

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ragplatform.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.common.errors import InvalidInputError, NotFoundError, TooLargeError
from services.runtime.clients import PlatformClients
from services.runtime.errors import DownstreamError, ErrorMappingInterceptor, downstream
from services.runtime.limits import ConcurrencyLimitInterceptor
from services.runtime.settings import PlatformSettings


class FakeRetrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    """A fake retrieval servicer whose behaviour each test picks by document id."""

    async def GetDocument(
        self, request: retrieval_pb2.GetDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetDocumentResponse:
        if request.document_id == "missing":
            raise NotFoundError("document 'missing' not found")
        if request.document_id == "huge":
            raise TooLargeError("too big")
        if request.document_id == "bug":
            raise KeyError("secret internal detail")
        if request.document_id == "slow":
            await asyncio.sleep(5)
        # The title says which connection the call came on (the client's address).
        return retrieval_pb2.GetDocumentResponse(
            document=common_pb2.DocumentInfo(document_id=request.document_id, title=context.peer())
        )

    async def ListDocuments(
        self, request: retrieval_pb2.ListDocumentsRequest, context: aio.ServicerContext[Any, Any]
    ) -> Any:
        raise InvalidInputError("page_size 5000 is over the limit 1000")


@pytest.fixture
async def server_port() -> Any:
    server = aio.server(interceptors=[ErrorMappingInterceptor()])
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(FakeRetrieval(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(0)


def clients_for(port: int, timeout: float = 30.0) -> PlatformClients:
    return PlatformClients(
        PlatformSettings(retrieval_addr=f"127.0.0.1:{port}", rpc_timeout_seconds=timeout)
    )


@pytest.mark.parametrize(
    ("document_id", "code", "fragment"),
    [
        ("missing", grpc.StatusCode.NOT_FOUND, "document 'missing' not found"),
        ("huge", grpc.StatusCode.RESOURCE_EXHAUSTED, "too big"),
        ("bug", grpc.StatusCode.INTERNAL, "internal error: KeyError"),
    ],
)
async def test_domain_errors_map_to_status(
    server_port: int, document_id: str, code: grpc.StatusCode, fragment: str
) -> None:
    clients = clients_for(server_port)
    with pytest.raises(aio.AioRpcError) as caught:
        await clients.retrieval.GetDocument(
            retrieval_pb2.GetDocumentRequest(document_id=document_id)
        )
    await clients.close()
    assert caught.value.code() == code
    assert fragment in (caught.value.details() or "")
    assert "secret internal detail" not in (caught.value.details() or "")


async def test_default_deadline_applies_to_calls_without_one(server_port: int) -> None:
    clients = clients_for(server_port, timeout=0.2)
    with pytest.raises(aio.AioRpcError) as caught:
        await clients.retrieval.GetDocument(retrieval_pb2.GetDocumentRequest(document_id="slow"))
    await clients.close()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_downstream_names_the_unreachable_service() -> None:
    clients = PlatformClients(PlatformSettings(retrieval_addr="127.0.0.1:1", rpc_timeout_seconds=2))
    with pytest.raises(DownstreamError) as caught, downstream("retrieval", "127.0.0.1:1"):
        await clients.retrieval.GetDocument(retrieval_pb2.GetDocumentRequest(document_id="x"))
    await clients.close()
    assert caught.value.code_name == "UNAVAILABLE"
    assert "retrieval service at 127.0.0.1:1" in str(caught.value)


async def test_downstream_keeps_caller_errors(server_port: int) -> None:
    clients = clients_for(server_port)
    with pytest.raises(DownstreamError) as caught, downstream("retrieval", "x"):
        await clients.retrieval.ListDocuments(retrieval_pb2.ListDocumentsRequest(page_size=5000))
    await clients.close()
    assert caught.value.code_name == "INVALID_ARGUMENT"
    assert str(caught.value) == "page_size 5000 is over the limit 1000"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_QUERY_ADDR", "query.rag.svc:6000")
    monkeypatch.setenv("RAG_LISTEN_HOST", "0.0.0.0")
    settings = PlatformSettings()
    assert settings.address_of("query") == "query.rag.svc:6000"
    assert settings.listen_address_of("query") == "0.0.0.0:6000"
    with pytest.raises(ValueError, match="unknown service"):
        settings.address_of("nope")


async def test_calls_over_the_concurrency_cap_are_refused_but_health_checks_are_not() -> None:
    server = aio.server(interceptors=[ConcurrencyLimitInterceptor(1), ErrorMappingInterceptor()])
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(FakeRetrieval(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    clients = clients_for(port)
    try:
        stub = clients.retrieval
        held = stub.GetDocument(retrieval_pb2.GetDocumentRequest(document_id="slow"))
        codes = []
        for _ in range(200):  # until the held call occupies the one slot
            try:
                await stub.GetDocument(retrieval_pb2.GetDocumentRequest(document_id="fast"))
            except aio.AioRpcError as refused:
                codes.append(refused.code())
                assert "RAG_MAX_CONCURRENT_RPCS" in str(refused.details())
                break
            await asyncio.sleep(0.01)
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED]
        probe = health_pb2_grpc.HealthStub(clients.channel(f"127.0.0.1:{port}"))
        reply = await probe.Check(health_pb2.HealthCheckRequest())  # a probe still gets in
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        held.cancel()
        for _ in range(200):  # the slot comes back once the held call ends
            try:
                await stub.GetDocument(retrieval_pb2.GetDocumentRequest(document_id="fast"))
                break
            except aio.AioRpcError:
                await asyncio.sleep(0.01)
        else:
            pytest.fail("the cancelled call never gave its slot back")
    finally:
        await clients.close()
        await server.stop(0)
