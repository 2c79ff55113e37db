"""Which embedding service to call: the one whose model the index serves.

Each embedding service runs one model. A re-index (`ragctl reindex`) switches
the index to another model, and the services that carry vectors into it
(query, ingestion) must then embed with that model: RAG_EMBEDDING_ADDR and
RAG_EMBEDDING_ADDRS list the embedding services they may use, and this router
picks the one serving the index's live model. It learns of a switch from
retrieval itself (a search answers with the live model, a write of a retired
model is ABORTED), so no process needs restarting when the index switches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grpc import aio

from ragplatform.v1 import embedding_pb2, embedding_pb2_grpc, retrieval_pb2
from services.common.errors import FailedPreconditionError, PlatformError
from services.runtime.errors import downstream

if TYPE_CHECKING:
    from services.runtime.clients import PlatformClients

log = logging.getLogger(__name__)

_PROBE_SECONDS = 5.0
"""Deadline of the GetModelInfo that asks an embedding service for its model."""
LIVE_MODEL_SECONDS = 10.0
"""How long the live model is trusted before retrieval is asked again: a
process whose questions all hit the answer cache sees no search answer, yet
must stop serving answers of the previous generation soon after a switch."""


@dataclass(frozen=True)
class Embedder:
    """One embedding service and what it announced of its model."""

    address: str
    stub: embedding_pb2_grpc.EmbeddingServiceStub
    info: embedding_pb2.GetModelInfoResponse

    @property
    def model(self) -> str:
        return self.info.model


class EmbedderRouter:
    """The embedder of the index's live model, among the configured ones."""

    def __init__(self, clients: PlatformClients) -> None:
        settings = clients.settings
        self._clients = clients
        self._addresses = list(
            dict.fromkeys([settings.embedding_addr, *settings.other_embedding_addresses()])
        )
        self._by_model: dict[str, Embedder] = {}
        self._primary: Embedder | None = None
        self._live: str | None = None
        """The index's live model; None until asked, "" while the index is empty."""
        self._asked_at = -LIVE_MODEL_SECONDS
        self._lock = asyncio.Lock()

    async def live(self) -> Embedder:
        """The embedder of the live model; the primary one (RAG_EMBEDDING_ADDR)
        while the index has no model yet. Asks retrieval at most every
        LIVE_MODEL_SECONDS; if it does not answer, the last known model serves."""
        if self._live is None or time.monotonic() - self._asked_at >= LIVE_MODEL_SECONDS:
            try:
                return await self.refresh()
            except PlatformError as error:
                if self._live is None:
                    raise
                log.warning(
                    "could not ask retrieval for the live model", extra={"error": str(error)}
                )
        return await self.serving(self._live)

    async def embed_question(self, question: str) -> embedding_pb2.EmbedQueriesResponse:
        """The question's vector from the live model's embedder (and that model)."""
        embedder = await self.live()
        with downstream("embedding", embedder.address):
            response: embedding_pb2.EmbedQueriesResponse = await embedder.stub.EmbedQueries(
                embedding_pb2.EmbedQueriesRequest(texts=[question])
            )
        return response

    async def refresh(self) -> Embedder:
        """Ask retrieval for the live model again, and return its embedder."""
        address = self._clients.settings.retrieval_addr
        with downstream("retrieval", address):
            stats = await self._clients.retrieval.GetStats(retrieval_pb2.GetStatsRequest())
        self._asked_at = time.monotonic()
        self._live = self._live or ""
        self.observe(stats.embedding_model)
        return await self.serving(stats.embedding_model)

    def observe(self, live_model: str) -> None:
        """Note the live model a retrieval answer named: later calls use it."""
        if live_model and live_model != self._live:
            if self._live:
                log.info(
                    "the index switched embedding models; embedding with the new one",
                    extra={"previous": self._live, "model": live_model},
                )
            self._live = live_model

    async def serving(self, model: str) -> Embedder:
        """The configured embedder running `model` ("": the primary one);
        FailedPreconditionError when none does."""
        if not model:
            return await self._primary_embedder()
        if model not in self._by_model:
            async with self._lock:
                await self._discover()
        if model not in self._by_model:
            known = ", ".join(f"{e.address} ({e.model})" for e in self._by_model.values())
            raise FailedPreconditionError(
                f"the index serves embedding model '{model}', which none of the embedding "
                f"services in RAG_EMBEDDING_ADDR and RAG_EMBEDDING_ADDRS runs "
                f"({known or 'none answered'})"
            )
        return self._by_model[model]

    async def serving_at(self, address: str) -> Embedder:
        """The embedding service at `address`, configured or not, with its model."""
        with downstream("embedding", address):
            return await self._probe(address)

    async def _primary_embedder(self) -> Embedder:
        if self._primary is None:
            async with self._lock:
                if self._primary is None:
                    with downstream("embedding", self._addresses[0]):
                        self._primary = await self._probe(self._addresses[0])
                    self._by_model.setdefault(self._primary.model, self._primary)
        return self._primary

    async def _discover(self) -> None:
        """Ask every embedding service not known yet for its model; one that does
        not answer is asked again at the next miss."""
        known = {e.address for e in self._by_model.values()}
        for address in self._addresses:
            if address in known:
                continue
            try:
                embedder = await self._probe(address)
            except aio.AioRpcError as error:
                log.warning(
                    "embedding service did not say its model",
                    extra={"address": address, "error": f"{error.code().name}"},
                )
                continue
            self._by_model.setdefault(embedder.model, embedder)

    async def _probe(self, address: str) -> Embedder:
        stub = self._clients.embedding_at(address)
        info = await stub.GetModelInfo(embedding_pb2.GetModelInfoRequest(), timeout=_PROBE_SECONDS)
        return Embedder(address, stub, info)
