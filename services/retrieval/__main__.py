"""Run the retrieval service: `python -m services.retrieval`."""

import asyncio
from typing import Literal

from pydantic import Field, SecretStr

from ragplatform.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.edge import EdgeVectorStore
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


def main() -> None:
    settings = RetrievalSettings()

    async def build() -> Service:
        store = await asyncio.to_thread(open_store, settings)
        binding = ServiceBinding(
            retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server,
            RetrievalServicer(store, settings.retrieval_default_mode),
            retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name,
        )

        async def close() -> None:
            await asyncio.to_thread(store.close)

        return Service([binding], cleanups=[close])

    run("retrieval", settings, build)


if __name__ == "__main__":
    main()
