"""Caching on a real platform, every service its own process: a repeated question
is served from the answer cache (and counted), a document update or delete makes
the answers citing it miss, tenants never share answers, the embedding cache
returns the model's own vectors, and with Redis as the store an outage of Redis
costs no request.

Two platforms of their own (ports 5255x and 5256x): the default in-process
caches, and Redis (a real redis-server) with the semantic cache on.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ragplatform.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    ingestion_pb2,
    query_pb2,
)
from services.cli.supervisor import Platform, metrics_url
from tests.integration.conftest import Stubs
from tests.unit.test_cache import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.integration

ACME = common_pb2.Caller(tenant="acme")
GLOBEX = common_pb2.Caller(tenant="globex")
EXACT = query_pb2.CacheHit.KIND_EXACT


def ports(prefix: str) -> dict[str, str]:
    return {
        "RAG_QUERY_ADDR": f"127.0.0.1:{prefix}1",
        "RAG_INGESTION_ADDR": f"127.0.0.1:{prefix}2",
        "RAG_EMBEDDING_ADDR": f"127.0.0.1:{prefix}3",
        "RAG_RETRIEVAL_ADDR": f"127.0.0.1:{prefix}4",
        "RAG_GENERATION_ADDR": f"127.0.0.1:{prefix}5",
        "RAG_GATEWAY_PORT": f"{prefix}0",
        "RAG_DRAIN_SECONDS": "1",
    }


@dataclass
class Running:
    platform: Platform
    stubs: Stubs

    def metric(self, process: str, name: str, **labels: str) -> float:
        """A sample from `process`'s /metrics (0 when absent)."""
        text = httpx.get(metrics_url(self.platform.settings, process), timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def answer_hits(self) -> float:
        return self.metric("query", "rag_cache_requests_total", cache="answer", result="hit")

    def upload(self, caller: common_pb2.Caller, document_id: str, text: str) -> None:
        header = ingestion_pb2.DocumentHeader(
            filename=f"{document_id}.md", document_id=document_id, tenant=caller.tenant
        )
        requests = [
            ingestion_pb2.UploadDocumentRequest(header=header),
            ingestion_pb2.UploadDocumentRequest(data=text.encode()),
        ]
        result = self.stubs.ingestion.UploadDocument(iter(requests), timeout=60).result
        assert result.status in (
            ingestion_pb2.IngestResult.STATUS_CREATED,
            ingestion_pb2.IngestResult.STATUS_UPDATED,
        ), result.message

    def ask(
        self, question: str, caller: common_pb2.Caller = ACME, **fields: object
    ) -> query_pb2.AskResponse:
        request = query_pb2.AskRequest(question=question, caller=caller, **fields)  # type: ignore[arg-type]
        response: query_pb2.AskResponse = self.stubs.query.Ask(request, timeout=60)
        return response


def version_checks(running: Running) -> float:
    """Cited documents whose version the query service checked with retrieval."""
    return running.metric("query", "rag_answer_cache_version_checks_total")


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with Platform(tmp_path_factory.mktemp("caching"), env=ports("5255")) as platform:
        stubs = Stubs(platform)
        yield Running(platform, stubs)
        stubs.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server not found: `make setup` installs Debian's redis-server package")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def on_redis(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Running]:
    env = {
        **ports("5256"),
        "RAG_CACHE_BACKEND": "redis",
        "RAG_REDIS_URL": redis_server.url,
        "RAG_SEMANTIC_CACHE_ENABLED": "true",
    }
    with Platform(tmp_path_factory.mktemp("caching-redis"), env=env) as platform:
        stubs = Stubs(platform)
        yield Running(platform, stubs)
        stubs.close()


PARKING = "# Parking\n\nThe staff parking fee at the Lyon office is 12 euros per day.\n"


def shuttle(time: str) -> str:
    return f"# Shuttle\n\nThe airport shuttle leaves the Lyon office at {time} each morning.\n"


def canteen(time: str) -> str:
    return f"# Canteen\n\nThe canteen at the Lyon office opens at {time}.\n"


def stages(response: query_pb2.AskResponse) -> set[str]:
    return {timing.stage for timing in response.timings}


def test_a_repeated_question_is_served_from_the_cache(memory: Running) -> None:
    memory.upload(ACME, "parking", PARKING)
    question = "What is the staff parking fee at the Lyon office?"
    hits = memory.answer_hits()

    first = memory.ask(question)
    assert not first.HasField("cache") and not first.declined, first.answer
    assert "12 euros" in first.answer and first.citations
    second = memory.ask("  what is the staff parking fee at the LYON office ")
    assert second.HasField("cache"), "the same question, spelt differently, is a hit"
    assert second.cache.kind == EXACT and second.cache.cached_question == question
    assert second.cache.age_seconds >= 0
    assert (second.answer, list(second.citations)) == (first.answer, list(first.citations))
    assert second.request_id != first.request_id
    assert stages(second) == {"cache", "total"}, "a hit costs no model call"
    assert memory.answer_hits() == hits + 1

    fresh = memory.ask(question, bypass_cache=True)
    assert not fresh.HasField("cache") and {"embed", "generate"} <= stages(fresh)
    debug = memory.ask(question, debug=True)
    assert not debug.HasField("cache") and debug.debug.retrieved, "debug requests bypass it"

    events = list(
        memory.stubs.query.AskStream(
            query_pb2.AskStreamRequest(question=question, caller=ACME), timeout=60
        )
    )
    assert [event.WhichOneof("event") for event in events] == ["delta", "final"]
    assert events[0].delta == events[1].final.answer == first.answer
    assert events[1].final.cache.kind == EXACT


def test_an_update_or_delete_invalidates_the_answers_citing_the_document(
    memory: Running,
) -> None:
    """Every hit checks the versions of the documents it cites with one lookup,
    so the first ask after a re-ingest or a delete misses."""
    question = "When does the airport shuttle leave the Lyon office?"
    memory.upload(ACME, "shuttle", shuttle("7:15"))
    first = memory.ask(question)
    assert "7:15" in first.answer
    checks = version_checks(memory)
    assert memory.ask(question).HasField("cache")
    cited = {citation.document_id for citation in first.citations}
    assert version_checks(memory) == checks + len(cited), "the hit checked each cited document"

    memory.upload(ACME, "shuttle", shuttle("8:40"))
    updated = memory.ask(question)
    assert not updated.HasField("cache"), "the cited document changed"
    assert "8:40" in updated.answer and "7:15" not in updated.answer
    again = memory.ask(question)
    assert again.HasField("cache") and "8:40" in again.answer, "the new answer is cached"
    changed = memory.metric(
        "query", "rag_cache_invalidations_total", cache="answer", reason="changed"
    )
    assert changed >= 1

    memory.stubs.ingestion.DeleteDocument(
        ingestion_pb2.DeleteDocumentRequest(document_id="shuttle", tenant="acme"), timeout=30
    )
    deleted = memory.ask(question)
    assert not deleted.HasField("cache"), "the cited document is gone"
    assert "8:40" not in deleted.answer


def test_on_redis_an_update_invalidates_the_cached_answer(on_redis: Running) -> None:
    question = "When does the canteen at the Lyon office open?"
    on_redis.upload(ACME, "canteen", canteen("11:30"))
    assert "11:30" in on_redis.ask(question).answer
    assert on_redis.ask(question).HasField("cache")
    on_redis.upload(ACME, "canteen", canteen("12:10"))
    updated = on_redis.ask(question)
    assert not updated.HasField("cache") and "12:10" in updated.answer


def test_tenants_and_access_labels_never_share_answers(memory: Running) -> None:
    question = "When does the canteen at the Lyon office open?"
    memory.upload(ACME, "canteen", canteen("11:30"))
    memory.upload(GLOBEX, "canteen", canteen("12:45"))
    assert "11:30" in memory.ask(question, ACME).answer
    assert memory.ask(question, ACME).HasField("cache")

    other = memory.ask(question, GLOBEX)
    assert not other.HasField("cache"), "another tenant's cached answer is never served"
    assert "12:45" in other.answer and "11:30" not in other.answer
    assert "12:45" in memory.ask(question, GLOBEX).answer

    labelled = common_pb2.Caller(tenant="acme", access_labels=["hr"])
    assert not memory.ask(question, labelled).HasField("cache"), "other labels, other key"


def test_the_embedding_cache_returns_the_models_own_vectors(memory: Running) -> None:
    text = "A sentence embedded twice, the second time from the cache."
    hits = memory.metric("embedding", "rag_cache_requests_total", cache="embedding", result="hit")
    with grpc.insecure_channel(memory.platform.settings.embedding_addr) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        request = embedding_pb2.EmbedQueriesRequest(texts=[text])
        first = stub.EmbedQueries(request, timeout=30)
        second = stub.EmbedQueries(request, timeout=30)
    assert list(second.vectors[0].values) == list(first.vectors[0].values)
    assert len(first.vectors[0].values) == 384
    after = memory.metric("embedding", "rag_cache_requests_total", cache="embedding", result="hit")
    assert after == hits + 1


def test_a_paraphrase_is_served_by_the_semantic_cache(on_redis: Running) -> None:
    on_redis.upload(ACME, "parking", PARKING)
    first = on_redis.ask("What is the staff parking fee at the Lyon office?")
    assert not first.HasField("cache") and "12 euros" in first.answer
    assert on_redis.ask("What is the staff parking fee at the Lyon office").cache.kind == EXACT

    paraphrase = on_redis.ask("What is the staff parking fee in the Lyon office?")
    assert paraphrase.cache.kind == query_pb2.CacheHit.KIND_SEMANTIC
    assert paraphrase.cache.similarity >= 0.95
    assert paraphrase.answer == first.answer
    other_tenant = on_redis.ask("What is the staff parking fee in the Lyon office?", GLOBEX)
    assert not other_tenant.HasField("cache")


def test_asks_succeed_while_redis_is_down(on_redis: Running, redis_server: RedisServer) -> None:
    question = "Where can staff park at the Lyon office?"
    on_redis.upload(
        ACME, "garage", "# Garage\n\nStaff park in the underground garage on level -2.\n"
    )
    on_redis.ask(question)
    assert on_redis.ask(question).HasField("cache"), "the answer went through Redis"
    errors = on_redis.metric("query", "rag_cache_errors_total", cache="answer", operation="get")

    redis_server.stop(kill=True)
    during = on_redis.ask("Which level is the underground staff garage on?")
    assert not during.declined and "-2" in during.answer
    assert on_redis.ask(question, bypass_cache=True).citations
    after = on_redis.metric("query", "rag_cache_errors_total", cache="answer", operation="get")
    assert after > errors, "the outage is counted"
    log = on_redis.platform.log_path("query").read_text()
    assert "cache unavailable" in log
