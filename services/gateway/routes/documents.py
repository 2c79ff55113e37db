"""Document routes: upload (streamed to IngestionService), list, get and delete."""

from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from grpc import aio

from ragplatform.v1 import common_pb2, ingestion_pb2, retrieval_pb2
from services.gateway.auth import CallerDep
from services.gateway.errors import GatewayError, error_responses, http_status_for
from services.gateway.schemas import (
    INT64_MAX,
    UINT32_MAX,
    DeleteResult,
    DocumentInfo,
    DocumentList,
    IngestResult,
    from_proto,
)
from services.runtime.clients import PlatformClients

UPLOAD_CHUNK_BYTES = 256 * 1024
"""Bytes per UploadDocument data message: small enough to keep the gateway's
memory flat for any file size, large enough that per-message overhead is noise."""


async def _upload_messages(
    file: UploadFile, header: ingestion_pb2.DocumentHeader
) -> AsyncIterator[ingestion_pb2.UploadDocumentRequest]:
    yield ingestion_pb2.UploadDocumentRequest(header=header)
    while chunk := await file.read(UPLOAD_CHUNK_BYTES):
        yield ingestion_pb2.UploadDocumentRequest(data=chunk)


def document_routes(clients: PlatformClients) -> APIRouter:
    """The document routes, answered by `clients.ingestion` and `clients.retrieval`."""
    router = APIRouter(tags=["documents"])

    async def visible_document(document_id: str, caller: common_pb2.Caller) -> DocumentInfo:
        """The document as the caller may see it (LookupDocuments: the retrieval
        service applies the tenant and the labels); NOT_FOUND otherwise."""
        request = retrieval_pb2.LookupDocumentsRequest(caller=caller, document_ids=[document_id])
        reply: retrieval_pb2.LookupDocumentsResponse = await clients.retrieval.LookupDocuments(
            request
        )
        if not reply.found:
            message = f"document {document_id!r} not found in tenant {caller.tenant!r}"
            raise GatewayError(404, "NOT_FOUND", message)
        return from_proto(reply.found[0], DocumentInfo)

    @router.post(
        "/documents",
        response_model=IngestResult,
        status_code=201,
        summary="Upload a document",
        responses={
            200: {"model": IngestResult, "description": "Updated or unchanged."},
            **error_responses(403, 409, 413, 429),
        },
    )
    async def upload_document(
        response: Response,
        caller: CallerDep,
        file: Annotated[UploadFile, File(description="The document's bytes.")],
        document_id: Annotated[
            str, Form(description="Id to store it under; derived from the file name if empty.")
        ] = "",
        title: Annotated[str, Form(description="Title; taken from the document if empty.")] = "",
        media_type: Annotated[
            str,
            Form(description="Declared media type; must agree with the content when set."),
        ] = "",
        access_labels: Annotated[
            list[str] | None,
            Form(
                description="Repeatable: only keys holding one of these labels see the "
                "document; none: every key of the tenant."
            ),
        ] = None,
        tags: Annotated[
            list[str] | None, Form(description="Repeatable: labels for filter.tags.")
        ] = None,
        document_date_unix: Annotated[
            int,
            Form(
                ge=0,
                le=INT64_MAX,
                description="Date of the document (Unix seconds) for filter date "
                "ranges; 0: the upload's time.",
            ),
        ] = 0,
    ) -> IngestResult:
        """IngestionService.UploadDocument into the key's tenant: 201 when created,
        200 when updated or unchanged.

        The part's own Content-Type is not forwarded: HTTP clients fill it with
        guesses (often application/octet-stream) that the service would reject as
        a mismatch; only an explicit `media_type` field is a declaration.
        """
        header = ingestion_pb2.DocumentHeader(
            filename=file.filename or "",
            media_type=media_type,
            document_id=document_id,
            title=title,
            tenant=caller.tenant,
            access_labels=access_labels or [],
            tags=tags or [],
            document_date_unix=document_date_unix,
            caller=caller,
        )
        try:
            reply: ingestion_pb2.UploadDocumentResponse = await clients.ingestion.UploadDocument(
                _upload_messages(file, header)
            )
        except aio.AioRpcError as err:
            raise GatewayError.from_rpc(err, upload=True) from None
        finally:
            await file.close()
        result = reply.result
        if result.status == ingestion_pb2.IngestResult.STATUS_FAILED:
            code = result.error_code or "INTERNAL"
            raise GatewayError(http_status_for(code, upload=True), code, result.message or code)
        if result.status != ingestion_pb2.IngestResult.STATUS_CREATED:
            response.status_code = 200
        else:
            response.headers["Location"] = f"/v1/documents/{quote(result.document.document_id)}"
        return from_proto(result, IngestResult)

    @router.get("/documents", response_model=DocumentList, summary="List documents")
    async def list_documents(
        caller: CallerDep,
        page_size: Annotated[
            int, Query(ge=0, le=UINT32_MAX, description="Documents per page; 0 = server default.")
        ] = 0,
        page_token: Annotated[str, Query(description="next_page_token of the previous page.")] = "",
    ) -> DocumentList:
        """RetrievalService.ListDocuments for the key (its tenant; documents its
        access labels hide are left out by the retrieval service), ordered by
        document id; page until next_page_token is empty."""
        request = retrieval_pb2.ListDocumentsRequest(
            page_size=page_size, page_token=page_token, caller=caller
        )
        reply: retrieval_pb2.ListDocumentsResponse = await clients.retrieval.ListDocuments(request)
        return from_proto(reply, DocumentList)

    @router.get(
        "/documents/{document_id:path}",
        response_model=DocumentInfo,
        summary="Get a document",
        responses=error_responses(404),
    )
    async def get_document(document_id: str, caller: CallerDep) -> DocumentInfo:
        """The document's summary (RetrievalService.LookupDocuments): 404 for another
        tenant's, or one the key's labels hide."""
        return await visible_document(document_id, caller)

    @router.delete(
        "/documents/{document_id:path}",
        response_model=DeleteResult,
        summary="Delete a document",
        responses=error_responses(404, 429),
    )
    async def delete_document(document_id: str, caller: CallerDep) -> DeleteResult:
        """IngestionService.DeleteDocument in the key's tenant, as the key's caller:
        removes the document and all its chunks (404 for another tenant's, or one
        its labels hide: the ingestion service applies both)."""
        request = ingestion_pb2.DeleteDocumentRequest(
            document_id=document_id, tenant=caller.tenant, caller=caller
        )
        reply: ingestion_pb2.DeleteDocumentResponse = await clients.ingestion.DeleteDocument(
            request
        )
        return DeleteResult(document_id=document_id, chunks_deleted=reply.chunks_deleted)

    return router
