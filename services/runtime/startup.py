"""Start-up checks of the services that carry vectors between embedding and retrieval.

The query and ingestion services pass the embedding service's vectors to the
index. If the embedding service runs another model than the one the index was
built with, every ask and every ingest would fail (retrieval refuses them, one
by one); a process that knows this at start-up refuses to serve instead, so a
misconfigured rollout never becomes ready and the pods already serving stay.
"""

from __future__ import annotations

import asyncio
import logging

from grpc import aio

from ragplatform.v1 import embedding_pb2, retrieval_pb2
from services.common.errors import PlatformError
from services.runtime.clients import PlatformClients

log = logging.getLogger(__name__)


async def refuse_another_embedder(service: str, clients: PlatformClients, wait: float) -> None:
    """Exit naming both models when no configured embedding service runs the
    model of the index's live vectors. Waits up to `wait` seconds for both services (they
    may start at the same time); if they do not answer, serving goes on, and
    retrieval checks each request's model instead. 0 skips the check."""
    if wait <= 0:
        return
    try:
        info, stats = await asyncio.gather(
            clients.embedding.GetModelInfo(
                embedding_pb2.GetModelInfoRequest(), timeout=wait, wait_for_ready=True
            ),
            clients.retrieval.GetStats(
                retrieval_pb2.GetStatsRequest(), timeout=wait, wait_for_ready=True
            ),
        )
    except aio.AioRpcError as error:
        log.warning(
            "could not compare the embedder with the index at start-up; retrieval checks "
            "each request instead",
            extra={"error": f"{error.code().name}: {error.details()}"},
        )
        return
    if not stats.embedding_model or stats.embedding_model == info.model:
        return
    try:
        await clients.embedders.refresh()  # another configured embedder may serve it
    except PlatformError:
        others = clients.settings.other_embedding_addresses()
        raise SystemExit(
            f"{service}: the embedding service at {clients.settings.embedding_addr} runs "
            f"'{info.model}' ({info.dimension} dimensions), but the index at "
            f"{clients.settings.retrieval_addr} holds vectors of '{stats.embedding_model}' "
            f"({stats.dimension} dimensions), and none of RAG_EMBEDDING_ADDRS "
            f"({', '.join(others) or 'empty'}) runs it; refusing to serve (docs/embedding.md, "
            '"Changing the embedder")'
        ) from None
