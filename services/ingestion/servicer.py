"""IngestionService: uploads, URI ingestion with progress, deletes."""

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from ragplatform.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.common.errors import InvalidInputError
from services.ingestion.pipeline import IncomingDocument, IngestionPipeline


class IngestionServicer(ingestion_pb2_grpc.IngestionServiceServicer):
    """gRPC edge of the ingestion service."""

    def __init__(self, pipeline: IngestionPipeline) -> None:
        self._pipeline = pipeline

    async def UploadDocument(
        self,
        request_iterator: AsyncIterator[ingestion_pb2.UploadDocumentRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> ingestion_pb2.UploadDocumentResponse:
        header: ingestion_pb2.DocumentHeader | None = None
        parts: list[bytes] = []
        size = 0
        async for message in request_iterator:
            if message.HasField("header"):
                if header is not None:
                    raise InvalidInputError("the upload sent a second header")
                header = message.header
                if not header.filename:
                    raise InvalidInputError("header.filename is empty")
            elif header is None:
                raise InvalidInputError("the first upload message must be the header")
            else:
                size += len(message.data)
                # Refuse as soon as the limit is passed rather than after buffering it all.
                self._pipeline.check_size(size, header.filename)
                parts.append(message.data)
        if header is None:
            raise InvalidInputError("the upload sent no header")
        result = await self._pipeline.ingest(
            IncomingDocument(
                source_uri=f"upload://{header.filename}",
                filename=header.filename,
                data=b"".join(parts),
                declared_media_type=header.media_type,
                document_id=header.document_id,
                title=header.title,
            )
        )
        return ingestion_pb2.UploadDocumentResponse(result=result)

    async def IngestUris(
        self, request: ingestion_pb2.IngestUrisRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        if not request.uris:
            raise InvalidInputError("uris is empty: name at least one file or directory")
        async for event in self._pipeline.ingest_uris(request.uris):
            yield event

    async def DeleteDocument(
        self, request: ingestion_pb2.DeleteDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.DeleteDocumentResponse:
        return ingestion_pb2.DeleteDocumentResponse(
            chunks_deleted=await self._pipeline.delete(request.document_id)
        )
