"""Rate limits and the HTTP concurrency cap at the gateway.

The token buckets are tested on both backends with the same cases (in-process,
and Redis with a real redis-server running the Lua script); the middlewares
through the real gateway app in front of small gRPC fakes, for what a client
sees: 429 or 503, Retry-After, the JSON error shape, and which requests are
never limited (reads, health probes).
"""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from pydantic import ValidationError
from redis.asyncio import Redis

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.gateway.app import create_app
from services.gateway.ratelimit import (
    Bucket,
    MemoryBuckets,
    Rate,
    RedisBuckets,
    Refusal,
    TokenBuckets,
    retry_after,
    route_class_of,
)
from services.gateway.settings import GatewaySettings
from services.runtime.clients import PlatformClients
from tests.unit.test_cache import RedisServer, needs_redis


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rate(per_second: float, burst: int) -> Rate:
    return Rate(per_second, burst, "RAG_TEST_RATE")


# --------------------------------------------------------------------- buckets


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def buckets(request: pytest.FixtureRequest) -> AsyncIterator[TokenBuckets]:
    """Each backend, empty: the Redis one on its own database, flushed."""
    store: TokenBuckets
    if request.param == "memory":
        store = MemoryBuckets()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = Redis.from_url(server.url)
        await client.flushdb()
        store = RedisBuckets(client)
    yield store
    await store.close()


async def test_a_bucket_admits_its_burst_then_refuses_until_it_refills(
    buckets: TokenBuckets,
) -> None:
    bucket = [Bucket("t:burst", rate(1.0, 3))]
    assert [await buckets.take(bucket) for _ in range(3)] == [None, None, None]
    refusal = await buckets.take(bucket)
    assert refusal is not None and refusal.index == 0
    assert 0.5 < refusal.wait_seconds <= 1.0  # about one token's time at 1/s
    fast = [Bucket("t:fast", rate(50.0, 1))]
    assert await buckets.take(fast) is None
    assert await buckets.take(fast) is not None
    await asyncio.sleep(0.05)  # 1/50 s refills a token
    assert await buckets.take(fast) is None


async def test_a_request_takes_from_all_its_buckets_or_from_none(buckets: TokenBuckets) -> None:
    key, tenant = Bucket("t:key", rate(0.01, 5)), Bucket("t:tenant", rate(0.01, 1))
    assert await buckets.take([key, tenant]) is None
    refusal = await buckets.take([key, tenant])
    assert refusal is not None and refusal.index == 1, "the tenant's bucket is the empty one"
    # The refused request left the key's bucket alone: 4 tokens remain of 5.
    assert [await buckets.take([key]) for _ in range(5)][:4] == [None] * 4
    assert await buckets.take([key]) is not None


async def test_concurrent_takes_never_overdraw_a_bucket(buckets: TokenBuckets) -> None:
    bucket = [Bucket("t:race", rate(0.01, 10))]
    results = await asyncio.gather(*(buckets.take(bucket) for _ in range(60)))
    assert sum(result is None for result in results) == 10


async def test_memory_buckets_refill_by_the_clock() -> None:
    now = [100.0]
    store = MemoryBuckets(clock=lambda: now[0])
    bucket = [Bucket("k", rate(2.0, 2))]
    assert await store.take(bucket) is None
    assert await store.take(bucket) is None
    assert await store.take(bucket) == Refusal(0, 0.5)
    now[0] += 0.25
    assert await store.take(bucket) == Refusal(0, 0.25)  # half a token refilled
    now[0] += 10  # never more than the burst
    assert [await store.take(bucket) for _ in range(3)] == [None, None, Refusal(0, 0.5)]


@needs_redis
async def test_redis_outage_falls_back_to_the_replicas_own_buckets(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        store = RedisBuckets(Redis.from_url(server.url, socket_timeout=0.5))
        bucket = [Bucket("t:outage", rate(0.01, 2))]
        assert await store.take(bucket) is None
        errors = sample("rag_http_rate_limit_errors_total")
        server.stop()
        # Redis is gone: the replica limits on its own (a fresh local bucket of 2).
        assert [await store.take(bucket) for _ in range(3)][2] is not None
        assert sample("rag_http_rate_limit_errors_total") == errors + 1, "one try, then skipped"
        await store.close()


def test_retry_after_is_whole_seconds_rounded_up_and_never_zero() -> None:
    assert [retry_after(s) for s in (0.0, 0.01, 1.0, 1.2, 59.5)] == [1, 1, 1, 2, 60]


def test_route_classes() -> None:
    assert route_class_of("POST", "/v1/ask") == "ask"
    assert route_class_of("POST", "/v1/ask/stream") == "ask"
    assert route_class_of("POST", "/v1/documents") == "upload"
    assert route_class_of("DELETE", "/v1/documents/a/b.md") == "write"
    assert route_class_of("GET", "/v1/documents/a") is None
    assert route_class_of("GET", "/v1/documents") is None


def test_settings_name_each_limit_and_zero_disables_it() -> None:
    settings = GatewaySettings(gateway_ask_rate_per_key=0, gateway_upload_rate_per_tenant=2.5)
    limits = settings.rate_limits()
    assert limits["ask"].per_key is None
    assert limits["upload"].per_tenant == Rate(2.5, 50, "RAG_GATEWAY_UPLOAD_RATE_PER_TENANT")
    with pytest.raises(ValidationError):
        GatewaySettings(gateway_ask_burst_per_key=0)
    with pytest.raises(ValidationError):
        GatewaySettings(gateway_max_concurrent_requests=-1)


# --------------------------------------------------------------------- gateway


class FakeQuery(query_pb2_grpc.QueryServiceServicer):
    """Answers at once, except the question `wait`, held until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0

    async def Ask(self, request: query_pb2.AskRequest, context: Any) -> query_pb2.AskResponse:
        if request.question == "wait":
            self.waiting += 1
            await self.release.wait()
        return query_pb2.AskResponse(answer=f"answer for {request.caller.tenant}")

    async def AskStream(
        self, request: query_pb2.AskStreamRequest, context: Any
    ) -> AsyncIterator[query_pb2.AskStreamResponse]:
        yield query_pb2.AskStreamResponse(final=query_pb2.AskResponse(answer="streamed"))


class FakeIngestion(ingestion_pb2_grpc.IngestionServiceServicer):
    """Counts the uploads that reached it."""

    def __init__(self) -> None:
        self.uploads = 0

    async def UploadDocument(
        self, request_iterator: Any, context: Any
    ) -> ingestion_pb2.UploadDocumentResponse:
        async for _ in request_iterator:
            pass
        self.uploads += 1
        result = ingestion_pb2.IngestResult(status=ingestion_pb2.IngestResult.STATUS_CREATED)
        return ingestion_pb2.UploadDocumentResponse(result=result)


class FakeRetrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    async def ListDocuments(
        self, request: retrieval_pb2.ListDocumentsRequest, context: Any
    ) -> retrieval_pb2.ListDocumentsResponse:
        return retrieval_pb2.ListDocumentsResponse()

    async def LookupDocuments(
        self, request: retrieval_pb2.LookupDocumentsRequest, context: Any
    ) -> retrieval_pb2.LookupDocumentsResponse:
        return retrieval_pb2.LookupDocumentsResponse(
            found=[common_pb2.DocumentInfo(document_id=d) for d in request.document_ids]
        )


class Fakes:
    def __init__(self) -> None:
        self.query = FakeQuery()
        self.ingestion = FakeIngestion()
        self.address = ""


@pytest_asyncio.fixture(loop_scope="session")
async def fakes() -> AsyncIterator[Fakes]:
    server = aio.server()
    found = Fakes()
    query_pb2_grpc.add_QueryServiceServicer_to_server(found.query, server)
    ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(found.ingestion, server)
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(FakeRetrieval(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    found.address = f"127.0.0.1:{port}"
    yield found
    found.query.release.set()
    await server.stop(None)


KEYS = {
    "key-a1": {"tenant": "acme"},
    "key-a2": {"tenant": "acme"},
    "key-g": {"tenant": "globex"},
}


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(fakes: Fakes) -> AsyncIterator[Any]:
    """Factory of HTTP clients on a gateway app with the given settings."""
    opened: list[tuple[httpx.AsyncClient, PlatformClients]] = []

    async def make(**overrides: Any) -> httpx.AsyncClient:
        address = fakes.address
        values: dict[str, Any] = {
            "query_addr": address,
            "ingestion_addr": address,
            "retrieval_addr": address,
            "gateway_api_keys": json.dumps(KEYS),
        }
        settings = GatewaySettings(**(values | overrides))
        clients = PlatformClients(settings)
        transport = httpx.ASGITransport(app=create_app(settings, clients))
        http = httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=10)
        opened.append((http, clients))
        return http

    yield make
    for http, clients in opened:
        await http.aclose()
        await clients.close()


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_refused(response: httpx.Response, status: int, code: str, retry: str) -> str:
    """The refusal's message, after checking its status, Retry-After and JSON shape."""
    assert response.status_code == status, response.text
    assert response.headers["retry-after"] == retry
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


async def test_asks_over_a_keys_rate_are_429_with_retry_after(gateway: Any) -> None:
    http = await gateway(
        gateway_ask_rate_per_key=0.5,
        gateway_ask_burst_per_key=2,
        gateway_ask_rate_per_tenant=0.25,
        gateway_ask_burst_per_tenant=3,
    )
    refused_before = sample(
        "rag_http_rate_limited_total", route_class="ask", limit="api_key", tenant="acme"
    )
    ask = {"question": "q"}
    assert (await http.post("/v1/ask", json=ask, headers=as_key("key-a1"))).status_code == 200
    streamed = await http.post("/v1/ask/stream", json=ask, headers=as_key("key-a1"))
    assert streamed.status_code == 200, "streamed asks share the ask buckets"
    message = assert_refused(
        await http.post("/v1/ask", json=ask, headers=as_key("key-a1")),
        429,
        "RESOURCE_EXHAUSTED",
        "2",  # one token at 0.5/s
    )
    assert "this API key" in message and "RAG_GATEWAY_ASK_RATE_PER_KEY" in message
    assert (
        sample("rag_http_rate_limited_total", route_class="ask", limit="api_key", tenant="acme")
        == refused_before + 1
    )
    # Another key of the tenant has its own bucket, but shares the tenant's: 1 left of 3.
    assert (await http.post("/v1/ask", json=ask, headers=as_key("key-a2"))).status_code == 200
    message = assert_refused(
        await http.post("/v1/ask", json=ask, headers=as_key("key-a2")),
        429,
        "RESOURCE_EXHAUSTED",
        "4",  # one token at 0.25/s
    )
    assert "this tenant" in message and "RAG_GATEWAY_ASK_RATE_PER_TENANT" in message
    # Another tenant is untouched; reads are never limited.
    assert (await http.post("/v1/ask", json=ask, headers=as_key("key-g"))).status_code == 200
    for _ in range(5):
        assert (await http.get("/v1/documents", headers=as_key("key-a1"))).status_code == 200


async def test_a_refused_upload_is_not_read_and_classes_have_their_own_buckets(
    gateway: Any, fakes: Fakes
) -> None:
    http = await gateway(gateway_upload_rate_per_key=0.1, gateway_upload_burst_per_key=1)
    upload = {"file": ("notes.txt", b"some text")}
    assert (await http.post("/v1/documents", files=upload, headers=as_key("key-g"))).is_success
    uploads = fakes.ingestion.uploads
    refused = await http.post("/v1/documents", files=upload, headers=as_key("key-g"))
    message = assert_refused(refused, 429, "RESOURCE_EXHAUSTED", "10")
    assert "uploads" in message
    assert fakes.ingestion.uploads == uploads, "the refused upload never reached ingestion"
    # Asks are another class: still allowed.
    ask = await http.post("/v1/ask", json={"question": "q"}, headers=as_key("key-g"))
    assert ask.status_code == 200


async def test_document_writes_are_limited(gateway: Any) -> None:
    http = await gateway(gateway_write_rate_per_tenant=0.2, gateway_write_burst_per_tenant=1)
    assert (await http.delete("/v1/documents/d1", headers=as_key("key-a1"))).status_code != 429
    refused = await http.delete("/v1/documents/d2", headers=as_key("key-a2"))
    assert_refused(refused, 429, "RESOURCE_EXHAUSTED", "5")


async def test_without_api_keys_the_default_tenant_is_limited(gateway: Any) -> None:
    http = await gateway(
        gateway_api_keys="", gateway_ask_rate_per_tenant=0.5, gateway_ask_burst_per_tenant=1
    )
    assert (await http.post("/v1/ask", json={"question": "q"})).status_code == 200
    refused = await http.post("/v1/ask", json={"question": "q"})
    assert_refused(refused, 429, "RESOURCE_EXHAUSTED", "2")


async def test_zero_disables_a_limit(gateway: Any) -> None:
    http = await gateway(gateway_ask_rate_per_key=0, gateway_ask_rate_per_tenant=0)
    for _ in range(60):
        reply = await http.post("/v1/ask", json={"question": "q"}, headers=as_key("key-a1"))
        assert reply.status_code == 200


@needs_redis
async def test_replicas_share_redis_buckets(gateway: Any, redis_server: RedisServer) -> None:
    shared = {
        "gateway_rate_limit_backend": "redis",
        "redis_url": redis_server.url,
        "gateway_ask_rate_per_key": 0.1,
        "gateway_ask_burst_per_key": 2,
    }
    async with Redis.from_url(redis_server.url) as raw:
        await raw.flushdb()
    first, second = await gateway(**shared), await gateway(**shared)
    ask = {"question": "q"}
    assert (await first.post("/v1/ask", json=ask, headers=as_key("key-a1"))).status_code == 200
    assert (await second.post("/v1/ask", json=ask, headers=as_key("key-a1"))).status_code == 200
    refused = await first.post("/v1/ask", json=ask, headers=as_key("key-a1"))
    assert_refused(refused, 429, "RESOURCE_EXHAUSTED", "10")
    async with Redis.from_url(redis_server.url) as raw:
        names = [name.decode() for name in await raw.keys("rag:ratelimit:*")]
    assert names and all("key-a1" not in name for name in names), "keys are never stored"


async def test_requests_over_the_concurrency_cap_are_503_but_probes_pass(
    gateway: Any, fakes: Fakes
) -> None:
    http = await gateway(gateway_max_concurrent_requests=2, gateway_api_keys="")
    refused_before = sample("rag_http_refused_total", route_class="ask")
    fakes.query.release.clear()
    fakes.query.waiting = 0
    held = [asyncio.create_task(http.post("/v1/ask", json={"question": "wait"})) for _ in range(2)]
    for _ in range(500):  # until both occupy their slot in the fake
        if fakes.query.waiting == 2:
            break
        await asyncio.sleep(0.01)
    assert fakes.query.waiting == 2
    message = assert_refused(
        await http.post("/v1/ask", json={"question": "now"}), 503, "UNAVAILABLE", "1"
    )
    assert "RAG_GATEWAY_MAX_CONCURRENT_REQUESTS" in message
    assert (await http.get("/v1/documents")).status_code == 503
    assert sample("rag_http_refused_total", route_class="ask") == refused_before + 1
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).status_code == 200
    fakes.query.release.set()
    assert [reply.status_code for reply in await asyncio.gather(*held)] == [200, 200]
    assert (await http.post("/v1/ask", json={"question": "now"})).status_code == 200


async def test_the_openapi_document_lists_429_on_every_limited_route(gateway: Any) -> None:
    spec = (await (await gateway()).get("/openapi.json")).json()
    for path, method in (
        ("/v1/ask", "post"),
        ("/v1/ask/stream", "post"),
        ("/v1/documents", "post"),
        ("/v1/documents/{document_id}", "delete"),
    ):
        assert "429" in spec["paths"][path][method]["responses"], (path, method)
