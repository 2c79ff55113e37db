"""Run the retrieval service: `python -m services.retrieval`."""

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, SecretStr

from ragplatform.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.edge import EdgeGenerationStores, EdgeVectorStore
from services.retrieval.generations import GenerationStores, IndexGenerations
from services.retrieval.servicer import IndexGenerationServicer, RetrievalServicer
from services.retrieval.store import RetrievalMode, VectorStore
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import FirestoreSettings

if TYPE_CHECKING:
    from google.cloud import firestore

    from services.retrieval.qdrant import QdrantTuning
    from services.retrieval.vertex import VectorSearchTarget, VertexVectorStore


class VectorSearchSpare(BaseModel):
    """A deployed index for a generation of the Vector Search store."""

    index: str
    index_endpoint: str
    deployed_index_id: str
    query_endpoint: str = ""


class RetrievalSettings(FirestoreSettings):
    """Retrieval service settings (env prefix RAG_)."""

    retrieval_backend: Literal["edge", "qdrant", "vertex"] = Field(
        default="edge",
        description=(
            "Vector store: edge (Qdrant's embedded engine, index under RAG_DATA_DIR, one "
            "replica), qdrant (a Qdrant server at RAG_QDRANT_URL, any number of replicas) or "
            "vertex (Vertex AI Vector Search with its side store in Firestore, any number)."
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
    vector_search_index: str = Field(
        default="",
        description="Vector Search index resource name, projects/P/locations/L/indexes/I "
        "(backend vertex): upserts and removals.",
    )
    vector_search_index_endpoint: str = Field(
        default="",
        description="Index endpoint resource name, projects/P/locations/L/indexEndpoints/E "
        "(backend vertex): queries.",
    )
    vector_search_deployed_index_id: str = Field(
        default="", description="Id of the index's deployment on that endpoint (backend vertex)."
    )
    vector_search_query_endpoint: str = Field(
        default="",
        description="Public endpoint domain of the index endpoint, where queries go; empty: "
        "the API endpoint (a private endpoint).",
    )
    vector_search_api_endpoint: str = Field(
        default="",
        description="Vertex AI API host; empty: {RAG_GCP_LOCATION}-aiplatform.googleapis.com.",
    )
    vector_search_spare_indexes: list[VectorSearchSpare] = Field(
        default_factory=list,
        description=(
            'JSON list of {"index", "index_endpoint", "deployed_index_id", "query_endpoint"}: '
            "deployed Vector Search indexes (made by Terraform) that a re-index to another "
            "model may fill (backend vertex); each holds one generation at a time."
        ),
    )
    vector_search_exact: bool = Field(
        default=False,
        description="Search every leaf of the index (evaluation; slower on large indexes).",
    )


def open_generations(settings: RetrievalSettings) -> IndexGenerations:
    """The index's generations on the backend `settings` select (blocking)."""
    first = open_store(settings)
    stores: GenerationStores | None = None
    if settings.retrieval_backend == "vertex":
        stores = _vertex_generations(settings)
    elif settings.retrieval_backend == "edge":
        stores = EdgeGenerationStores(_edge_directory(settings))
    elif settings.retrieval_backend == "qdrant":
        from services.retrieval.qdrant import QdrantGenerationStores, server_client

        stores = QdrantGenerationStores(
            lambda: server_client(
                settings.qdrant_url,
                api_key=settings.qdrant_api_key.get_secret_value(),
                timeout_seconds=settings.qdrant_timeout_seconds,
            ),
            settings.qdrant_collection,
            _qdrant_tuning(settings),
        )
    return IndexGenerations(first, stores)


def _edge_directory(settings: RetrievalSettings) -> Path:
    return settings.data_dir / "index"


def _qdrant_tuning(settings: RetrievalSettings) -> "QdrantTuning":
    from services.retrieval.qdrant import QdrantTuning

    return QdrantTuning(replication_factor=settings.qdrant_replication_factor)


def open_store(settings: RetrievalSettings) -> VectorStore:
    """The vector store `settings` select (blocking: it may reach a server)."""
    if settings.retrieval_backend == "qdrant":
        # Imported here: qdrant-client (pydantic models, httpx) takes ~1 s to
        # import, which the embedded backend's start-up need not pay.
        from services.retrieval.qdrant import QdrantServerStore

        return QdrantServerStore.connect(
            settings.qdrant_url,
            settings.qdrant_collection,
            settings.retrieval_dimension,
            api_key=settings.qdrant_api_key.get_secret_value(),
            timeout_seconds=settings.qdrant_timeout_seconds,
            tuning=_qdrant_tuning(settings),
        )
    if settings.retrieval_backend == "vertex":
        return _open_vertex_store(settings)
    return EdgeVectorStore.open(_edge_directory(settings), settings.retrieval_dimension)


def _open_vertex_store(settings: RetrievalSettings) -> VectorStore:
    """Vector Search and Firestore with Application Default Credentials
    (Workload Identity on GKE). An http:// API endpoint is a local fake, which
    gets no credentials (they never travel in clear text);
    FIRESTORE_EMULATOR_HOST points Firestore at its emulator."""
    target = _vector_search_target(
        settings,
        settings.vector_search_index,
        settings.vector_search_index_endpoint,
        settings.vector_search_deployed_index_id,
        settings.vector_search_query_endpoint,
    )
    return _connect_vertex(
        settings, target, settings.firestore_collection_prefix, settings.retrieval_dimension
    )


def _vertex_generations(settings: RetrievalSettings) -> GenerationStores:
    """Generations on the spare indexes (`VertexGenerationStores`)."""
    from services.retrieval.firestore_side import FirestoreSideStore
    from services.retrieval.vertex import VertexGenerationStores

    spares = [
        _vector_search_target(
            settings, spare.index, spare.index_endpoint, spare.deployed_index_id,
            spare.query_endpoint,
        )
        for spare in settings.vector_search_spare_indexes
    ]  # fmt: skip
    slots = FirestoreSideStore(_firestore(settings), settings.firestore_collection_prefix)
    return VertexGenerationStores(
        spares,
        slots,
        settings.firestore_collection_prefix,
        lambda target, prefix, dimension: _connect_vertex(settings, target, prefix, dimension),
    )


def _vector_search_target(
    settings: RetrievalSettings,
    index: str,
    index_endpoint: str,
    deployed_index_id: str,
    query_endpoint: str,
) -> "VectorSearchTarget":
    from services.retrieval.vertex import VectorSearchTarget

    if not settings.gcp_project:
        raise ValueError("backend vertex needs RAG_GCP_PROJECT (a Google Cloud project)")
    return VectorSearchTarget(
        index=index,
        index_endpoint=index_endpoint,
        deployed_index_id=deployed_index_id,
        api_endpoint=settings.vector_search_api_endpoint
        or f"{settings.gcp_location}-aiplatform.googleapis.com",
        query_endpoint=query_endpoint,
    )


def _firestore(settings: RetrievalSettings) -> "firestore.Client":
    from google.cloud import firestore

    return firestore.Client(project=settings.gcp_project, database=settings.firestore_database)


def _connect_vertex(
    settings: RetrievalSettings, target: "VectorSearchTarget", prefix: str, dimension: int
) -> "VertexVectorStore":
    from services.retrieval.vertex import VertexTuning, VertexVectorStore, anonymous

    return VertexVectorStore.connect(
        target,
        _firestore(settings),
        prefix,
        dimension,
        credentials=anonymous() if target.api_endpoint.startswith("http://") else None,
        tuning=VertexTuning(exact=settings.vector_search_exact),
    )


def main() -> None:
    settings = RetrievalSettings()

    async def build() -> Service:
        generations = await asyncio.to_thread(open_generations, settings)
        services = retrieval_pb2.DESCRIPTOR.services_by_name
        bindings = [
            ServiceBinding(
                retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server,
                RetrievalServicer(generations, settings.retrieval_default_mode),
                services["RetrievalService"].full_name,
            ),
            ServiceBinding(
                retrieval_pb2_grpc.add_IndexGenerationServiceServicer_to_server,
                IndexGenerationServicer(generations),
                services["IndexGenerationService"].full_name,
            ),
        ]

        async def close() -> None:
            await asyncio.to_thread(generations.close)

        return Service(bindings, cleanups=[close])

    run("retrieval", settings, build)


if __name__ == "__main__":
    main()
