"""Run the ingestion service: `python -m services.ingestion`."""

from typing import Any

from pydantic import Field

from ragplatform.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.ingestion.pipeline import IngestionLimits, IngestionPipeline
from services.ingestion.servicer import IngestionServicer
from services.ingestion.sources import CloudStorage, LocalFiles, Sources, parse_allowed_sources
from services.runtime.clients import PlatformClients
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import GoogleCloudSettings
from services.runtime.startup import refuse_another_embedder


class IngestionSettings(GoogleCloudSettings):
    """Ingestion service settings (env prefix RAG_)."""

    ingestion_max_document_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="Largest document accepted, in bytes."
    )
    ingestion_target_tokens: int = Field(
        default=512,
        ge=16,
        description="Target chunk size in embedder tokens; capped at the embedder's maximum.",
    )
    ingestion_overlap_tokens: int = Field(
        default=32, ge=0, description="Tokens repeated between consecutive chunks of a section."
    )
    ingestion_embed_batch: int = Field(
        default=32, ge=1, description="Chunks per EmbedDocuments call."
    )
    ingestion_concurrency: int = Field(
        default=8,
        ge=1,
        description="Documents read, parsed and chunked at once by IngestUris.",
    )
    ingestion_embed_pool: int = Field(
        default=1024,
        ge=1,
        description=(
            "IngestUris: chunks kept ready to form embedding batches of similar length from "
            "(less padding in the model; more documents in progress at once)."
        ),
    )
    ingestion_embed_in_flight: int = Field(
        default=2,
        ge=1,
        description="IngestUris: EmbedDocuments calls outstanding at once.",
    )
    ingestion_sources: str = Field(
        default="",
        description=(
            'JSON: the URI prefixes each tenant may import from, {"acme": ["gs://acme-docs/"]}; '
            "applies to IngestUris calls made for a caller (the gateway's, an internal "
            "client's); an operator's (ragctl, no caller) may name any file or bucket."
        ),
    )
    ingestion_max_concurrent_per_tenant: int = Field(
        default=8,
        ge=0,
        description=(
            "Documents of one tenant parsed or embedded at once in a process (an upload, a "
            "document of an IngestUris, or one of its shared embedding batches); the rest "
            "wait, so one tenant's bulk imports cannot starve another's uploads; 0: no cap."
        ),
    )


def sources_of(settings: IngestionSettings) -> Sources:
    """Files, and Cloud Storage in RAG_GCP_PROJECT (the emulator at
    STORAGE_EMULATOR_HOST when set), with the tenants' allowed prefixes."""

    def storage_client() -> Any:
        from google.cloud import storage  # type: ignore[attr-defined]

        return storage.Client(project=settings.gcp_project or None)

    return Sources(
        {"file": LocalFiles(), "gs": CloudStorage(storage_client)},
        parse_allowed_sources(settings.ingestion_sources),
    )


def main() -> None:
    settings = IngestionSettings()

    async def build() -> Service:
        clients = PlatformClients(settings, "ingestion")
        await refuse_another_embedder("ingestion", clients, settings.startup_check_seconds)
        limits = IngestionLimits(
            max_document_bytes=settings.ingestion_max_document_bytes,
            target_tokens=settings.ingestion_target_tokens,
            overlap_tokens=settings.ingestion_overlap_tokens,
            embed_batch=settings.ingestion_embed_batch,
            concurrency=settings.ingestion_concurrency,
            embed_pool=settings.ingestion_embed_pool,
            embed_in_flight=settings.ingestion_embed_in_flight,
            max_concurrent_per_tenant=settings.ingestion_max_concurrent_per_tenant,
        )
        binding = ServiceBinding(
            ingestion_pb2_grpc.add_IngestionServiceServicer_to_server,
            IngestionServicer(IngestionPipeline(clients, limits, sources_of(settings))),
            ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name,
        )
        return Service([binding], cleanups=[clients.close])

    run("ingestion", settings, build)


if __name__ == "__main__":
    main()
