"""Read leases on documents: how a cache may trust a document's version without
asking again, and still never serve a stale answer.

A lease (Gray and Cheriton, 1989) is a promise by the process that writes the
index: the leased documents will not change while the lease holds. The answer
cache checks the versions of the documents an answer cites at every hit; with
a lease it skips that round trip. Leases come in two kinds:

* a timed lease holds for `duration` seconds; a write to the document waits
  until every timed lease on it has expired;
* a session lease (after Chubby, Burrows 2006) holds for as long as its holder's
  lease session lives (`WatchLeases`), until a write revokes it: the write sends
  the holder a revocation and waits for its acknowledgement, or, when the holder
  does not answer, for the session to expire. A live holder answers within a
  round trip, so writes hardly wait, sessions can last, and a cache that keeps
  its session alive checks no version twice.

Rules that keep the promise:

* no lease is granted on a document while a write to it waits or runs, nor by a
  lookup that read the document before such a write began (its read may be of
  the old version);
* a write starts only once every timed lease on its document has expired and
  every session holding it has acknowledged the revocation or expired;
* a session expires `session_seconds` after its last renewal; no renewal is
  granted while one of its revocations is unacknowledged, so a holder that stops
  acknowledging stops trusting its leases before the write starts;
* after a restart the table is empty, but leases the previous process granted
  may still be held: no write starts before every one of them has ended. The
  table records on disk (`horizon`) a wall-clock time by which every lease it
  granted will have ended, before granting past it; a process that finds none
  starts writing at once, otherwise it waits until then (at most the longest
  lease duration).

Clocks need not agree: each side counts a lease on its own monotonic clock,
the holder from when it sent the request (or the renewal), the grantor from
when it granted, so the holder's lease always ends first.

This holds only when every write to the index goes through this process: the
embedded engine, one retrieval replica. Replicas sharing a Qdrant server cannot
see each other's leases, so that backend grants none.

Everything runs on the servicer's event loop, so the table needs no lock.
"""

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge, Histogram

from services.runtime.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")
DocumentKey = tuple[str, str]
"""(tenant, document_id)."""
_MIN_SWEEP = 512

LEASES_GRANTED = MetricCounter(
    "rag_retrieval_leases",
    "Document lookups that asked for a read lease, by outcome: granted (a timed lease), "
    "session (leased to a lease session), or refused (a write to one of the documents "
    "was waiting or running).",
    ["outcome"],
)
LEASE_WAIT = Histogram(
    "rag_retrieval_lease_wait_seconds",
    "Time a document write waited for the read leases on the document: timed leases to "
    "expire, lease sessions to acknowledge their revocation (or to expire).",
    buckets=LATENCY_BUCKETS,
)
SESSIONS = Gauge("rag_retrieval_lease_sessions", "Lease sessions open (one per cache holder).")
REVOCATIONS = MetricCounter(
    "rag_retrieval_lease_revocations",
    "Session leases revoked by a write, by outcome: acknowledged by the holder, or expired "
    "(the holder did not answer; the write waited for its session to run out).",
    ["outcome"],
)
for _outcome in ("granted", "session", "refused"):
    LEASES_GRANTED.labels(_outcome)
for _outcome in ("acknowledged", "expired"):
    REVOCATIONS.labels(_outcome)


@dataclass(frozen=True)
class Grant:
    """What a leased lookup was granted."""

    seconds: float = 0.0
    """A timed lease of this long (0: none)."""
    session: bool = False
    """The found documents are leased to the session named in the lookup."""


@dataclass(frozen=True)
class Renewed:
    """The session was renewed by the holder's keep-alive `sequence`."""

    sequence: int


@dataclass(frozen=True)
class Revoke:
    """The holder must drop its lease on the document, then acknowledge."""

    revocation_id: int
    tenant: str
    document_id: str


SessionEvent = Renewed | Revoke


@dataclass
class _Pending:
    key: DocumentKey
    done: "asyncio.Future[None]"


@dataclass
class LeaseSession:
    """One holder's lease session (the service side of a WatchLeases stream)."""

    session_id: str
    _table: "LeaseTable"
    expiry: float
    documents: set[DocumentKey] = field(default_factory=set)
    connected: bool = True
    ended: bool = False
    _events: "asyncio.Queue[SessionEvent | None]" = field(default_factory=asyncio.Queue)
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _owed_renewal: int | None = None

    @property
    def seconds(self) -> float:
        return self._table.session_seconds

    def live(self, now: float) -> bool:
        """Whether leases granted to it now would be seen revoked."""
        return self.connected and not self.ended and now < self.expiry

    async def keep_alive(self, sequence: int) -> None:
        """Renew the session, unless a revocation is unacknowledged: the renewal
        then waits for the acknowledgement."""
        await self._table.cover(self._table.session_seconds)
        if self.ended:
            return
        if self._pending:
            self._owed_renewal = sequence
            return
        self.expiry = self._table.clock() + self._table.session_seconds
        self._events.put_nowait(Renewed(sequence))

    async def acknowledge(self, revocation_id: int) -> bool:
        """The holder dropped the revoked lease; False for an id it was not sent."""
        pending = self._pending.pop(revocation_id, None)
        if pending is None:
            return False
        self.documents.discard(pending.key)
        if not pending.done.done():
            pending.done.set_result(None)
        REVOCATIONS.labels("acknowledged").inc()
        if not self._pending and self._owed_renewal is not None:
            sequence, self._owed_renewal = self._owed_renewal, None
            await self.keep_alive(sequence)
        return True

    async def events(self) -> AsyncIterator[SessionEvent]:
        """What to send the holder, until the session ends."""
        while (event := await self._events.get()) is not None:
            yield event

    def close(self) -> None:
        """The holder released the session: it gave its leases up, it ends now."""
        self.end()

    def disconnect(self) -> None:
        """The stream broke: the holder may still trust its leases until the
        session expires, and can be sent nothing, so writes wait for the expiry."""
        if self.ended or not self.connected:
            return
        self.connected = False
        if not self.documents or self._table.clock() >= self.expiry:
            self.end()
        else:
            self._events.put_nowait(None)

    def end(self) -> None:
        """No lease of the session is held any more (closed, or expired)."""
        if self.ended:
            return
        self.ended = True
        self.documents.clear()
        for pending in self._pending.values():
            if not pending.done.done():
                pending.done.set_result(None)
        self._pending.clear()
        self._events.put_nowait(None)
        self._table.forget(self)

    async def revoke(self, key: DocumentKey) -> None:
        """Returns once the holder has dropped its lease on `key` or the session
        has expired (which ends it)."""
        if self.ended or key not in self.documents:
            return
        revocation_id = next(self._table.revocation_ids)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[revocation_id] = _Pending(key, done)
        if self.connected:
            self._events.put_nowait(Revoke(revocation_id, *key))
        remaining = self.expiry - self._table.clock()
        if remaining > 0:
            timer = asyncio.ensure_future(self._table.sleep(remaining))
            try:
                await asyncio.wait({done, timer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
        if not done.done():
            REVOCATIONS.labels("expired").inc()
            log.warning(
                "lease session expired before acknowledging a revocation",
                extra={"session": self.session_id, "document_id": key[1]},
            )
            self.end()


class LeaseTable:
    """Leases granted on documents, and the writes waiting for them."""

    def __init__(
        self,
        duration: float,
        session_seconds: float = 0.0,
        *,
        horizon: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.duration = duration
        self.session_seconds = session_seconds
        self.clock = clock
        self.sleep = sleep
        self._wall = wall
        self._horizon_path = horizon
        self._longest = max(duration, session_seconds)
        previous = self._previous_leases()
        self._horizon = wall() + previous
        """Wall-clock time by which every lease granted so far has ended."""
        self._writes_from = clock() + previous
        """No write before this: the previous process's leases have ended then."""
        self._expiry: dict[DocumentKey, float] = {}
        self._writing: Counter[DocumentKey] = Counter()
        self._epoch = 0
        """Counts writes begun; a lookup remembers it before reading."""
        self._write_began: dict[DocumentKey, int] = {}
        self._reads: Counter[int] = Counter()
        """Epochs of the lookups in progress (they bound what must be remembered)."""
        self._swept_at = _MIN_SWEEP
        self._sessions: dict[str, LeaseSession] = {}
        self._recording = asyncio.Lock()
        self.revocation_ids = itertools.count(1)

    @property
    def sessions_enabled(self) -> bool:
        return self.session_seconds > 0

    def _previous_leases(self) -> float:
        """How much longer leases a previous process granted may be held: until
        its recorded horizon (at most the longest lease); with no record kept,
        the longest lease; with no record where one is kept, none (the index is
        fresh)."""
        if self._horizon_path is None:
            return self._longest
        try:
            horizon = float(self._horizon_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0.0
        except ValueError:
            return self._longest
        return min(max(horizon - self._wall(), 0.0), self._longest)

    async def cover(self, seconds: float) -> None:
        """Make sure the recorded horizon covers a lease of `seconds` from now,
        recording one twice as far ahead when it does not (so the file is
        written at most once per lease duration)."""
        if self._wall() + seconds <= self._horizon:
            return
        async with self._recording:  # one write at a time: they share a temporary file
            if self._wall() + seconds <= self._horizon:
                return
            horizon = self._wall() + 2 * self._longest
            if self._horizon_path is not None:
                await asyncio.to_thread(_write_atomically, self._horizon_path, repr(horizon))
            self._horizon = horizon

    async def open_session(self) -> LeaseSession:
        """A new session, alive for session_seconds (the opening keep-alive)."""
        await self.cover(self.session_seconds)
        now = self.clock()
        for stale in [s for s in self._sessions.values() if now >= s.expiry]:
            stale.end()
        session = LeaseSession(uuid.uuid4().hex, self, now + self.session_seconds)
        self._sessions[session.session_id] = session
        SESSIONS.set(len(self._sessions))
        return session

    def drain(self) -> None:
        """End every session's stream, the service is stopping (the promises
        stand: the next process waits for the recorded horizon before writing)."""
        for session in list(self._sessions.values()):
            session.disconnect()

    def forget(self, session: LeaseSession) -> None:
        self._sessions.pop(session.session_id, None)
        SESSIONS.set(len(self._sessions))

    async def leased_read(
        self,
        tenant: str,
        read: Callable[[], Awaitable[ResultT]],
        found: Callable[[ResultT], Collection[str]],
        session_id: str = "",
    ) -> tuple[ResultT, Grant]:
        """(what `read` returns, the lease granted on the documents `found` in
        it): to the live session `session_id` if given, else a timed one."""
        if self.duration <= 0 and not self.sessions_enabled:
            return await read(), Grant()
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
            return result, Grant()
        session = self._sessions.get(session_id) if session_id else None
        if session is not None and session.live(self.clock()):
            session.documents.update(keys)
            LEASES_GRANTED.labels("session").inc()
            return result, Grant(session=True)
        if self.duration <= 0:
            return result, Grant()
        await self.cover(self.duration)
        expiry = self.clock() + self.duration
        for key in keys:
            self._expiry[key] = expiry
        LEASES_GRANTED.labels("granted").inc()
        self._forget_the_past()
        return result, Grant(seconds=self.duration)

    @asynccontextmanager
    async def writing(self, tenant: str, document_id: str) -> AsyncIterator[None]:
        """Hold while writing the document: first waits until no lease on it is
        held, and grants none until the write is over."""
        if self._longest <= 0:
            yield
            return
        key = (tenant, document_id)
        self._writing[key] += 1
        self._write_began[key] = self._epoch
        self._epoch += 1
        self._forget_the_past()
        try:
            now = self.clock()
            for session in list(self._sessions.values()):
                if not session.connected and now >= session.expiry:
                    session.end()  # gone, and nobody may trust it any more
            waits: list[Awaitable[None]] = [
                s.revoke(key) for s in list(self._sessions.values()) if key in s.documents
            ]
            delay = max(self._expiry.get(key, 0.0), self._writes_from) - self.clock()
            if delay > 0:
                waits.append(self.sleep(delay))
            if waits:
                began = self.clock()
                await (waits[0] if len(waits) == 1 else asyncio.gather(*waits))
                LEASE_WAIT.observe(self.clock() - began)
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
        now = self.clock()
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        oldest = min(self._reads, default=self._epoch)
        self._write_began = {k: e for k, e in self._write_began.items() if e >= oldest}
        self._swept_at = max(_MIN_SWEEP, len(self._expiry) + len(self._write_began))


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`, durably: a crash leaves the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
