"""Import routes: durable imports from the tenant's Cloud Storage prefixes
(IngestionService.StartImport), their progress and their cancellation."""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ragplatform.v1 import ingestion_pb2
from services.gateway.auth import CallerDep
from services.gateway.errors import error_responses
from services.gateway.schemas import ImportBody, ImportJob, JobList, from_proto
from services.runtime.clients import PlatformClients


def job_routes(clients: PlatformClients) -> APIRouter:
    """The import routes, answered by `clients.ingestion`."""
    router = APIRouter(tags=["imports"])

    @router.post(
        "/imports",
        response_model=ImportJob,
        status_code=202,
        summary="Start an import",
        responses=error_responses(403, 429),
    )
    async def start_import(body: ImportBody, caller: CallerDep, response: Response) -> ImportJob:
        """A job importing the URIs into the key's tenant, with the key as the
        writer: 202 at once, the job's progress at `Location`. URIs outside the
        tenant's allowed prefixes are 403, naming the first."""
        request = ingestion_pb2.IngestUrisRequest(
            uris=body.uris,
            tenant=caller.tenant,
            access_labels=body.access_labels,
            tags=body.tags,
            caller=caller,
        )
        reply: ingestion_pb2.StartImportResponse = await clients.ingestion.StartImport(
            ingestion_pb2.StartImportRequest(request=request)
        )
        response.headers["Location"] = f"/v1/jobs/{reply.job.id}"
        return from_proto(reply.job, ImportJob)

    @router.get("/jobs", response_model=JobList, summary="List imports")
    async def list_jobs(
        caller: CallerDep,
        page_size: Annotated[int, Query(ge=0, le=1000, description="0: 50.")] = 0,
    ) -> JobList:
        """The tenant's imports, newest first."""
        reply: ingestion_pb2.ListJobsResponse = await clients.ingestion.ListJobs(
            ingestion_pb2.ListJobsRequest(tenant=caller.tenant, page_size=page_size)
        )
        return from_proto(reply, JobList)

    @router.get(
        "/jobs/{job_id}", response_model=ImportJob, summary="Get an import",
        responses=error_responses(404),
    )  # fmt: skip
    async def get_job(job_id: str, caller: CallerDep) -> ImportJob:
        """One import of the tenant and its progress; 404 for another tenant's."""
        reply: ingestion_pb2.GetJobResponse = await clients.ingestion.GetJob(
            ingestion_pb2.GetJobRequest(job_id=job_id, tenant=caller.tenant)
        )
        return from_proto(reply.job, ImportJob)

    @router.post(
        "/jobs/{job_id}/cancel", response_model=ImportJob, summary="Cancel an import",
        responses=error_responses(404),
    )  # fmt: skip
    async def cancel_job(job_id: str, caller: CallerDep) -> ImportJob:
        """Stop the import between documents; what it indexed stays."""
        reply: ingestion_pb2.CancelJobResponse = await clients.ingestion.CancelJob(
            ingestion_pb2.CancelJobRequest(job_id=job_id, tenant=caller.tenant)
        )
        return from_proto(reply.job, ImportJob)

    return router
