"""Streaming end to end: generation → query → gateway SSE, with the new answer fields.

Real GenerationServicer (engine with a scripted backend that breaks mid-answer,
then the extractive answerer), real QueryPipeline behind a real QueryServicer,
real gateway app; only embedding and retrieval are small in-process fakes.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc import aio

from ragplatform.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.common.errors import UnavailableError
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.generation.engine import Backend, GenerationEngine
from services.generation.extractive import ExtractiveAnswerer
from services.generation.grounding import LexicalGroundingChecker
from services.generation.resilience import CircuitBreaker
from services.generation.router import COMPLEX, SIMPLE, Router
from services.generation.servicer import GenerationServicer
from services.query.pipeline import QueryLimits, QueryPipeline
from services.query.servicer import QueryServicer
from services.runtime.clients import PlatformClients
from services.runtime.costs import PriceTable
from services.runtime.errors import ErrorMappingInterceptor
from services.runtime.settings import PlatformSettings
from tests.unit.test_generation_engine import Broken, Scripted

LEAVE = "Full-time employees get 25 days of paid leave per year."
QUESTION = "How many days of paid leave do full-time employees get?"


class FakeEmbedding(embedding_pb2_grpc.EmbeddingServiceServicer):
    async def EmbedQueries(self, request: Any, context: Any) -> embedding_pb2.EmbedQueriesResponse:
        return embedding_pb2.EmbedQueriesResponse(
            vectors=[embedding_pb2.Vector(values=[1.0, 0.0])], model="fake"
        )

    async def GetModelInfo(self, request: Any, context: Any) -> embedding_pb2.GetModelInfoResponse:
        return embedding_pb2.GetModelInfoResponse(model="fake", dimension=2)


class FakeRetrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    async def Search(self, request: Any, context: Any) -> retrieval_pb2.SearchResponse:
        chunk = common_pb2.Chunk(
            chunk_id="c1", document_id="leave", title="Leave policy", text=LEAVE
        )
        return retrieval_pb2.SearchResponse(
            results=[common_pb2.ScoredChunk(chunk=chunk, score=0.8)]
        )

    async def GetStats(self, request: Any, context: Any) -> retrieval_pb2.GetStatsResponse:
        return retrieval_pb2.GetStatsResponse(embedding_model="fake", dimension=2)


@dataclass
class Platform:
    http: httpx.AsyncClient
    flaky: Scripted


@pytest_asyncio.fixture(loop_scope="session")
async def platform() -> AsyncIterator[Platform]:
    flaky = Scripted("flaky", "flaky-model")
    breaker = CircuitBreaker("flaky", 100, 30.0)
    engine = GenerationEngine(
        router=Router(),
        backends={
            "flaky": Backend(flaky, 5.0, breaker),
            "extractive": Backend(ExtractiveAnswerer(), 5.0, CircuitBreaker("extractive", 5, 30.0)),
        },
        chains={SIMPLE: ["flaky", "extractive"], COMPLEX: ["extractive"]},
        arms={},
        checker=LexicalGroundingChecker(),
        grounding_threshold=0.8,
        prices=PriceTable({}),
    )
    server = aio.server(interceptors=[ErrorMappingInterceptor()])
    port = server.add_insecure_port("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    settings = PlatformSettings(
        embedding_addr=address, retrieval_addr=address, generation_addr=address, query_addr=address
    )
    backend_clients = PlatformClients(settings)
    pipeline = QueryPipeline(backend_clients, QueryLimits(3, 20, 2000))
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(FakeEmbedding(), server)
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(FakeRetrieval(), server)
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(engine), server)
    query_pb2_grpc.add_QueryServiceServicer_to_server(QueryServicer(pipeline), server)
    await server.start()
    gateway_settings = GatewaySettings(query_addr=address, gateway_api_keys="")
    gateway_clients = PlatformClients(gateway_settings)
    app = create_app(gateway_settings, gateway_clients)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
    yield Platform(http, flaky)
    await http.aclose()
    await gateway_clients.close()
    await backend_clients.close()
    await server.stop(None)


def events_of(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_sse_carries_deltas_a_restart_and_the_final_answer(platform: Platform) -> None:
    platform.flaky.script.append(Broken(UnavailableError("flaky: connection reset"), deltas=2))
    response = await platform.http.post("/v1/ask/stream", json={"question": QUESTION})
    assert response.status_code == 200
    events = events_of(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[:3] == ["delta", "delta", "restart"]
    assert events[2][1] == {
        "reason": "flaky failed mid-answer: UNAVAILABLE: flaky: connection reset"
    }
    assert kinds[-1] == "answer" and set(kinds[3:-1]) == {"delta"}
    final = events[-1][1]
    assert "".join(data["text"] for _, data in events[3:-1]) == final["answer"]
    assert final["backend"] == "extractive"
    assert final["citations"][0]["document_id"] == "leave"
    assert final["cost_usd"] == 0.0
    assert final["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert final["grounding"]["score"] == 1.0
    route = final["route"]
    assert (route["tier"], route["backend"]) == ("TIER_SIMPLE", "extractive")
    assert route["reason"].startswith("simple: ")
    assert route["fallbacks"][0]["backend"] == "flaky"
    assert route["fallbacks"][0]["error_code"] == "UNAVAILABLE"


async def test_tier_override_and_routing_key_pass_through_to_generation(
    platform: Platform,
) -> None:
    body = {"question": QUESTION, "tier": "TIER_COMPLEX", "routing_key": "user-7"}
    response = await platform.http.post("/v1/ask", json=body)
    assert response.status_code == 200
    route = response.json()["route"]
    assert (route["tier"], route["overridden"], route["backend"]) == (
        "TIER_COMPLEX",
        True,
        "extractive",
    )
    assert route["reason"].startswith("complex: requested")


async def test_unknown_tier_is_a_validation_error(platform: Platform) -> None:
    response = await platform.http.post("/v1/ask", json={"question": QUESTION, "tier": "TIER_X"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"


class EndsEarly(generation_pb2_grpc.GenerationServiceServicer):
    """A generation service whose stream breaks off: deltas, then no answer."""

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield generation_pb2.GenerateStreamResponse(delta="Full-time employees")


async def test_a_stream_without_its_answer_is_unavailable_and_names_generation() -> None:
    """The request was fine: the client must see the generation service's
    failure (UNAVAILABLE, retriable), not an error of its own."""
    server = aio.server(interceptors=[ErrorMappingInterceptor()])
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    clients = PlatformClients(
        PlatformSettings(embedding_addr=address, retrieval_addr=address, generation_addr=address)
    )
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(FakeEmbedding(), server)
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(FakeRetrieval(), server)
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(EndsEarly(), server)
    query_pb2_grpc.add_QueryServiceServicer_to_server(
        QueryServicer(QueryPipeline(clients, QueryLimits(3, 20, 2000))), server
    )
    await server.start()
    channel = aio.insecure_channel(address)
    request = query_pb2.AskStreamRequest(question=QUESTION, caller=common_pb2.Caller(tenant="acme"))
    try:
        with pytest.raises(aio.AioRpcError) as caught:
            async for _ in query_pb2_grpc.QueryServiceStub(channel).AskStream(request):
                pass
    finally:
        await channel.close()
        await clients.close()
        await server.stop(None)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"generation service at {address}" in (caught.value.details() or "")
