"""The query service's lease session with the retrieval service (the holder's
side of `RetrievalService.WatchLeases`; the grantor's is
services/retrieval/leases.py).

While the session lives, documents the answer cache looks up stay leased to it
until a write revokes them, so a hit on an answer citing them checks nothing
remotely, however long ago they were looked up. The session is kept alive by a
keep-alive every third of its duration; each renewal counts from when its
keep-alive was queued (before it was sent) and is trusted for LEASE_MARGIN of
the session's duration, so this side always stops trusting first.

Revocations are applied before they are acknowledged: the callback drops the
leases, then the acknowledgement is queued. A lookup that was in flight when a
revocation for one of its documents arrived may carry a grant made before the
write began: `watching` lets the cache see those documents and not lease them.

When the stream breaks or ends, the session is over at once on this side (the
service keeps its promise until the session would have expired). Every hour
the session is closed cleanly and a new one opened, so that no stream runs
into its deadline (an error on both sides' metrics). Reconnection
backs off from 0.2 s to 5 s; a service that grants no sessions (backend qdrant)
is asked again every minute. Without a session the cache uses timed leases.
"""

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

import grpc

from ragplatform.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.runtime.clients import PlatformClients

log = logging.getLogger(__name__)

LEASE_MARGIN = 0.9
"""Share of a lease or session this process relies on: a margin for the two
clocks' rates and for the time a reply took to be handled."""
SESSION_ROTATE_SECONDS = 3600.0
"""A session is closed (cleanly: its leases dropped first) and reopened after
this long, so that no stream meets its deadline."""
STREAM_SECONDS = SESSION_ROTATE_SECONDS + 60.0
"""Deadline of one WatchLeases stream."""
RETRY_SECONDS = (0.2, 5.0)
"""Reconnection backoff after a broken stream: first and longest wait."""
NO_SESSIONS_RETRY_SECONDS = 60.0
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
"""A retrieval service from before lease sessions: asked again every minute too."""

DocumentKey = tuple[str, str]
"""(tenant, document_id)."""


class LeaseSessionClient:
    """Keeps one lease session open and says which one is valid now."""

    def __init__(
        self,
        clients: PlatformClients,
        on_revoke: Callable[[str, Sequence[str]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._on_revoke = on_revoke
        self._clock = clock
        self._session_id = ""
        self._valid_until = 0.0
        self._watchers: list[set[DocumentKey]] = []
        self._outbox: asyncio.Queue[retrieval_pb2.WatchLeasesRequest | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._opened = False
        self._told_no_sessions = False
        self._stub: retrieval_pb2_grpc.RetrievalServiceStub | None = None

    def _retrieval(self) -> retrieval_pb2_grpc.RetrievalServiceStub:
        """The stub on this session's own channel (see PlatformClients.own_channel)."""
        if self._stub is None:
            self._stub = retrieval_pb2_grpc.RetrievalServiceStub(
                self._clients.own_channel("retrieval")
            )
        return self._stub

    def current(self) -> str:
        """The id of the session that is valid now, or ""."""
        return self._session_id if self._clock() < self._valid_until else ""

    @contextmanager
    def watching(self) -> Iterator[set[DocumentKey]]:
        """A set that collects the documents revoked while the block runs."""
        revoked: set[DocumentKey] = set()
        self._watchers.append(revoked)
        try:
            yield revoked
        finally:
            self._watchers.remove(revoked)

    def start(self) -> None:
        """Run the session in the background (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_open())

    async def close(self) -> None:
        """Stop trusting the session, then release it: the service ends it at
        once and no write waits for it."""
        self._closing = True
        self._session_id, self._valid_until = "", 0.0
        if self._task is None:
            return
        self._release()
        with suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), 2.0)
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task

    async def _keep_open(self) -> None:
        wait = RETRY_SECONDS[0]
        while not self._closing:
            self._opened = False
            try:
                await self._session()
            except grpc.aio.AioRpcError as error:
                if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, UNIMPLEMENTED):
                    if not self._told_no_sessions:
                        log.info("the retrieval service grants no lease sessions; timed leases")
                        self._told_no_sessions = True
                    await asyncio.sleep(NO_SESSIONS_RETRY_SECONDS)
                    continue
                if not self._closing:
                    log.warning("lease session lost", extra={"error": error.details()})
            finally:
                self._session_id, self._valid_until = "", 0.0
            if self._closing:
                return
            wait = RETRY_SECONDS[0] if self._opened else min(2 * wait, RETRY_SECONDS[1])
            await asyncio.sleep(wait)

    async def _session(self) -> None:
        """One session, until its stream ends."""
        self._outbox = asyncio.Queue()
        sent: dict[int, float] = {0: self._clock()}
        self._outbox.put_nowait(retrieval_pb2.WatchLeasesRequest(keep_alive=0))
        call = self._retrieval().WatchLeases(self._requests(), timeout=STREAM_SECONDS)
        keep_alive: asyncio.Task[None] | None = None
        try:
            replies = aiter(call)
            first = await anext(replies, None)
            if first is None or first.WhichOneof("kind") != "session":
                return
            self._opened = True
            seconds = first.session.session_seconds
            self._session_id = first.session.session_id
            self._valid_until = sent.pop(0) + seconds * LEASE_MARGIN
            keep_alive = asyncio.create_task(self._keep_alive(sent, seconds / 3))
            async for reply in replies:
                kind = reply.WhichOneof("kind")
                if kind == "renewed":
                    renewed_at = sent.pop(reply.renewed, None)
                    if renewed_at is not None:
                        self._valid_until = max(
                            self._valid_until, renewed_at + seconds * LEASE_MARGIN
                        )
                elif kind == "revoke":
                    self._revoke(reply.revoke)
        finally:
            if keep_alive is not None:
                keep_alive.cancel()
            call.cancel()

    def _revoke(self, revocation: retrieval_pb2.LeaseRevocation) -> None:
        self._on_revoke(revocation.tenant, revocation.document_ids)
        for watcher in self._watchers:
            watcher.update((revocation.tenant, d) for d in revocation.document_ids)
        self._outbox.put_nowait(retrieval_pb2.WatchLeasesRequest(revoked=revocation.revocation_id))

    async def _keep_alive(self, sent: dict[int, float], every: float) -> None:
        """A keep-alive every `every` seconds, until the session is rotated."""
        rotate_at = self._clock() + SESSION_ROTATE_SECONDS
        for sequence in itertools.count(1):
            await asyncio.sleep(every)
            if self._clock() >= rotate_at:
                self._session_id, self._valid_until = "", 0.0  # stop trusting it, then
                self._release()  # give it up: the service ends it
                return
            sent[sequence] = self._clock()
            self._outbox.put_nowait(retrieval_pb2.WatchLeasesRequest(keep_alive=sequence))

    def _release(self) -> None:
        """Give the session up (call once it is no longer trusted), then close
        this side of the stream."""
        self._outbox.put_nowait(retrieval_pb2.WatchLeasesRequest(release=True))
        self._outbox.put_nowait(None)

    async def _requests(self) -> AsyncIterator[retrieval_pb2.WatchLeasesRequest]:
        """What the stream sends, until close() (which half-closes it)."""
        while (request := await self._outbox.get()) is not None:
            yield request
