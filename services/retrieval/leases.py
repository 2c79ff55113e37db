"""Read leases on documents: how a cache may trust a document's version for a
moment without asking again, and still never serve a stale answer.

A lease (Gray and Cheriton, 1989) is a promise by the process that writes the
index: the leased documents will not change before the lease expires. The
answer cache checks the versions of the documents an answer cites at every hit;
with a lease it skips that round trip until the lease ends. A write to a leased
document waits until every lease on it has expired.

Three rules keep the promise:

* no lease is granted on a document while a write to it waits or runs, nor by a
  lookup that read the document before such a write began (its read may be of
  the old version);
* a write starts only once every lease granted on its document has expired;
* after a restart the table is empty, but leases the previous process granted
  may still be held: no write starts until one lease duration after start.

Clocks need not agree: each side counts the lease on its own monotonic clock,
the holder from when it sent the request (before the grant), the grantor from
the grant, so the holder's lease always ends first.

This holds only when every write to the index goes through this process: the
embedded engine, one retrieval replica. Replicas sharing a Qdrant server cannot
see each other's leases, so that backend grants none (duration 0).

Everything runs on the servicer's event loop, so the table needs no lock.
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from typing import TypeVar

from prometheus_client import Counter as MetricCounter
from prometheus_client import Histogram

from services.runtime.metrics import LATENCY_BUCKETS

ResultT = TypeVar("ResultT")
DocumentKey = tuple[str, str]
"""(tenant, document_id)."""
_MIN_SWEEP = 512

LEASES_GRANTED = MetricCounter(
    "rag_retrieval_leases",
    "Document lookups that asked for a read lease, by outcome (granted, or refused "
    "because a write to one of the documents was waiting or running).",
    ["outcome"],
)
LEASE_WAIT = Histogram(
    "rag_retrieval_lease_wait_seconds",
    "Time a document write waited for read leases on the document to expire.",
    buckets=LATENCY_BUCKETS,
)
for _outcome in ("granted", "refused"):
    LEASES_GRANTED.labels(_outcome)


class LeaseTable:
    """Leases granted on documents, and the writes waiting for them."""

    def __init__(
        self,
        duration: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.duration = duration
        self._clock = clock
        self._sleep = sleep
        self._writes_from = clock() + duration
        """No write before this: the previous process's leases have expired then."""
        self._expiry: dict[DocumentKey, float] = {}
        self._writing: Counter[DocumentKey] = Counter()
        self._epoch = 0
        """Counts writes begun; a lookup remembers it before reading."""
        self._write_began: dict[DocumentKey, int] = {}
        self._reads: Counter[int] = Counter()
        """Epochs of the lookups in progress (they bound what must be remembered)."""
        self._swept_at = _MIN_SWEEP

    async def leased_read(
        self,
        tenant: str,
        read: Callable[[], Awaitable[ResultT]],
        found: Callable[[ResultT], Collection[str]],
    ) -> tuple[ResultT, float]:
        """(what `read` returns, the lease granted on the documents `found` in it,
        in seconds; 0 when refused or leases are off)."""
        if self.duration <= 0:
            return await read(), 0.0
        epoch = self._epoch
        self._reads[epoch] += 1
        try:
            result = await read()
        finally:
            self._reads[epoch] -= 1
            if not self._reads[epoch]:
                del self._reads[epoch]
        keys = [(tenant, document_id) for document_id in found(result)]
        if any(self._writing[k] or self._write_began.get(k, -1) >= epoch for k in keys):
            LEASES_GRANTED.labels("refused").inc()
            return result, 0.0
        expiry = self._clock() + self.duration
        for key in keys:
            self._expiry[key] = expiry
        LEASES_GRANTED.labels("granted").inc()
        self._forget_the_past()
        return result, self.duration

    @asynccontextmanager
    async def writing(self, tenant: str, document_id: str) -> AsyncIterator[None]:
        """Hold while writing the document: first waits until no lease on it is
        valid, and grants none until the write is over."""
        if self.duration <= 0:
            yield
            return
        key = (tenant, document_id)
        self._writing[key] += 1
        self._write_began[key] = self._epoch
        self._epoch += 1
        self._forget_the_past()
        try:
            delay = max(self._expiry.get(key, 0.0), self._writes_from) - self._clock()
            if delay > 0:
                LEASE_WAIT.observe(delay)
                await self._sleep(delay)
            yield
        finally:
            self._writing[key] -= 1
            if not self._writing[key]:
                del self._writing[key]

    def _forget_the_past(self) -> None:
        """Drop expired leases and write marks no lookup in progress can need,
        once the tables have doubled since the last sweep (amortised O(1))."""
        size = len(self._expiry) + len(self._write_began)
        if size < 2 * self._swept_at:
            return
        now = self._clock()
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        oldest = min(self._reads, default=self._epoch)
        self._write_began = {k: e for k, e in self._write_began.items() if e >= oldest}
        self._swept_at = max(_MIN_SWEEP, len(self._expiry) + len(self._write_began))
