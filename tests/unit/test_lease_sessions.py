"""Lease sessions: a write revokes a session's lease and waits for the holder's
acknowledgement, or for the session to expire when the holder is silent.

The grantor's side runs on a manual clock whose sleeps end only when the test
moves time on, so that "the write waits" is a state the test can look at. The
last tests run both sides over real gRPC: the retrieval servicer on an embedded
index, and the query service's LeaseSessionClient and AnswerCache.
"""

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from ragplatform.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.query import lease_session
from services.query.answer_cache import AnswerCache
from services.query.lease_session import LeaseSessionClient
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.leases import REVOCATIONS, Grant, LeaseSession, LeaseTable, Renewed, Revoke
from services.retrieval.servicer import RetrievalServicer
from services.runtime.cache import LruCache
from services.runtime.clients import PlatformClients
from services.runtime.errors import ErrorMappingInterceptor
from services.runtime.settings import PlatformSettings
from tests.unit.test_store_tenancy import ACME, DIM, document, replace_request

TENANT = "acme"
SESSION_SECONDS = 10.0


class ManualTime:
    """A clock that moves only when told; sleeps end when it passes their end."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        done = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, done))
        await done

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for end, done in list(self._sleepers):
            if end <= self.now and not done.done():
                done.set_result(None)
        await settle()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def table(
    duration: float = 0.0, horizon: Path | None = None, wall: float = 5000.0
) -> tuple[LeaseTable, ManualTime]:
    time = ManualTime()
    leases = LeaseTable(
        duration,
        SESSION_SECONDS,
        horizon=horizon or Path(tempfile.mkdtemp()) / "lease-horizon",  # fresh: no restart wait
        clock=time.clock,
        sleep=time.sleep,
        wall=lambda: wall + time.now - 1000.0,
    )
    return leases, time


def ids(found: list[str]) -> Collection[str]:
    return found


async def lease(leases: LeaseTable, session: str, *documents: str) -> Grant:
    async def read() -> list[str]:
        return list(documents)

    _, grant = await leases.leased_read(TENANT, read, ids, session)
    return grant


async def write(leases: LeaseTable, document: str) -> None:
    async with leases.writing(TENANT, document):
        pass


def events(session: LeaseSession) -> list[Any]:
    queued = []
    while not session._events.empty():
        queued.append(session._events.get_nowait())
    return queued


def revocations(outcome: str) -> float:
    return float(REVOCATIONS.labels(outcome)._value.get())


async def test_a_write_revokes_a_session_lease_and_waits_only_for_the_acknowledgement() -> None:
    leases, time = table()
    session = await leases.open_session()
    assert await lease(leases, session.session_id, "a", "b") == Grant(session=True)
    await write(leases, "c")  # leased to nobody: at once
    acknowledged = revocations("acknowledged")

    writer = asyncio.create_task(write(leases, "a"))
    await settle()
    [revoke] = events(session)
    assert isinstance(revoke, Revoke) and (revoke.tenant, revoke.document_id) == (TENANT, "a")
    assert not writer.done(), "the write waits for the holder"
    assert await lease(leases, session.session_id, "a") == Grant(), "no lease while it waits"
    assert await session.acknowledge(revoke.revocation_id)
    await settle()
    assert writer.done() and time.now == 1000.0, "acknowledged: no wait for any expiry"
    assert revocations("acknowledged") == acknowledged + 1
    assert session.documents == {(TENANT, "b")}
    assert not await session.acknowledge(revoke.revocation_id), "an id is acknowledged once"
    await write(leases, "a")  # no longer leased: at once
    assert events(session) == []


async def test_a_silent_holder_delays_a_write_until_its_session_expires() -> None:
    leases, time = table()
    session = await leases.open_session()
    await lease(leases, session.session_id, "a")
    await time.advance(4.0)
    expired = revocations("expired")
    writer = asyncio.create_task(write(leases, "a"))
    await settle()
    await session.keep_alive(1)
    assert [type(e) for e in events(session)] == [Revoke], "no renewal while a revocation waits"
    await time.advance(5.9)
    assert not writer.done()
    await time.advance(0.1)
    assert writer.done(), "the session expired 10 s after it opened"
    assert session.ended and revocations("expired") == expired + 1
    assert await lease(leases, session.session_id, "a") == Grant(), (
        "an ended session leases nothing"
    )


async def test_the_renewal_withheld_during_a_revocation_follows_its_acknowledgement() -> None:
    leases, time = table()
    session = await leases.open_session()
    await lease(leases, session.session_id, "a")
    writer = asyncio.create_task(write(leases, "a"))
    await settle()
    await time.advance(3.0)
    await session.keep_alive(7)
    [revoke] = events(session)
    await session.acknowledge(revoke.revocation_id)
    assert events(session) == [Renewed(7)]
    assert session.expiry == time.now + SESSION_SECONDS
    await settle()
    assert writer.done()


async def test_a_broken_stream_is_waited_out_and_a_released_session_is_not() -> None:
    leases, time = table()
    broken, closed = await leases.open_session(), await leases.open_session()
    await lease(leases, broken.session_id, "a")
    await lease(leases, closed.session_id, "b")
    broken.disconnect()
    closed.close()
    await write(leases, "b")
    assert time.now == 1000.0, "the released session gave its leases up"
    writer = asyncio.create_task(write(leases, "a"))
    await settle()
    assert not writer.done(), "the broken stream's holder may still trust its lease"
    assert events(broken) == [None], "nothing is sent on a broken stream"
    await time.advance(SESSION_SECONDS)
    assert writer.done()
    assert leases._sessions == {}


async def test_renewals_keep_a_session_and_its_leases_alive() -> None:
    leases, time = table(duration=2.0)
    session = await leases.open_session()
    await lease(leases, session.session_id, "a")
    for sequence in range(1, 6):
        await time.advance(SESSION_SECONDS / 2)
        await session.keep_alive(sequence)
    assert session.live(time.now)
    writer = asyncio.create_task(write(leases, "a"))
    await settle()
    [revoke] = [e for e in events(session) if isinstance(e, Revoke)]
    await session.acknowledge(revoke.revocation_id)
    await settle()
    assert writer.done()


async def test_without_a_live_session_the_lease_is_timed() -> None:
    leases, _time = table(duration=2.0)
    assert await lease(leases, "no-such-session", "a") == Grant(seconds=2.0)
    session = await leases.open_session()
    session.disconnect()
    assert await lease(leases, session.session_id, "a") == Grant(seconds=2.0)


async def test_the_horizon_makes_a_restart_wait_only_for_leases_still_held(
    tmp_path: Path,
) -> None:
    horizon = tmp_path / "lease-horizon"
    fresh, time = table(duration=2.0, horizon=horizon)
    await write(fresh, "a")
    assert time.now == 1000.0, "a fresh index has no leases out: no wait"
    assert not horizon.exists()
    assert await lease(fresh, "", "a") == Grant(seconds=2.0)
    recorded = float(horizon.read_text())
    assert recorded == 5000.0 + 2 * SESSION_SECONDS, "recorded ahead, for the longest lease"
    session = await fresh.open_session()
    await session.keep_alive(1)
    assert float(horizon.read_text()) == recorded, "already covered: not written again"

    restarted, later = table(duration=2.0, horizon=horizon, wall=5000.0 + 15.0)
    writer = asyncio.create_task(write(restarted, "a"))
    await settle()
    assert not writer.done()
    await later.advance(5.0)
    assert writer.done(), "waited until the recorded horizon, 5 s after the restart"

    long_after, _ = table(duration=2.0, horizon=horizon, wall=5000.0 + 60.0)
    await write(long_after, "a")  # the horizon has passed: at once


async def test_opening_a_session_records_the_horizon_before_any_lease(tmp_path: Path) -> None:
    horizon = tmp_path / "lease-horizon"
    leases, _time = table(horizon=horizon)
    await leases.open_session()
    assert float(horizon.read_text()) >= 5000.0 + SESSION_SECONDS


# --------------------------------------------------------------------------- over gRPC


@asynccontextmanager
async def servicer_on_port(store: EdgeVectorStore, leases: LeaseTable) -> AsyncIterator[str]:
    """The retrieval servicer over gRPC (errors mapped as in the services): its address."""
    server = aio.server(interceptors=[ErrorMappingInterceptor()])
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(
        RetrievalServicer(store, leases=leases), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        leases.drain()
        await server.stop(1)


@asynccontextmanager
async def serving(
    tmp_path: Path, session_seconds: float = SESSION_SECONDS
) -> AsyncIterator[tuple[str, EdgeVectorStore, LeaseTable]]:
    """A retrieval server on an embedded index, with timed leases of 2 s."""
    leases = LeaseTable(2.0, session_seconds, horizon=tmp_path / "lease-horizon")
    with EdgeVectorStore.open(tmp_path / "index", DIM) as store:
        async with servicer_on_port(store, leases) as address:
            yield address, store, leases


@pytest.fixture
async def retrieval(tmp_path: Path) -> AsyncIterator[tuple[str, EdgeVectorStore, LeaseTable]]:
    async with serving(tmp_path) as served:
        yield served


async def lease_in_session(
    clients: PlatformClients, session: str
) -> retrieval_pb2.LookupDocumentsResponse:
    """A leased lookup of ACME's "doc" in `session`."""
    reply: retrieval_pb2.LookupDocumentsResponse = await clients.retrieval.LookupDocuments(
        retrieval_pb2.LookupDocumentsRequest(
            caller=common_pb2.Caller(tenant=ACME),
            document_ids=["doc"],
            lease=True,
            lease_session=session,
        )
    )
    return reply


def clients_for(address: str) -> PlatformClients:
    return PlatformClients(PlatformSettings(retrieval_addr=address))


async def until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


async def test_a_holder_over_grpc_acknowledges_and_the_write_does_not_wait_out_its_session(
    retrieval: tuple[str, EdgeVectorStore, LeaseTable],
) -> None:
    address, store, leases = retrieval
    record, chunks, vectors = document(ACME, "doc", 2)
    store.replace_document(record, chunks, vectors)
    clients = clients_for(address)
    dropped: list[tuple[str, list[str]]] = []
    holder = LeaseSessionClient(clients, lambda t, d: dropped.append((t, list(d))))
    holder.start()
    try:
        await until(holder.current, "the session opened")
        session = holder.current()
        reply = await lease_in_session(clients, session)
        assert reply.session_lease and reply.lease_seconds == 0.0
        acknowledged, expired = revocations("acknowledged"), revocations("expired")
        await clients.retrieval.ReplaceDocument(replace_request(record, chunks, vectors))
        assert dropped == [(ACME, ["doc"])], "the holder dropped the lease before the write"
        assert (revocations("acknowledged"), revocations("expired")) == (acknowledged + 1, expired)
        assert holder.current() == session, "the session goes on"
    finally:
        await holder.close()
        await clients.close()
    await until(lambda: not leases._sessions, "the closed session ended on the service")


async def test_the_holder_keeps_its_session_alive_and_rotates_it_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease_session, "SESSION_ROTATE_SECONDS", 3.0)
    async with serving(tmp_path, session_seconds=1.2) as (address, _store, leases):
        clients = clients_for(address)
        holder = LeaseSessionClient(clients, lambda t, d: None)
        holder.start()
        try:
            await until(holder.current, "the session opened")
            first = holder.current()
            seen = set()
            for _ in range(200):  # 2 s: longer than the session lasts without renewals
                seen.add(holder.current())
                await asyncio.sleep(0.01)
            assert seen == {first}, "renewed before it could lapse"
            await until(lambda: holder.current() not in ("", first), "a new session")
            assert list(leases._sessions) == [holder.current()], "the old one was closed"
        finally:
            await holder.close()
            await clients.close()
        await until(lambda: not leases._sessions, "the last session ended on the service")


async def test_a_stream_that_ends_without_a_release_is_waited_out(tmp_path: Path) -> None:
    """grpc ends a cancelled call's requests as if the holder had finished: only
    an explicit release may spare a write the wait."""
    async with serving(tmp_path, session_seconds=1.0) as (address, store, leases):
        record, chunks, vectors = document(ACME, "doc", 2)
        store.replace_document(record, chunks, vectors)
        clients = clients_for(address)
        try:
            opened: asyncio.Event = asyncio.Event()
            stop: asyncio.Event = asyncio.Event()

            async def requests() -> AsyncIterator[retrieval_pb2.WatchLeasesRequest]:
                yield retrieval_pb2.WatchLeasesRequest(keep_alive=0)
                await opened.wait()
                await stop.wait()  # then end without a release

            call = clients.retrieval.WatchLeases(requests(), timeout=30)
            first = await call.read()
            session_id = first.session.session_id
            reply = await lease_in_session(clients, session_id)
            assert reply.session_lease
            opened.set()
            stop.set()
            await until(lambda: not leases._sessions[session_id].connected, "the stream ended")
            expired = revocations("expired")
            await clients.retrieval.ReplaceDocument(replace_request(record, chunks, vectors))
            assert revocations("expired") == expired + 1, "the write waited out the session"
            assert session_id not in leases._sessions
            call.cancel()
        finally:
            await clients.close()


async def held_open(
    messages: list[retrieval_pb2.WatchLeasesRequest],
) -> AsyncIterator[retrieval_pb2.WatchLeasesRequest]:
    """`messages`, then the stream kept open, as a holder keeps it: a half-close
    crossing the service's refusal would fail in grpc with INTERNAL instead."""
    for message in messages:
        yield message
    await asyncio.Event().wait()


async def test_watch_leases_refuses_without_sessions_and_checks_its_first_message(
    tmp_path: Path,
) -> None:
    with EdgeVectorStore.open(tmp_path / "index", DIM) as store:
        for leases, messages, code in [
            (LeaseTable(2.0), [retrieval_pb2.WatchLeasesRequest(keep_alive=0)],
             grpc.StatusCode.FAILED_PRECONDITION),
            (LeaseTable(2.0, SESSION_SECONDS), [retrieval_pb2.WatchLeasesRequest(revoked=3)],
             grpc.StatusCode.INVALID_ARGUMENT),
            (LeaseTable(2.0, SESSION_SECONDS),
             [retrieval_pb2.WatchLeasesRequest(keep_alive=0),
              retrieval_pb2.WatchLeasesRequest(revoked=3)],
             grpc.StatusCode.INVALID_ARGUMENT),
        ]:  # fmt: skip
            async with (
                servicer_on_port(store, leases) as address,
                aio.insecure_channel(address) as channel,
            ):
                call = retrieval_pb2_grpc.RetrievalServiceStub(channel).WatchLeases(
                    held_open(messages), timeout=10
                )
                with pytest.raises(aio.AioRpcError) as failure:
                    async for _ in call:
                        pass
                assert failure.value.code() == code, failure.value.details()
            assert leases._sessions == {}


class RevokingRetrieval:
    """A retrieval stub whose lookup is overtaken by a revocation of its document:
    the grant it carries predates the write."""

    def __init__(self, cache: AnswerCache, version: common_pb2.DocumentInfo) -> None:
        self.cache = cache
        self.version = version

    def LookupDocuments(
        self, request: retrieval_pb2.LookupDocumentsRequest
    ) -> Awaitable[retrieval_pb2.LookupDocumentsResponse]:
        assert request.lease_session == "s1"
        session = self.cache.session
        assert session is not None
        session._revoke(
            retrieval_pb2.LeaseRevocation(revocation_id=1, tenant=ACME, document_ids=["doc"])
        )

        async def reply() -> retrieval_pb2.LookupDocumentsResponse:
            return retrieval_pb2.LookupDocumentsResponse(found=[self.version], session_lease=True)

        return reply()


class FakeClients:
    def __init__(self) -> None:
        self.retrieval: Any = None


async def test_a_grant_overtaken_by_a_revocation_is_not_kept() -> None:
    clients = FakeClients()
    cache = AnswerCache(
        LruCache("answer", 10),
        clients,  # type: ignore[arg-type]
        ttl_seconds=60,
        index_label="",
        lease_session=True,
    )
    assert cache.session is not None
    cache.session._session_id, cache.session._valid_until = "s1", float("inf")
    version = common_pb2.DocumentInfo(document_id="doc", tenant=ACME, content_sha256="v1")
    clients.retrieval = RevokingRetrieval(cache, version)
    caller = common_pb2.Caller(tenant=ACME)
    found = await cache._versions(caller, ["doc"])
    assert found["doc"] is not None and found["doc"].content_sha256 == "v1"
    assert (ACME, "doc") not in cache._leases, "revoked while in flight: not leased"
    acknowledgement = cache.session._outbox.get_nowait()
    assert acknowledgement is not None and acknowledgement.revoked == 1, "and acknowledged"


async def test_concurrent_grants_record_the_horizon_once(tmp_path: Path) -> None:
    horizon = tmp_path / "lease-horizon"
    leases, _time = table(duration=2.0, horizon=horizon)
    grants = await asyncio.gather(*(lease(leases, "", f"doc-{i}") for i in range(20)))
    assert all(grant == Grant(seconds=2.0) for grant in grants)
    assert float(horizon.read_text()) == 5000.0 + 2 * SESSION_SECONDS
    assert not horizon.with_name("lease-horizon.tmp").exists()
