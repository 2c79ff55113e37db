"""At most N documents of one tenant at work at once in an ingestion process.

Parsing and embedding share the process's worker threads and the embedding
service's queue. Without a cap, one tenant's bulk IngestUris calls (each with
its own parse workers and embedding batches) fill both, and another tenant's
single upload waits behind all of them. With `TenantSlots`, each tenant holds
at most `limit` slots; one slot is a document being parsed and chunked, a
shared embedding batch of a bulk call, or a whole upload, so a flooding tenant
queues behind itself and other tenants' work finds the queues short.

Slots only bound work, they never refuse it: a tenant over its share waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import Counter

WAITS = Counter(
    "rag_ingestion_tenant_waits_total",
    "Documents or embedding batches that waited for a slot because their tenant had "
    "RAG_INGESTION_MAX_CONCURRENT_PER_TENANT at work already.",
)


class TenantSlots:
    """Per-tenant semaphores of `limit` slots (0: no cap), kept only while in use
    so that tenants come and go without the table growing."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._holders: dict[str, int] = {}
        """Tasks holding or waiting for each tenant's semaphore."""

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str) -> AsyncIterator[None]:
        """One of `tenant`'s slots for the body; waits while all are taken."""
        if not self._limit:
            yield
            return
        semaphore = self._semaphores.setdefault(tenant, asyncio.Semaphore(self._limit))
        self._holders[tenant] = self._holders.get(tenant, 0) + 1
        try:
            if semaphore.locked():
                WAITS.inc()
            async with semaphore:
                yield
        finally:
            self._holders[tenant] -= 1
            if not self._holders[tenant]:
                del self._holders[tenant], self._semaphores[tenant]
