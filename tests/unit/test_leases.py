"""LeaseTable: when read leases are granted, how long writes wait for them.

A fake clock and a sleep that advances it make waits exact and instant.
"""

import asyncio
from collections.abc import Collection
from pathlib import Path

import pytest

from ragplatform.v1 import common_pb2, retrieval_pb2
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.leases import LeaseTable
from services.retrieval.servicer import RetrievalServicer
from tests.unit.test_store_tenancy import ACME, DIM, document, replace_request

TENANT = "acme"


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def table(duration: float = 2.0, started_ago: float = 10.0) -> tuple[LeaseTable, FakeTime]:
    """A table created `started_ago` seconds before the fake now."""
    time = FakeTime()
    time.now -= started_ago
    leases = LeaseTable(duration, clock=time.clock, sleep=time.sleep)
    time.now += started_ago
    return leases, time


def ids(found: list[str]) -> Collection[str]:
    return found


async def lease(leases: LeaseTable, *documents: str) -> float:
    async def read() -> list[str]:
        return list(documents)

    _, grant = await leases.leased_read(TENANT, read, ids)
    return grant.seconds


async def write(leases: LeaseTable, document: str) -> None:
    async with leases.writing(TENANT, document):
        pass


async def test_a_write_waits_for_the_leases_on_its_document_only() -> None:
    leases, time = table()
    assert await lease(leases, "a", "b") == 2.0
    time.now += 0.5
    await write(leases, "c")  # not leased: at once
    assert time.slept == []
    await write(leases, "a")
    assert time.slept == [1.5], "the lease granted 0.5 s ago had 1.5 s left"
    await write(leases, "b")  # expired meanwhile
    assert time.slept == [1.5]


async def test_no_lease_while_a_write_waits_or_runs() -> None:
    leases, _time = table()
    async with leases.writing(TENANT, "a"):
        assert await lease(leases, "a") == 0.0
        assert await lease(leases, "a", "b") == 0.0, "one document being written refuses all"
        assert await lease(leases, "b") == 2.0
    assert await lease(leases, "a") == 2.0


async def test_a_read_that_began_before_a_write_gets_no_lease() -> None:
    """The read may have seen the old version; by the time it returns, the write
    may be over, and a lease on what it read would promise a stale version."""
    leases, _time = table()

    async def read_across_a_write() -> list[str]:
        await write(leases, "a")
        return ["a"]

    _, grant = await leases.leased_read(TENANT, read_across_a_write, ids)
    assert grant.seconds == 0.0
    assert await lease(leases, "a") == 2.0, "a read begun after the write is leased"


async def test_tenants_are_separate() -> None:
    leases, time = table()
    assert await lease(leases, "a") == 2.0
    async with leases.writing("globex", "a"):
        assert time.slept == []
        assert await lease(leases, "a") == 2.0


async def test_after_a_restart_no_write_starts_before_one_lease_duration() -> None:
    """The previous process's leases are unknown but may still be held."""
    leases, time = table(duration=2.0, started_ago=0.25)
    await write(leases, "a")
    assert time.slept == [1.75]
    await write(leases, "a")
    assert time.slept == [1.75]


async def test_leases_off_grant_nothing_and_delay_nothing() -> None:
    leases, time = table(duration=0.0, started_ago=0.0)
    assert await lease(leases, "a") == 0.0
    await write(leases, "a")
    assert time.slept == []


async def test_concurrent_writes_to_one_document_wait_for_the_same_lease() -> None:
    leases, time = table()
    assert await lease(leases, "a") == 2.0
    await asyncio.gather(write(leases, "a"), write(leases, "a"))
    assert time.now == 1002.0 and sum(time.slept) == 2.0
    assert await lease(leases, "a") == 2.0, "leases resume once both are done"


async def test_expired_entries_are_forgotten() -> None:
    leases, time = table(duration=1.0)
    for i in range(5000):
        await lease(leases, f"doc-{i}")
        await write(leases, f"other-{i}")
        time.now += 0.01
    size = len(leases._expiry) + len(leases._write_began)
    assert size < 2000, size  # bounded by what one lease duration can hold, not by history


@pytest.mark.parametrize("duration", [0.0, 2.0])
async def test_a_failing_read_leaves_no_trace(duration: float) -> None:
    leases, _time = table(duration)

    async def failing() -> list[str]:
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError):
        await leases.leased_read(TENANT, failing, ids)
    assert leases._reads == {}


async def test_the_servicer_leases_lookups_and_makes_writes_wait(tmp_path: Path) -> None:
    leases, time = table()
    with EdgeVectorStore.open(tmp_path / "index", DIM) as store:
        servicer = RetrievalServicer(store, leases=leases)
        record, chunks, vectors = document(ACME, "doc", 2)
        store.replace_document(record, chunks, vectors)
        caller = common_pb2.Caller(tenant=ACME)

        def lookup(lease: bool) -> retrieval_pb2.LookupDocumentsRequest:
            return retrieval_pb2.LookupDocumentsRequest(
                caller=caller, document_ids=["doc", "gone"], lease=lease
            )

        plain = await servicer.LookupDocuments(lookup(lease=False), None)
        assert plain.lease_seconds == 0.0 and time.slept == []
        leased = await servicer.LookupDocuments(lookup(lease=True), None)
        assert leased.lease_seconds == 2.0 and [d.document_id for d in leased.found] == ["doc"]
        time.now += 0.5
        await servicer.RemoveDocument(
            retrieval_pb2.RemoveDocumentRequest(tenant=ACME, document_id="doc"), None
        )
        assert time.slept == [1.5]
        assert store.get_document(ACME, "doc") is None
        replace = replace_request(record, chunks, vectors)
        await servicer.ReplaceDocument(replace, None)  # the lease on "gone" was never granted
        assert time.slept == [1.5]
        await servicer.LookupDocuments(lookup(lease=True), None)
        await servicer.ReplaceDocument(replace, None)
        assert time.slept == [1.5, 2.0]
