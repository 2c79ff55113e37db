"""Token buckets per API key and per tenant for the routes that cost the platform work.

Asks (JSON and streamed), uploads and document writes each have their own
buckets (`RouteClass`): a request takes one token from its API key's bucket and
one from its tenant's, both or neither, and a request finding either empty is
refused with 429, a `Retry-After` (whole seconds until both have a token) and
the gateway's JSON error shape, before its body is read. Several keys of one
tenant share the tenant's bucket, so adding keys does not add capacity.

Buckets live in this process (`MemoryBuckets`) or, with several gateway
replicas, in Redis (`RedisBuckets`), where one Lua script reads, refills and
takes from a request's buckets atomically with Redis's own clock, so replicas
share the limits without sharing a clock. When Redis fails, each replica falls
back to its own buckets (the limit then holds per replica) rather than
refusing or admitting everything, and the failure is counted and logged.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.tenancy import Caller
from services.gateway.auth import identity_of
from services.gateway.errors import error_response

log = logging.getLogger(__name__)

RouteClass = Literal["ask", "upload", "write"]
ROUTE_CLASSES: tuple[RouteClass, ...] = ("ask", "upload", "write")
LimitScope = Literal["api_key", "tenant"]

RATE_LIMITED = Counter(
    "rag_http_rate_limited_total",
    "Requests refused with 429 by a token bucket, by route class (ask, upload, write), "
    "the bucket that was empty (api_key or tenant) and tenant.",
    ["route_class", "limit", "tenant"],
)
BACKEND_ERRORS = Counter(
    "rag_http_rate_limit_errors_total",
    "Rate-limit checks that Redis failed; they were decided by the replica's own buckets.",
)

WARNING_INTERVAL_SECONDS = 60.0
"""At most one warning about Redis this often: an outage must not flood the logs."""
SKIP_SECONDS = 1.0
"""After a Redis failure, checks use the replica's buckets for this long without
trying Redis, so an outage costs requests nothing rather than a timeout each."""


def route_class_of(method: str, path: str) -> RouteClass | None:
    """The route class of a request, or None for routes without rate limits
    (reads: listing and looking up documents cost the platform little)."""
    if method == "POST" and path in ("/v1/ask", "/v1/ask/stream"):
        return "ask"
    if method == "POST" and path in ("/v1/documents", "/v1/imports"):
        return "upload"
    if method == "DELETE" and path.startswith("/v1/documents/"):
        return "write"
    return None


@dataclass(frozen=True)
class Rate:
    """Tokens added per second, up to `burst` (also what a new bucket holds)."""

    per_second: float
    burst: int
    setting: str
    """The variable that sets it, named in refusals so an operator knows what to tune."""


@dataclass(frozen=True)
class ClassLimits:
    """The buckets of one route class; None: that bucket is off."""

    per_key: Rate | None
    per_tenant: Rate | None


@dataclass(frozen=True)
class Bucket:
    """One bucket a request takes a token from."""

    key: str
    rate: Rate


@dataclass(frozen=True)
class Refusal:
    """Which bucket was empty (its index in the request's buckets), and the
    seconds until every one of them holds a token."""

    index: int
    wait_seconds: float


class TokenBuckets(Protocol):
    """Where buckets live."""

    async def take(self, buckets: Sequence[Bucket]) -> Refusal | None:
        """Take one token from each of `buckets`, or none when any is empty."""
        ...

    async def close(self) -> None: ...


class MemoryBuckets:
    """Buckets in this process: the limits hold per replica.

    Only configured API keys and tenants ever get a bucket (requests are
    authenticated first), so the table stays as small as the configuration.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}
        """Bucket key -> (tokens, when they were counted)."""

    async def take(self, buckets: Sequence[Bucket]) -> Refusal | None:
        return self.take_now(buckets)

    def take_now(self, buckets: Sequence[Bucket]) -> Refusal | None:
        """`take` without a suspension point: atomic on the event loop."""
        now = self._clock()
        levels: list[float] = []
        refusal: Refusal | None = None
        for index, bucket in enumerate(buckets):
            rate = bucket.rate
            tokens, at = self._state.get(bucket.key, (float(rate.burst), now))
            level = min(float(rate.burst), tokens + max(0.0, now - at) * rate.per_second)
            levels.append(level)
            if level < 1.0:
                wait = (1.0 - level) / rate.per_second
                if refusal is None or wait > refusal.wait_seconds:
                    refusal = Refusal(index, wait)
        spent = 0.0 if refusal is not None else 1.0
        for bucket, level in zip(buckets, levels, strict=True):
            self._state[bucket.key] = (level - spent, now)
        return refusal

    async def close(self) -> None:
        self._state.clear()


_TAKE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local levels = {}
local refused, wait = 0, 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local level, at = tonumber(state[1]), tonumber(state[2])
  if level == nil or at == nil then
    level = burst
  else
    level = math.min(burst, level + math.max(0, now - at) * rate)
  end
  levels[i] = level
  if level < 1 then
    local needed = (1 - level) / rate
    if refused == 0 or needed > wait then
      refused, wait = i, needed
    end
  end
end
local spent = 1
if refused > 0 then spent = 0 end
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('HSET', key, 'tokens', tostring(levels[i] - spent), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return {refused, tostring(wait)}
"""
"""Read, refill and take from every bucket of one request at once, on Redis's
clock (TIME before writes needs Redis 5 or later, where scripts replicate their
effects). A bucket expires once it would be full again, so idle keys cost
nothing. Numbers go back as strings: Redis turns a Lua number into an integer."""


class RedisBuckets:
    """Buckets in Redis, shared by every gateway replica (see the module docstring)."""

    def __init__(self, client: Redis, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._script = client.register_script(_TAKE_SCRIPT)
        self._clock = clock
        self._fallback = MemoryBuckets(clock)
        self._skip_until = 0.0
        self._last_warning = -WARNING_INTERVAL_SECONDS

    async def take(self, buckets: Sequence[Bucket]) -> Refusal | None:
        if self._clock() >= self._skip_until:
            args: list[str] = []
            for bucket in buckets:
                args += [repr(bucket.rate.per_second), str(bucket.rate.burst)]
            try:
                refused, wait = await self._script(keys=[b.key for b in buckets], args=args)
            except (RedisError, OSError) as error:
                self._failed(error)
            else:
                return None if not int(refused) else Refusal(int(refused) - 1, float(wait))
        return self._fallback.take_now(buckets)

    def _failed(self, error: Exception) -> None:
        BACKEND_ERRORS.inc()
        now = self._clock()
        self._skip_until = now + SKIP_SECONDS
        if now - self._last_warning >= WARNING_INTERVAL_SECONDS:
            self._last_warning = now
            log.warning(
                "rate limits: Redis unavailable, this replica applies them on its own",
                extra={"error": f"{type(error).__name__}: {error}"},
            )

    async def close(self) -> None:
        await self._client.aclose()


def _key_fingerprint(api_key: str) -> str:
    """A name for the key's bucket that does not reveal the key (Redis keys are
    visible to whoever can list them)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def buckets_of(
    route_class: RouteClass, limits: ClassLimits, caller: Caller, api_key: str | None
) -> tuple[list[Bucket], list[LimitScope]]:
    """The buckets a request of `caller` takes from, and what each limits.

    Keys carry the tenant as a Redis hash tag (`{tenant}`), so that a request's
    buckets share a slot in a Redis cluster, as one script call requires.
    """
    prefix = f"rag:ratelimit:{{{caller.tenant}}}:{route_class}"
    buckets: list[Bucket] = []
    scopes: list[LimitScope] = []
    if limits.per_key is not None and api_key is not None:
        buckets.append(Bucket(f"{prefix}:key:{_key_fingerprint(api_key)}", limits.per_key))
        scopes.append("api_key")
    if limits.per_tenant is not None:
        buckets.append(Bucket(f"{prefix}:tenant", limits.per_tenant))
        scopes.append("tenant")
    return buckets, scopes


def retry_after(wait_seconds: float) -> int:
    """Retry-After in whole seconds, rounded up and at least 1 (a client told 0
    would retry at once, into the same empty bucket)."""
    return max(1, math.ceil(wait_seconds))


_SUBJECT = {"api_key": "this API key", "tenant": "this tenant"}
_WHAT = {"ask": "asks", "upload": "uploads", "write": "document writes"}


class RateLimitMiddleware:
    """Refuses requests over their route class's buckets with 429 and Retry-After.

    Runs inside ApiKeyMiddleware (it needs the caller and key) and outside the
    body limit and the routes, so a refused upload is never read.
    """

    def __init__(
        self,
        app: ASGIApp,
        buckets: TokenBuckets,
        limits: Mapping[RouteClass, ClassLimits],
        tenants: Sequence[str] = (),
    ) -> None:
        self.app = app
        self._buckets = buckets
        self._limits = dict(limits)
        for route_class, class_limits in self._limits.items():  # known tenants start at 0
            enabled = [
                name
                for name, rate in (
                    ("api_key", class_limits.per_key),
                    ("tenant", class_limits.per_tenant),
                )
                if rate is not None
            ]
            for tenant in tenants:
                for name in enabled:
                    RATE_LIMITED.labels(route_class, name, tenant)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route_class = (
            route_class_of(scope["method"], scope["path"]) if scope["type"] == "http" else None
        )
        limits = self._limits.get(route_class) if route_class is not None else None
        identity = identity_of(scope) if limits is not None else None
        if route_class is None or limits is None or identity is None:
            await self.app(scope, receive, send)
            return
        caller, api_key = identity
        buckets, scopes = buckets_of(route_class, limits, caller, api_key)
        refusal = await self._buckets.take(buckets) if buckets else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        limit = scopes[refusal.index]
        rate = buckets[refusal.index].rate
        RATE_LIMITED.labels(route_class, limit, caller.tenant).inc()
        seconds = retry_after(refusal.wait_seconds)
        message = (
            f"rate limit exceeded: {_SUBJECT[limit]} may make {rate.per_second:g} "
            f"{_WHAT[route_class]} per second, {rate.burst} at once ({rate.setting}); "
            f"retry in {seconds} s"
        )
        response = error_response(
            429, "RESOURCE_EXHAUSTED", message, headers={"Retry-After": str(seconds)}
        )
        await response(scope, receive, send)
