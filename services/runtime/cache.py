"""Caches behind one small interface: an in-process LRU by default, Redis in production.

A cache here only ever saves work; it is never the source of truth. So a cache
that fails must cost speed, never answers: `RedisCache` catches every Redis
error, counts it (`rag_cache_errors_total{cache,operation}`), logs a warning at
most once a minute per cache, and answers as an empty cache would (a miss, a
write that did not happen). After a failure it leaves Redis alone for a second,
so an outage costs each request nothing rather than a timeout.

Values are bytes and keys strings; what they mean (vectors, serialized answers)
is the caller's business. Every lookup is counted in `rag_cache_requests_total`
(one per key, hit or miss) under the cache's name.
"""

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.runtime.metrics import init_cache_series, record_cache_error, record_cache_lookup
from services.runtime.settings import PlatformSettings

log = logging.getLogger(__name__)

CacheBackend = Literal["memory", "redis"]
OPERATIONS = ("get", "set", "delete")
"""Operation label values of rag_cache_errors_total (get_many counts as get)."""
WARNING_INTERVAL_SECONDS = 60.0
"""At most one warning per cache this often: an outage must not flood the logs."""
RETRY_AFTER_SECONDS = 1.0
"""After a Redis failure, calls skip Redis (a miss, no write) for this long."""


class Cache(Protocol):
    """A byte store with expiry. Implementations never raise for an unavailable
    store: a lookup is then a miss and a write is dropped."""

    @property
    def name(self) -> str:
        """The cache's name, the `cache` label of its metrics."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The value stored under `key`, or None."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One value (or None) per key, in order, in one round trip."""
        ...

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """Store `value` under `key` for `ttl_seconds`."""
        ...

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        """Store every item for `ttl_seconds`, in one round trip."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key` (nothing happens if it is absent)."""
        ...

    async def close(self) -> None:
        """Release connections (after the server has drained)."""
        ...


def _counted(name: str, values: list[bytes | None]) -> list[bytes | None]:
    for value in values:
        record_cache_lookup(name, value is not None)
    return values


class LruCache:
    """In-process: at most `max_entries` values, least recently used evicted
    first, each expiring `ttl_seconds` after it was set. No I/O, so nothing fails.

    Each process (each replica) holds its own copy; that is the price of needing
    no infrastructure, and why production uses Redis.
    """

    def __init__(
        self, name: str, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._name = name
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    @property
    def name(self) -> str:
        return self._name

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def get(self, key: str) -> bytes | None:
        return _counted(self._name, [self._get(key)])[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return _counted(self._name, [self._get(key) for key in keys])

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self._entries[key] = (value, self._clock() + ttl_seconds)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        for key, value in items.items():
            await self.set(key, value, ttl_seconds)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def close(self) -> None:
        self._entries.clear()


def redis_client(settings: PlatformSettings) -> Redis:
    """A client for RAG_REDIS_URL with the password and CA certificate from
    settings, short timeouts and no retries (a retry would only add latency
    to a request that can do without Redis: caches and the gateway's rate
    limits both have a way to serve without it)."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "retry": Retry(NoBackoff(), 0),
    }
    password = settings.redis_password.get_secret_value()
    if password:
        options["password"] = password
    if settings.redis_ca_cert is not None:
        if not settings.redis_url.startswith("rediss://"):
            raise ValueError(
                "RAG_REDIS_CA_CERT is set but RAG_REDIS_URL is not a rediss:// (TLS) URL"
            )
        options["ssl_ca_certs"] = str(settings.redis_ca_cert)
    return Redis.from_url(settings.redis_url, **options)


class RedisCache:
    """A shared cache in Redis (Memorystore in production), keys prefixed
    `rag:<name>:`, expiry by Redis itself. Degrades to no caching on any error
    (see the module docstring)."""

    def __init__(self, name: str, client: "Redis", clock: Callable[[], float] = time.monotonic):
        self._name = name
        self._client = client
        self._prefix = f"rag:{name}:"
        self._clock = clock
        self._skip_until = 0.0
        self._last_warning = -WARNING_INTERVAL_SECONDS
        self._failures_since_warning = 0

    @classmethod
    def from_settings(
        cls, name: str, settings: PlatformSettings, clock: Callable[[], float] = time.monotonic
    ) -> "RedisCache":
        """The cache `name` on RAG_REDIS_URL (see `redis_client`)."""
        return cls(name, redis_client(settings), clock)

    @property
    def name(self) -> str:
        return self._name

    def _available(self) -> bool:
        return self._clock() >= self._skip_until

    def _failed(self, operation: str, error: Exception) -> None:
        """Count and (rate-limited) log a failure; skip Redis for a while."""
        record_cache_error(self._name, operation)
        now = self._clock()
        self._skip_until = now + RETRY_AFTER_SECONDS
        self._failures_since_warning += 1
        if now - self._last_warning >= WARNING_INTERVAL_SECONDS:
            log.warning(
                "cache unavailable, serving without it",
                extra={
                    "cache": self._name,
                    "operation": operation,
                    "error": f"{type(error).__name__}: {error}",
                    "failures": self._failures_since_warning,
                },
            )
            self._last_warning = now
            self._failures_since_warning = 0

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values: list[bytes | None] = [None] * len(keys)
        if keys and self._available():
            try:
                found = await self._client.mget([self._prefix + key for key in keys])
                # decode_responses is off: a value is bytes (or None for a missing key).
                values = [value if isinstance(value, bytes) else None for value in found]
            except (RedisError, OSError) as error:
                self._failed("get", error)
        return _counted(self._name, values)

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        await self.set_many({key: value}, ttl_seconds)

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        if not items or not self._available():
            return
        milliseconds = max(1, int(ttl_seconds * 1000))
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(self._prefix + key, value, px=milliseconds)
                await pipe.execute()
        except (RedisError, OSError) as error:
            self._failed("set", error)

    async def delete(self, key: str) -> None:
        if not self._available():
            return
        try:
            await self._client.delete(self._prefix + key)
        except (RedisError, OSError) as error:
            self._failed("delete", error)

    async def close(self) -> None:
        await self._client.aclose()


def build_cache(settings: PlatformSettings, name: str) -> Cache:
    """The cache `name` on the backend RAG_CACHE_BACKEND selects, its metric series at 0."""
    init_cache_series([name], OPERATIONS)
    if settings.cache_backend == "redis":
        return RedisCache.from_settings(name, settings)
    return LruCache(name, settings.cache_max_entries)
