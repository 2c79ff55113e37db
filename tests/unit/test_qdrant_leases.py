"""Read leases on the Qdrant server backend, kept in its registry so that they
hold whichever retrieval replica writes (qdrant-client's local mode).

The store's wall clock is replaced by a fake whose sleeps advance it, so that
a write's wait for a lease is exact and instant.
"""

import time as real_time
from collections.abc import Iterator
from typing import Any

import pytest
from qdrant_client import QdrantClient

from ragplatform.v1 import common_pb2, retrieval_pb2
from services.retrieval import qdrant as qdrant_module
from services.retrieval.leases import LEASE_WAIT
from services.retrieval.qdrant import QdrantServerStore, _record_id
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.store import Caller, LeasingStore
from tests.unit.test_store_edge import make_document
from tests.unit.test_store_qdrant import open_store

TENANT = "acme"
CALLER = Caller(TENANT)
SECONDS = 2.0
DOC = make_document("doc", 3, version="A", seed=1)
OTHER = make_document("other", 2, version="A", seed=2)


class FakeTime:
    """`time` for the store: wall time that moves when told, or when slept."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return real_time.monotonic()  # writers' own deadlines run on the real clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(qdrant_module, "time", fake)
    return fake


@pytest.fixture
def store(clock: FakeTime) -> Iterator[QdrantServerStore]:
    with open_store(QdrantClient(":memory:")) as opened:
        opened.replace_document(*DOC)
        opened.replace_document(*OTHER)
        yield opened


def waits() -> float:
    return sum(
        sample.value for sample in LEASE_WAIT.collect()[0].samples if sample.name.endswith("_count")
    )


def record(store: QdrantServerStore, document_id: str) -> dict[str, Any]:
    found = store._record(_record_id(TENANT, document_id))
    assert found is not None
    return found


def test_the_store_is_a_leasing_store(store: QdrantServerStore) -> None:
    assert isinstance(store, LeasingStore)


def test_a_leased_lookup_records_the_lease_and_a_write_waits_for_it(
    store: QdrantServerStore, clock: FakeTime
) -> None:
    records, seconds = store.lookup_and_lease(CALLER, ["doc", "gone"], SECONDS)
    assert [r.document_id for r in records] == ["doc"] and seconds == SECONDS
    assert record(store, "doc")["read_lease_until"] == clock.now + SECONDS
    revision = record(store, "doc")["revision"]

    clock.now += 0.5
    _, seconds = store.lookup_and_lease(CALLER, ["doc"], SECONDS)
    assert seconds == SECONDS - 0.5, "still long enough: granted until the recorded end"
    assert record(store, "doc")["revision"] == revision, "not extended: no write"
    clock.now += 0.6
    _, seconds = store.lookup_and_lease(CALLER, ["doc"], SECONDS)
    assert seconds == SECONDS and record(store, "doc")["revision"] != revision, "extended"

    counted = waits()
    store.replace_document(*OTHER)  # not leased: at once
    assert clock.slept == []
    clock.now += 0.25
    store.replace_document(*make_document("doc", 4, version="B", seed=3))
    assert clock.slept == [SECONDS - 0.25], "the writer waited out the lease"
    assert waits() == counted + 1
    [updated], _ = store.lookup_and_lease(CALLER, ["doc"], SECONDS)
    assert updated.chunk_count == 4


def test_no_lease_on_a_document_being_written(store: QdrantServerStore) -> None:
    with store._lease(TENANT, "doc"):
        records, seconds = store.lookup_and_lease(CALLER, ["doc", "other"], SECONDS)
        assert len(records) == 2 and seconds == 0.0, "one busy document refuses all"
        assert "read_lease_until" not in record(store, "other"), "nothing extended"
    assert store.lookup_and_lease(CALLER, ["doc"], SECONDS)[1] == SECONDS


def test_a_lookup_whose_read_preceded_a_write_gets_no_lease(store: QdrantServerStore) -> None:
    """The extension is conditional on the record as read: a write in between
    (here, between the read and the extension) changed its revision."""
    read_before = record(store, "doc")
    store.replace_document(*make_document("doc", 2, version="C", seed=4))
    assert not store._extend_read_leases(TENANT, [read_before], 1_000_000.0 + SECONDS)
    assert "read_lease_until" not in record(store, "doc")
    assert store._extend_read_leases(TENANT, [record(store, "doc")], 1_000_000.0 + SECONDS)


def test_the_labels_a_caller_may_not_see_are_not_leased(clock: FakeTime) -> None:
    with open_store(QdrantClient(":memory:")) as store:
        store.replace_document(*make_document("secret", 2, access_labels=("hr",), seed=5))
        records, _ = store.lookup_and_lease(CALLER, ["secret"], SECONDS)
        assert records == [] and "read_lease_until" not in record(store, "secret")


async def test_the_servicer_grants_the_stores_leases(store: QdrantServerStore) -> None:
    servicer = RetrievalServicer(store, store_lease_seconds=SECONDS)
    request = retrieval_pb2.LookupDocumentsRequest(
        caller=common_pb2.Caller(tenant=TENANT), document_ids=["doc"], lease=True
    )
    reply = await servicer.LookupDocuments(request, None)
    assert reply.lease_seconds == SECONDS and not reply.session_lease
    assert [d.document_id for d in reply.found] == ["doc"]
    plain = await RetrievalServicer(store).LookupDocuments(request, None)
    assert plain.lease_seconds == 0.0, "leases off: none granted"
