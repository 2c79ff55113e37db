"""One document from bytes to indexed chunks: parse, chunk, embed, replace.

Nothing reaches the index until the document's every chunk is embedded; the
final ReplaceDocument swaps old chunks for new in one step, so a failure at any
stage leaves no partial document, and a retried ingest of the same bytes is a
no-op (skipped by content hash, and chunk ids are deterministic anyway).
"""

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ragplatform.v1 import common_pb2, embedding_pb2, ingestion_pb2, retrieval_pb2
from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    PlatformError,
    TooLargeError,
    UnimplementedError,
)
from services.ingestion.chunking import ChunkDraft, ChunkingConfig, HFTokenCounter, chunk_document
from services.ingestion.ids import (
    chunk_id_for,
    content_sha256,
    document_id_for,
    validate_document_id,
)
from services.ingestion.parsers import SUPPORTED_EXTENSIONS, detect_media_type, parse_document
from services.runtime.clients import PlatformClients
from services.runtime.errors import downstream

log = logging.getLogger(__name__)

Status = ingestion_pb2.IngestResult.Status


@dataclass(frozen=True)
class IngestionLimits:
    """Limits and tuning of the pipeline (from settings)."""

    max_document_bytes: int
    target_tokens: int
    overlap_tokens: int
    embed_batch: int
    concurrency: int


@dataclass(frozen=True)
class IncomingDocument:
    """A document's bytes and what its sender told us about it."""

    source_uri: str
    filename: str
    data: bytes
    declared_media_type: str = ""
    document_id: str = ""
    title: str = ""


def normalise_uri(uri: str) -> str:
    """`file:///abs/path` for a file URI or a plain path; other schemes unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme == "file" else uri
        return Path(path).expanduser().resolve().as_uri()
    return uri


def failed_result(source_uri: str, error: PlatformError) -> ingestion_pb2.IngestResult:
    """The per-document result of a document that could not be ingested."""
    return ingestion_pb2.IngestResult(
        status=Status.STATUS_FAILED,
        error_code=error.code_name,
        message=str(error),
        source_uri=source_uri,
    )


class IngestionPipeline:
    """Runs documents through parse → chunk → embed → index."""

    def __init__(self, clients: PlatformClients, limits: IngestionLimits) -> None:
        self._clients = clients
        self._limits = limits
        self._counter: HFTokenCounter | None = None
        self._config: ChunkingConfig | None = None
        self._setup_lock = asyncio.Lock()

    async def _chunking(self) -> tuple[HFTokenCounter, ChunkingConfig]:
        """Tokenizer and limits of the embedder, fetched once from the embedding service.

        Chunks are measured with the embedder's own tokenizer so that none is ever
        truncated by the model.
        """
        async with self._setup_lock:
            if self._counter is None or self._config is None:
                address = self._clients.settings.embedding_addr
                with downstream("embedding", address):
                    info = await self._clients.embedding.GetModelInfo(
                        embedding_pb2.GetModelInfoRequest()
                    )
                if not info.tokenizer_json:
                    raise PlatformError(f"embedder {info.model} publishes no tokenizer")
                max_tokens = info.max_input_tokens - info.special_tokens_per_input
                self._counter = HFTokenCounter.from_json(info.tokenizer_json)
                self._config = ChunkingConfig(
                    max_tokens=max_tokens,
                    target_tokens=min(self._limits.target_tokens, max_tokens),
                    overlap_tokens=self._limits.overlap_tokens,
                )
            return self._counter, self._config

    def check_size(self, size: int, name: str) -> None:
        """Refuse a document over the configured size limit."""
        if size > self._limits.max_document_bytes:
            raise TooLargeError(
                f"{name} is {size} bytes; the limit is {self._limits.max_document_bytes} bytes"
            )

    async def _existing(self, document_id: str) -> common_pb2.DocumentInfo | None:
        address = self._clients.settings.retrieval_addr
        try:
            with downstream("retrieval", address):
                response: retrieval_pb2.GetDocumentResponse = (
                    await self._clients.retrieval.GetDocument(
                        retrieval_pb2.GetDocumentRequest(document_id=document_id)
                    )
                )
        except PlatformError as error:
            if error.code_name == "NOT_FOUND":
                return None
            raise
        return response.document

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        batch = self._limits.embed_batch
        address = self._clients.settings.embedding_addr

        async def embed_slice(start: int) -> list[list[float]]:
            with downstream("embedding", address):
                response = await self._clients.embedding.EmbedDocuments(
                    embedding_pb2.EmbedDocumentsRequest(texts=texts[start : start + batch])
                )
            return [list(v.values) for v in response.vectors]

        parts = await asyncio.gather(*(embed_slice(i) for i in range(0, len(texts), batch)))
        return [vector for part in parts for vector in part]

    async def ingest(self, document: IncomingDocument) -> ingestion_pb2.IngestResult:
        """Ingest one document; raises PlatformError naming the problem on failure."""
        name = document.filename or document.source_uri
        self.check_size(len(document.data), name)
        document_id = (
            validate_document_id(document.document_id)
            if document.document_id
            else document_id_for(document.source_uri)
        )
        digest = content_sha256(document.data)
        existing = await self._existing(document_id)
        if existing is not None and existing.content_sha256 == digest:
            return ingestion_pb2.IngestResult(
                status=Status.STATUS_UNCHANGED, document=existing, source_uri=document.source_uri
            )
        media_type = detect_media_type(
            document.filename, document.data, document.declared_media_type
        )
        counter, config = await self._chunking()
        parsed = await asyncio.to_thread(
            parse_document, document.filename, document.data, media_type
        )
        drafts = await asyncio.to_thread(chunk_document, parsed, counter, config)
        if not drafts:
            raise InvalidInputError(f"{name}: no text to index")
        title = document.title or parsed.title
        vectors = await self._embed([d.text for d in drafts])
        info = common_pb2.DocumentInfo(
            document_id=document_id,
            title=title,
            source_uri=document.source_uri,
            media_type=media_type,
            content_sha256=digest,
            chunk_count=len(drafts),
            size_bytes=len(document.data),
            indexed_at_unix=int(time.time()),
        )
        request = retrieval_pb2.ReplaceDocumentRequest(
            document=info,
            chunks=[
                retrieval_pb2.IndexedChunk(
                    chunk=self._chunk_message(info, draft), vector=embedding_pb2.Vector(values=v)
                )
                for draft, v in zip(drafts, vectors, strict=True)
            ],
        )
        with downstream("retrieval", self._clients.settings.retrieval_addr):
            await self._clients.retrieval.ReplaceDocument(request)
        status = Status.STATUS_CREATED if existing is None else Status.STATUS_UPDATED
        log.info(
            "document indexed",
            extra={
                "document_id": document_id,
                "chunks": len(drafts),
                "status": Status.Name(status),
            },
        )
        return ingestion_pb2.IngestResult(
            status=status, document=info, source_uri=document.source_uri
        )

    @staticmethod
    def _chunk_message(info: common_pb2.DocumentInfo, draft: ChunkDraft) -> common_pb2.Chunk:
        return common_pb2.Chunk(
            chunk_id=chunk_id_for(info.document_id, draft.ordinal, draft.text),
            document_id=info.document_id,
            ordinal=draft.ordinal,
            text=draft.text,
            title=info.title,
            section=draft.section,
            page=draft.page,
            char_start=draft.char_start,
            char_end=draft.char_end,
            source_uri=info.source_uri,
            media_type=info.media_type,
            token_count=draft.token_count,
        )

    async def ingest_uris(
        self, uris: Iterable[str]
    ) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        """Ingest every document the URIs name; one result per document as each finishes.

        A failing document is reported and does not stop the others. Documents are
        processed `concurrency` at a time so their chunks share embedding batches.
        """
        targets: list[tuple[str, Path | PlatformError]] = []
        for uri in uris:
            targets.extend(self._expand(uri))
        yield ingestion_pb2.IngestUrisResponse(
            plan=ingestion_pb2.IngestPlan(document_count=len(targets))
        )
        semaphore = asyncio.Semaphore(self._limits.concurrency)

        async def run_one(
            source_uri: str, target: Path | PlatformError
        ) -> ingestion_pb2.IngestResult:
            async with semaphore:
                try:
                    if isinstance(target, PlatformError):
                        raise target
                    data = await asyncio.to_thread(self._read, target)
                    return await self.ingest(IncomingDocument(source_uri, target.name, data))
                except PlatformError as error:
                    return failed_result(source_uri, error)

        tasks = [asyncio.create_task(run_one(uri, target)) for uri, target in targets]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield ingestion_pb2.IngestUrisResponse(result=await next_done)
        finally:
            for task in tasks:
                task.cancel()

    def _read(self, path: Path) -> bytes:
        size = path.stat().st_size
        self.check_size(size, path.name)
        return path.read_bytes()

    @staticmethod
    def _expand(uri: str) -> list[tuple[str, Path | PlatformError]]:
        """The files a URI names: itself, or a directory's supported files, sorted."""
        normalised = normalise_uri(uri)
        scheme = urlparse(normalised).scheme
        if scheme != "file":
            message = f"{uri}: the {scheme}:// scheme is not supported yet (file:// is)"
            return [(normalised, UnimplementedError(message))]
        path = Path(unquote(urlparse(normalised).path))
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in SUPPORTED_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            return [(p.as_uri(), p) for p in files]
        if not path.exists():
            return [(normalised, NotFoundError(f"{path}: no such file or directory"))]
        if not os.access(path, os.R_OK):
            return [(normalised, PermissionDeniedError(f"{path}: permission denied"))]
        return [(normalised, path)]

    async def delete(self, document_id: str) -> int:
        """Remove a document's chunks and record; NOT_FOUND when unknown."""
        if not document_id:
            raise InvalidInputError("document_id is empty")
        with downstream("retrieval", self._clients.settings.retrieval_addr):
            response: retrieval_pb2.RemoveDocumentResponse = (
                await self._clients.retrieval.RemoveDocument(
                    retrieval_pb2.RemoveDocumentRequest(document_id=document_id)
                )
            )
        return response.chunks_deleted
