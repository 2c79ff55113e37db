"""Run the ingestion service: `python -m services.ingestion`."""

import asyncio
import os
from typing import Any, Literal

from pydantic import Field

from ragplatform.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.ingestion.jobs import FileJobStore, FirestoreJobStore, JobRunner, JobStore
from services.ingestion.parse_pool import ParseLimits, ParsePool
from services.ingestion.pipeline import IngestionLimits, IngestionPipeline
from services.ingestion.servicer import IngestionServicer, import_runner
from services.ingestion.sources import CloudStorage, LocalFiles, Sources, parse_allowed_sources
from services.runtime.clients import PlatformClients
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import FirestoreSettings
from services.runtime.startup import refuse_another_embedder


class IngestionSettings(FirestoreSettings):
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
    ingestion_job_store: Literal["file", "firestore"] = Field(
        default="file",
        description=(
            "Where import jobs (StartImport) are kept: file (RAG_DATA_DIR/jobs, one replica) "
            "or firestore (RAG_FIRESTORE_DATABASE; any number of replicas share and resume them)."
        ),
    )
    ingestion_job_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long a job stays with a replica that stops renewing it (killed, hung) "
            "before another replica resumes it."
        ),
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

    ingestion_parse_workers: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Worker processes that parse and chunk documents, each document under the limits "
            "below and killed at them; unset: min(4, CPUs); 0: parse in the service's own "
            "process, without limits."
        ),
    )
    ingestion_parse_seconds: float = Field(
        default=120,
        gt=0,
        description=(
            "Wall time and (rounded up) CPU time one document may take to parse and chunk in "
            "a worker; past it the worker is killed and the document refused."
        ),
    )
    ingestion_parse_memory_mb: int = Field(
        default=2048,
        ge=0,
        description=(
            "Address space of a parse worker in MiB (RLIMIT_AS); a document that needs more is "
            "refused; 0: no limit."
        ),
    )


def parse_pool_of(settings: IngestionSettings) -> ParsePool | None:
    """The parse workers the settings ask for, or None to parse in this process."""
    workers = settings.ingestion_parse_workers
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if not workers:
        return None
    limits = ParseLimits(
        workers, settings.ingestion_parse_seconds, settings.ingestion_parse_memory_mb
    )
    return ParsePool(limits, preload=["services.ingestion.pipeline"])


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


def job_store_of(settings: IngestionSettings) -> JobStore:
    """Files under RAG_DATA_DIR/jobs (one replica), or Firestore (any number)."""
    if settings.ingestion_job_store == "firestore":
        from google.cloud import firestore

        client = firestore.Client(
            project=settings.gcp_project or None, database=settings.firestore_database
        )
        return FirestoreJobStore(client, settings.firestore_collection_prefix)
    return FileJobStore(settings.data_dir / "jobs")


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
        parse_pool = parse_pool_of(settings)
        pipeline = IngestionPipeline(clients, limits, sources_of(settings), parse_pool)
        jobs = JobRunner(
            job_store_of(settings),
            import_runner(pipeline),
            lease_seconds=settings.ingestion_job_lease_seconds,
        )
        binding = ServiceBinding(
            ingestion_pb2_grpc.add_IngestionServiceServicer_to_server,
            IngestionServicer(pipeline, jobs),
            ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name,
        )
        # Jobs of replicas that died (or of this one before a restart) resume here.
        resuming = asyncio.create_task(jobs.resume_periodically())

        async def stop_jobs() -> None:
            resuming.cancel()
            await jobs.close()

        service = Service([binding], cleanups=[stop_jobs, clients.close])
        if parse_pool is not None:
            service.cleanups.append(parse_pool.close)
        return service

    run("ingestion", settings, build)


if __name__ == "__main__":
    main()
