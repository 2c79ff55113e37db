"""Caches: the in-process LRU, Redis (a real redis-server) and its outages, the
embedding cache in front of the batcher, and the answer cache's key and entries."""

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from redis.asyncio import Redis

from ragplatform.v1 import common_pb2, embedding_pb2, query_pb2
from services.embedding.backends import Matrix, TextKind
from services.embedding.batcher import MicroBatcher
from services.embedding.servicer import EmbeddingServicer
from services.embedding.vector_cache import VectorCache
from services.query.answer_cache import (
    AnswerScope,
    CachedAnswer,
    DocumentVersion,
    SemanticIndex,
    canonical_question,
)
from services.runtime.cache import LruCache, RedisCache, build_cache
from services.runtime.settings import PlatformSettings

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server not found: `make setup` installs Debian's redis-server package",
)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, its files in `directory`;
    `stop()` and `start()` simulate an outage and the recovery."""

    def __init__(self, directory: Path, password: str = "") -> None:
        assert REDIS_SERVER is not None
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        log = (self.directory / "redis.log").open("ab")
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            assert self._process.poll() is None, (self.directory / "redis.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGTERM), or `kill` it (SIGKILL: no goodbye to clients)."""
        if self._process is not None and self._process.poll() is None:
            if kill:
                self._process.kill()
            else:
                self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


def redis_cache(
    url: str, name: str, password: str = "", now: list[float] | None = None
) -> RedisCache:
    settings = PlatformSettings(
        cache_backend="redis", redis_url=url, redis_password=SecretStr(password)
    )
    if now is None:
        return RedisCache.from_settings(name, settings)
    return RedisCache.from_settings(name, settings, clock=lambda: now[0])


# --------------------------------------------------------------------------- LRU


async def test_lru_expires_entries_after_their_ttl() -> None:
    now = [100.0]
    cache = LruCache("unit-lru-ttl", max_entries=10, clock=lambda: now[0])
    await cache.set("a", b"1", ttl_seconds=5)
    await cache.set("b", b"2", ttl_seconds=50)
    assert await cache.get("a") == b"1"
    now[0] = 105.0
    assert await cache.get_many(["a", "b", "c"]) == [None, b"2", None]
    assert len(cache) == 1, "an expired entry is dropped when met"


async def test_lru_evicts_the_least_recently_used() -> None:
    cache = LruCache("unit-lru-evict", max_entries=2)
    await cache.set("a", b"1", 60)
    await cache.set("b", b"2", 60)
    assert await cache.get("a") == b"1"  # a is now more recent than b
    await cache.set("c", b"3", 60)
    assert await cache.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
    await cache.delete("a")
    await cache.delete("never-set")
    assert await cache.get("a") is None


async def test_lookups_are_counted_per_key() -> None:
    cache = build_cache(PlatformSettings(cache_backend="memory"), "unit-counted")
    assert isinstance(cache, LruCache)
    assert sample("rag_cache_requests_total", cache="unit-counted", result="hit") == 0
    await cache.set("k", b"v", 60)
    await cache.get_many(["k", "x", "y"])
    assert sample("rag_cache_requests_total", cache="unit-counted", result="hit") == 1
    assert sample("rag_cache_requests_total", cache="unit-counted", result="miss") == 2


# --------------------------------------------------------------------------- Redis


@needs_redis
async def test_redis_stores_with_expiry(redis_server: RedisServer) -> None:
    cache = redis_cache(redis_server.url, "unit-redis")
    try:
        await cache.set_many({"a": b"\x00\x01", "b": b"two"}, ttl_seconds=60)
        assert await cache.get_many(["a", "b", "c"]) == [b"\x00\x01", b"two", None]
        async with Redis.from_url(redis_server.url) as raw:
            ttl_ms = await raw.pttl("rag:unit-redis:a")
        assert 0 < ttl_ms <= 60_000, "Redis expires the key itself"
        await cache.delete("a")
        assert await cache.get("a") is None
    finally:
        await cache.close()


@needs_redis
async def test_redis_outage_degrades_to_misses_and_recovers(redis_server: RedisServer) -> None:
    now = [0.0]
    cache = redis_cache(redis_server.url, "unit-outage", now=now)
    try:
        await cache.set("k", b"v", 60)
        assert await cache.get("k") == b"v"
        errors = sample("rag_cache_errors_total", cache="unit-outage", operation="get")

        redis_server.stop()
        assert await cache.get("k") is None
        assert sample("rag_cache_errors_total", cache="unit-outage", operation="get") == errors + 1
        await cache.set("k2", b"v2", 60)  # skipped while Redis is considered down
        now[0] += 5
        await cache.set("k2", b"v2", 60)
        assert sample("rag_cache_errors_total", cache="unit-outage", operation="set") >= 1
        await cache.delete("k")
        assert await cache.get_many(["k", "k2"]) == [None, None]

        redis_server.start()  # the same port, empty (no persistence)
        now[0] += 5
        await cache.set("k3", b"v3", 60)
        assert await cache.get("k3") == b"v3", "the cache works again once Redis is back"
    finally:
        await cache.close()


@needs_redis
async def test_redis_password_comes_from_settings(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="s3cret") as server:
        good = redis_cache(server.url, "unit-auth", password="s3cret")
        bad = redis_cache(server.url, "unit-noauth")
        try:
            await good.set("k", b"v", 60)
            assert await good.get("k") == b"v"
            assert await bad.get("k") is None, "refused (NOAUTH): a miss, not an exception"
            assert sample("rag_cache_errors_total", cache="unit-noauth", operation="get") == 1
        finally:
            await good.close()
            await bad.close()


def test_a_ca_certificate_needs_a_tls_url(tmp_path: Path) -> None:
    settings = PlatformSettings(redis_url="redis://10.0.0.1:6379/0", redis_ca_cert=tmp_path)
    with pytest.raises(ValueError, match="rediss://"):
        RedisCache.from_settings("unit-ca", settings)


# --------------------------------------------------------------------------- embedding cache


class CountingEmbedder:
    """A deterministic stand-in for the model: vectors derived from the text."""

    model_name = "unit/counting"
    dimension = 8
    max_input_tokens = 256
    special_tokens_per_input = 2

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def tokenizer_json(self) -> bytes:
        return b""

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(text.split()) + 2 for text in texts]

    def embed(self, texts: Sequence[str], kind: TextKind, titles: Sequence[str] = ()) -> Matrix:
        self.embedded.extend(texts)
        rng = [np.random.default_rng(sum(map(ord, kind + text))) for text in texts]
        rows = np.array([r.standard_normal(self.dimension) for r in rng], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


async def test_embedding_cache_sends_only_misses_to_the_model_with_identical_vectors() -> None:
    model, plain_model = CountingEmbedder(), CountingEmbedder()
    batcher = MicroBatcher(model.embed, max_batch=32, max_wait=0.0)
    plain_batcher = MicroBatcher(plain_model.embed, max_batch=32, max_wait=0.0)
    store = LruCache("unit-embedding", 100)
    servicer = EmbeddingServicer(
        model, batcher, 100, VectorCache(store, model.model_name, model.dimension, 60)
    )
    uncached = EmbeddingServicer(plain_model, plain_batcher, 100)
    try:
        first = await servicer.EmbedQueries(
            embedding_pb2.EmbedQueriesRequest(texts=["alpha", "beta"]),
            None,  # type: ignore[arg-type]
        )
        second = await servicer.EmbedQueries(
            embedding_pb2.EmbedQueriesRequest(texts=["gamma", "alpha", "beta"]),
            None,  # type: ignore[arg-type]
        )
        fresh = await uncached.EmbedQueries(
            embedding_pb2.EmbedQueriesRequest(texts=["gamma", "alpha", "beta"]),
            None,  # type: ignore[arg-type]
        )
        documents = await servicer.EmbedDocuments(
            embedding_pb2.EmbedDocumentsRequest(texts=["alpha"]),
            None,  # type: ignore[arg-type]
        )
    finally:
        await batcher.close()
        await plain_batcher.close()
    assert model.embedded == ["alpha", "beta", "gamma", "alpha"], (
        "cached texts skip the model; a document is not a query"
    )
    assert [list(v.values) for v in second.vectors] == [list(v.values) for v in fresh.vectors]
    assert list(second.vectors[1].values) == list(first.vectors[0].values)
    assert list(documents.vectors[0].values) != list(first.vectors[0].values)


async def test_a_title_is_part_of_the_key_and_an_untitled_key_is_unchanged() -> None:
    store = LruCache("unit-embedding-title", 10)
    cache = VectorCache(store, "m", 4, 60)
    await cache.set_many(["t"], "document", np.ones((1, 4), np.float32), ["Title"])
    assert await cache.get_many(["t"], "document") == [None]
    assert await cache.get_many(["t"], "document", ["Other"]) == [None]
    assert (await cache.get_many(["t"], "document", ["Title"]))[0] is not None
    await cache.set_many(["t"], "document", np.ones((1, 4), np.float32))
    found = await cache.get_many(["t"], "document", [""])
    assert found[0] is not None, "no title: the key of an untitled text"


async def test_vector_of_another_size_is_a_miss() -> None:
    store = LruCache("unit-embedding-size", 10)
    await VectorCache(store, "m", 4, 60).set_many(["t"], "query", np.ones((1, 4), np.float32))
    assert await VectorCache(store, "m", 8, 60).get_many(["t"], "query") == [None]
    assert await VectorCache(store, "other", 4, 60).get_many(["t"], "query") == [None]


# --------------------------------------------------------------------------- answer cache


def scope(**changes: object) -> AnswerScope:
    fields: dict[str, object] = {
        "caller": common_pb2.Caller(tenant="acme", access_labels=["hr", "eng"]),
        "top_k": 3,
        "search_filter": common_pb2.MetadataFilter(),
        "retrieval_mode": common_pb2.RETRIEVAL_MODE_UNSPECIFIED,
        "mmr_lambda": 0.0,
        "tier": common_pb2.TIER_UNSPECIFIED,
        "routing_key": "",
        "index_version": "minilm|384|",
    }
    fields.update(changes)
    return AnswerScope.of(**fields)  # type: ignore[arg-type]


def test_question_normalisation() -> None:
    assert canonical_question("  How many  DAYS\tof leave？ ") == "how many days of leave"
    assert canonical_question("Straße?!") == canonical_question("STRASSE")
    assert canonical_question("ｆｕｌｌ width.") == "full width"
    assert canonical_question("What is C#?") != canonical_question("What is C?")
    assert canonical_question("What is C++") == "what is c++"


def test_key_ignores_spelling_and_order_but_not_meaning() -> None:
    base = scope().key("How many days of leave?")
    assert scope().key("how many days of LEAVE") == base
    reordered = common_pb2.Caller(tenant="acme", access_labels=["eng", "hr", "hr"])
    assert scope(caller=reordered).key("How many days of leave?") == base
    two = common_pb2.MetadataFilter(document_ids=["b", "a"])
    assert scope(search_filter=two).key("q") == scope(
        search_filter=common_pb2.MetadataFilter(document_ids=["a", "b", "a"])
    ).key("q")
    assert scope().key("How many days of holiday?") != base


@pytest.mark.parametrize(
    "change",
    [
        {"caller": common_pb2.Caller(tenant="globex", access_labels=["hr", "eng"])},
        {"caller": common_pb2.Caller(tenant="acme", access_labels=["hr"])},
        {"caller": common_pb2.Caller(tenant="acme")},
        {"search_filter": common_pb2.MetadataFilter(document_ids=["handbook"])},
        {"search_filter": common_pb2.MetadataFilter(tags=["policy"])},
        {"search_filter": common_pb2.MetadataFilter(date_from_unix=0)},
        {"retrieval_mode": common_pb2.RETRIEVAL_MODE_KEYWORD},
        {"top_k": 5},
        {"mmr_lambda": 0.5},
        {"tier": common_pb2.TIER_COMPLEX},
        {"routing_key": "user-7"},
        {"index_version": "minilm|384|reindex-2"},
    ],
)
def test_every_setting_of_the_answer_changes_the_key(change: dict[str, object]) -> None:
    assert scope(**change).key("q") != scope().key("q")
    assert scope(**change).scope_id != scope().scope_id


def test_cached_answer_round_trips_and_garbage_is_a_miss() -> None:
    entry = CachedAnswer(
        question="How many days?",
        created_at_unix=1_700_000_000.5,
        documents={"handbook": DocumentVersion("ab" * 32, 1_700_000_000, ("hr",))},
        response=query_pb2.AskResponse(
            answer="25 days [1].", citations=[query_pb2.Citation(number=1, document_id="handbook")]
        ),
    )
    assert CachedAnswer.from_bytes(entry.to_bytes()) == entry
    assert CachedAnswer.from_bytes(b"not json") is None
    assert CachedAnswer.from_bytes(b'{"format": 0}') is None


def test_semantic_index_matches_within_tenant_scope_and_threshold() -> None:
    now = [0.0]
    index = SemanticIndex(min_similarity=0.9, max_per_tenant=2, clock=lambda: now[0])
    index.add("acme", "s1", "k1", [1.0, 0.0, 0.0], b"one", ttl_seconds=10)
    index.add("acme", "s1", "k2", [0.0, 1.0, 0.0], b"two", ttl_seconds=10)
    found = index.nearest("acme", "s1", [0.99, 0.1, 0.0])
    assert found is not None and found[:2] == ("k1", b"one") and found[2] > 0.99
    assert index.nearest("acme", "s1", [0.7, 0.7, 0.0]) is None, "below the threshold"
    assert index.nearest("globex", "s1", [1.0, 0.0, 0.0]) is None, "another tenant"
    assert index.nearest("acme", "s2", [1.0, 0.0, 0.0]) is None, "other settings"
    index.add("acme", "s1", "k3", [0.0, 0.0, 1.0], b"three", ttl_seconds=10)
    assert index.nearest("acme", "s1", [0.0, 1.0, 0.0]) is None, "k2, least recently used, left"
    index.remove("acme", "k1")
    assert index.nearest("acme", "s1", [1.0, 0.0, 0.0]) is None
    now[0] = 11
    assert index.nearest("acme", "s1", [0.0, 0.0, 1.0]) is None, "expired"
