"""IngestionService: uploads, URI ingestion with progress, deletes.

Each finished document is counted by outcome (`rag_ingestion_documents_total`),
its chunks when indexed, failures by status code; documents planned by an
IngestUris call and not finished yet make the backlog gauge, the signal
ingestion scales on.

Every call names its tenant: the upload header's, IngestUris's and
DeleteDocument's `tenant` (with access labels and tags) is validated before any
byte is read or written, so a request without one fails with INVALID_ARGUMENT
and nothing else happens.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from grpc import aio
from prometheus_client import Counter, Gauge

from ragplatform.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.common.errors import InvalidInputError, PlatformError, UnimplementedError
from services.common.tenancy import Caller, validate_caller, validate_tenant
from services.ingestion.jobs import JobRunner
from services.ingestion.pipeline import DocumentAccess, IncomingDocument, IngestionPipeline
from services.ingestion.sources import Sources

Status = ingestion_pb2.IngestResult.Status
STATUS_LABELS = {
    Status.STATUS_CREATED: "created",
    Status.STATUS_UPDATED: "updated",
    Status.STATUS_UNCHANGED: "unchanged",
    Status.STATUS_FAILED: "failed",
}

DOCUMENTS = Counter(
    "rag_ingestion_documents",
    "Documents finished, by outcome: created, updated, unchanged or failed.",
    ["status"],
)
CHUNKS = Counter("rag_ingestion_chunks", "Chunks indexed by created or updated documents.")
FAILURES = Counter(
    "rag_ingestion_failures",
    "Documents that failed, by gRPC status code name (INVALID_ARGUMENT, UNAVAILABLE, ...).",
    ["code"],
)
BACKLOG = Gauge(
    "rag_ingestion_backlog_documents",
    "Documents found by running IngestUris calls and not finished yet.",
)
for _label in STATUS_LABELS.values():
    DOCUMENTS.labels(_label)


def _count(result: ingestion_pb2.IngestResult) -> None:
    DOCUMENTS.labels(STATUS_LABELS.get(result.status, "failed")).inc()
    if result.status in (Status.STATUS_CREATED, Status.STATUS_UPDATED):
        CHUNKS.inc(result.document.chunk_count)
    elif result.status == Status.STATUS_FAILED:
        FAILURES.labels(result.error_code or "UNKNOWN").inc()


def _count_failure(error: PlatformError) -> None:
    DOCUMENTS.labels("failed").inc()
    FAILURES.labels(error.code_name).inc()


def requested_access(request: ingestion_pb2.IngestUrisRequest, sources: Sources) -> DocumentAccess:
    """An IngestUris request's validated access, its URIs checked against its
    caller's tenant's sources; raised before anything is read."""
    access = DocumentAccess.validated(
        request.tenant,
        request.access_labels,
        request.tags,
        request.caller if request.HasField("caller") else None,
    )
    if not request.uris:
        raise InvalidInputError("uris is empty: name at least one file or directory")
    if access.writer is not None:  # made for a caller: only its tenant's sources
        sources.authorise(request.uris, access.tenant)
    return access


def import_runner(
    pipeline: IngestionPipeline,
) -> Callable[[ingestion_pb2.IngestUrisRequest], AsyncIterator[ingestion_pb2.IngestUrisResponse]]:
    """What a job runs: the ingestion its stored request asks for."""

    def run(
        request: ingestion_pb2.IngestUrisRequest,
    ) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        return pipeline.ingest_uris(request.uris, requested_access(request, pipeline.sources))

    return run


class IngestionServicer(ingestion_pb2_grpc.IngestionServiceServicer):
    """gRPC edge of the ingestion service."""

    def __init__(self, pipeline: IngestionPipeline, jobs: JobRunner | None = None) -> None:
        """`jobs` runs StartImport's durable jobs; None: StartImport is UNIMPLEMENTED."""
        self._pipeline = pipeline
        self._jobs = jobs

    async def UploadDocument(
        self,
        request_iterator: AsyncIterator[ingestion_pb2.UploadDocumentRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> ingestion_pb2.UploadDocumentResponse:
        try:
            result = await self._upload(request_iterator)
        except PlatformError as error:
            _count_failure(error)
            raise
        _count(result)
        return ingestion_pb2.UploadDocumentResponse(result=result)

    async def _upload(
        self, request_iterator: AsyncIterator[ingestion_pb2.UploadDocumentRequest]
    ) -> ingestion_pb2.IngestResult:
        header: ingestion_pb2.DocumentHeader | None = None
        access: DocumentAccess | None = None
        parts: list[bytes] = []
        size = 0
        async for message in request_iterator:
            if message.HasField("header"):
                if header is not None:
                    raise InvalidInputError("the upload sent a second header")
                header = message.header
                access = DocumentAccess.validated(
                    header.tenant,
                    header.access_labels,
                    header.tags,
                    header.caller if header.HasField("caller") else None,
                )
                if not header.filename:
                    raise InvalidInputError("header.filename is empty")
            elif header is None:
                raise InvalidInputError("the first upload message must be the header")
            else:
                size += len(message.data)
                # Refuse as soon as the limit is passed rather than after buffering it all.
                self._pipeline.check_size(size, header.filename)
                parts.append(message.data)
        if header is None or access is None:
            raise InvalidInputError("the upload sent no header")
        document = IncomingDocument(
            source_uri=f"upload://{header.filename}",
            filename=header.filename,
            data=b"".join(parts),
            access=access,
            declared_media_type=header.media_type,
            document_id=header.document_id,
            title=header.title,
            document_date_unix=header.document_date_unix,
        )
        # One of the tenant's slots while it is parsed and embedded (ingestion/fairness.py).
        async with self._pipeline.tenant_slots.hold(access.tenant):
            return await self._pipeline.ingest(document)

    async def IngestUris(
        self, request: ingestion_pb2.IngestUrisRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        access = requested_access(request, self._pipeline.sources)
        pending = 0
        try:
            async for event in self._pipeline.ingest_uris(request.uris, access):
                if event.HasField("plan"):
                    pending = event.plan.document_count
                    BACKLOG.inc(pending)
                else:
                    _count(event.result)
                    pending -= 1
                    BACKLOG.dec()
                yield event
        finally:
            BACKLOG.dec(pending)  # the call ended early: its documents are no longer waiting

    async def DeleteDocument(
        self, request: ingestion_pb2.DeleteDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.DeleteDocumentResponse:
        writer = (
            validate_caller(Caller(request.caller.tenant, tuple(request.caller.access_labels)))
            if request.HasField("caller")
            else None
        )
        return ingestion_pb2.DeleteDocumentResponse(
            chunks_deleted=await self._pipeline.delete(request.tenant, request.document_id, writer)
        )

    async def StartImport(
        self, request: ingestion_pb2.StartImportRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.StartImportResponse:
        jobs = self._require_jobs()
        requested_access(request.request, self._pipeline.sources)
        job = await asyncio.to_thread(jobs.start_stored, request.request)
        jobs.run_soon(job.id)
        return ingestion_pb2.StartImportResponse(job=job)

    async def GetJob(
        self, request: ingestion_pb2.GetJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.GetJobResponse:
        job = await asyncio.to_thread(
            self._require_jobs().get, validate_tenant(request.tenant), request.job_id
        )
        return ingestion_pb2.GetJobResponse(job=job)

    async def ListJobs(
        self, request: ingestion_pb2.ListJobsRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.ListJobsResponse:
        limit = min(request.page_size or 50, 1000)
        jobs = await asyncio.to_thread(
            self._require_jobs().recent, validate_tenant(request.tenant), limit
        )
        return ingestion_pb2.ListJobsResponse(jobs=jobs)

    async def CancelJob(
        self, request: ingestion_pb2.CancelJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.CancelJobResponse:
        job = await asyncio.to_thread(
            self._require_jobs().cancel, validate_tenant(request.tenant), request.job_id
        )
        return ingestion_pb2.CancelJobResponse(job=job)

    def _require_jobs(self) -> JobRunner:
        if self._jobs is None:
            raise UnimplementedError("this ingestion service keeps no jobs (no job store)")
        return self._jobs
