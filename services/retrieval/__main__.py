"""Run the retrieval service: `python -m services.retrieval`."""

import asyncio
from typing import Literal

from pydantic import Field, SecretStr

from ragplatform.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.leases import LeaseTable
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.store import RetrievalMode, VectorStore
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import PlatformSettings


class RetrievalSettings(PlatformSettings):
    """Retrieval service settings (env prefix RAG_)."""

    retrieval_backend: Literal["edge", "qdrant"] = Field(
        default="edge",
        description=(
            "Vector store: edge (Qdrant's embedded engine, index under RAG_DATA_DIR, one "
            "replica) or qdrant (a Qdrant server at RAG_QDRANT_URL, any number of replicas)."
        ),
    )
    retrieval_dimension: int = Field(
        default=384, ge=1, description="Vector dimension; must match the embedder's."
    )
    retrieval_default_mode: RetrievalMode = Field(
        default=RetrievalMode.HYBRID,
        description="Ranking for searches that leave mode unspecified (see docs/retrieval.md).",
    )
    retrieval_lease_seconds: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description=(
            "Timed read leases for the answer cache (see docs/caching.md): how long a "
            "leased document version is guaranteed, so cache hits need no version check "
            "meanwhile; a write to a leased document waits that long at most. Backend "
            "qdrant keeps them in its registry (replicas' clocks must agree to well "
            "within a tenth of it). 0 turns them off."
        ),
    )
    retrieval_lease_session_seconds: float = Field(
        default=10.0,
        ge=0,
        le=120,
        description=(
            "Lease sessions for the answer cache, backend edge only (see docs/caching.md): "
            "how long a session lasts after its holder's last renewal. Its leases last "
            "until a write revokes them; a write waits this long at most, when the "
            "holder does not acknowledge the revocation (it crashed, or is cut off). "
            "0 turns sessions off."
        ),
    )
    qdrant_url: str = Field(
        default="http://127.0.0.1:6334",
        description="gRPC endpoint of the Qdrant server (backend qdrant); https:// for TLS.",
    )
    qdrant_collection: str = Field(
        default="rag_chunks",
        description="Qdrant collection of the chunks; the registry is <name>_documents.",
    )
    qdrant_api_key: SecretStr = Field(
        default=SecretStr(""), description="API key the Qdrant server requires; empty: none."
    )
    qdrant_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Deadline of each call to the Qdrant server."
    )
    qdrant_replication_factor: int = Field(
        default=1,
        ge=1,
        description=(
            "Copies of each shard when the store creates its collections (set it to the "
            "Qdrant cluster's size, at most); writes wait for every copy."
        ),
    )


def open_store(settings: RetrievalSettings) -> VectorStore:
    """The vector store `settings` select (blocking: it may reach a server)."""
    if settings.retrieval_backend == "qdrant":
        # Imported here: qdrant-client (pydantic models, httpx) takes ~1 s to
        # import, which the embedded backend's start-up need not pay.
        from services.retrieval.qdrant import QdrantServerStore, QdrantTuning

        return QdrantServerStore.connect(
            settings.qdrant_url,
            settings.qdrant_collection,
            settings.retrieval_dimension,
            api_key=settings.qdrant_api_key.get_secret_value(),
            timeout_seconds=settings.qdrant_timeout_seconds,
            tuning=QdrantTuning(replication_factor=settings.qdrant_replication_factor),
        )
    return EdgeVectorStore.open(settings.data_dir / "index", settings.retrieval_dimension)


def lease_table(settings: RetrievalSettings) -> LeaseTable:
    """The read leases this process keeps: with the embedded engine, timed leases
    and lease sessions, the index's lease horizon recorded beside it. Replicas
    sharing a Qdrant server keep none in process: that store keeps timed leases in
    its registry (see services/retrieval/qdrant.py), and sessions need one writer."""
    if settings.retrieval_backend != "edge":
        return LeaseTable(0.0)
    return LeaseTable(
        settings.retrieval_lease_seconds,
        settings.retrieval_lease_session_seconds,
        horizon=settings.data_dir / "lease-horizon",
    )


def main() -> None:
    settings = RetrievalSettings()

    async def build() -> Service:
        store = await asyncio.to_thread(open_store, settings)
        leases = lease_table(settings)
        shared = settings.retrieval_lease_seconds if settings.retrieval_backend != "edge" else 0.0
        binding = ServiceBinding(
            retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server,
            RetrievalServicer(store, settings.retrieval_default_mode, leases, shared),
            retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name,
        )

        async def close() -> None:
            await asyncio.to_thread(store.close)

        return Service([binding], cleanups=[close], on_drain=[leases.drain])

    run("retrieval", settings, build)


if __name__ == "__main__":
    main()
