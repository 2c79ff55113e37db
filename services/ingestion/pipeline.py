"""One document from bytes to indexed chunks: parse, chunk, embed, replace.

Nothing reaches the index until the document's every chunk is embedded; the
final ReplaceDocument swaps old chunks for new in one step, so a failure at any
stage leaves no partial document, and a retried ingest of the same bytes is a
no-op (skipped by content hash, and chunk ids are deterministic anyway).

Every document belongs to one tenant (`DocumentAccess`), validated before
anything is read: the unchanged check, the chunk ids, the index writes and
deletes are all per tenant, so the same document id in two tenants names two
independent documents.

IngestUris runs many documents at once and lets their chunks share embedding
batches of similar length (`_BulkIngestion`); a single upload embeds its own
chunks (the embedding service's micro-batcher still merges concurrent uploads).
"""

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ragplatform.v1 import common_pb2, embedding_pb2, ingestion_pb2, retrieval_pb2
from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    PlatformError,
    TooLargeError,
)
from services.common.tenancy import (
    Caller,
    may_see,
    validate_caller,
    validate_labels,
    validate_tenant,
)
from services.ingestion.chunking import (
    ChunkDraft,
    ChunkingConfig,
    HFTokenCounter,
    OffsetTokenCounter,
    Utf8BoundCounter,
    chunk_document,
)
from services.ingestion.fairness import TenantSlots
from services.ingestion.ids import (
    chunk_id_for,
    content_sha256,
    document_id_for,
    validate_document_id,
)
from services.ingestion.parse_pool import ParsePool
from services.ingestion.parsers import (
    ParsedDocument,
    detect_media_type,
    parse_document,
)
from services.ingestion.sources import Expanded, LocalFiles, SourceObject, Sources
from services.runtime.clients import PlatformClients
from services.runtime.embedders import Embedder
from services.runtime.errors import downstream

log = logging.getLogger(__name__)

Status = ingestion_pb2.IngestResult.Status

_INDEX_CONCURRENCY = 16
"""ReplaceDocument calls outstanding at once per IngestUris (the store commits them in groups)."""
_INDEX_BACKLOG = 256
"""Documents embedded and not yet indexed at which IngestUris stops sending batches."""


@dataclass(frozen=True)
class IngestionLimits:
    """Limits and tuning of the pipeline (from settings)."""

    max_document_bytes: int
    target_tokens: int
    overlap_tokens: int
    embed_batch: int
    concurrency: int
    embed_pool: int = 2048
    """IngestUris: chunks kept ready to choose embedding batches from (by length)."""
    embed_in_flight: int = 2
    """IngestUris: EmbedDocuments calls outstanding at once (one running, one queued)."""
    max_concurrent_per_tenant: int = 0
    """Documents (or shared embedding batches) of one tenant at work at once; 0: no cap."""


@dataclass(frozen=True)
class DocumentAccess:
    """Who owns a request's documents and who may see them; build with `validated`."""

    tenant: str
    access_labels: tuple[str, ...] = ()
    """Only callers holding one of these see the documents; empty: the whole tenant."""
    tags: tuple[str, ...] = ()
    writer: Caller | None = None
    """Who writes (an API key's caller); None: an operator, who may write anything."""

    @classmethod
    def validated(
        cls,
        tenant: str,
        access_labels: Sequence[str] = (),
        tags: Sequence[str] = (),
        writer: common_pb2.Caller | None = None,
    ) -> "DocumentAccess":
        """Check a request's tenant, labels, tags (sorted, without duplicates) and
        writer; raise InvalidInputError naming the field, or PermissionDeniedError
        when the writer could not see what it writes. Called before anything is read."""
        access = cls(
            tenant=validate_tenant(tenant),
            access_labels=validate_labels(access_labels, "access label"),
            tags=validate_labels(tags, "tag"),
        )
        if writer is None:
            return access
        caller = validate_caller(Caller(writer.tenant, tuple(writer.access_labels)))
        if caller.tenant != access.tenant:
            raise PermissionDeniedError(
                f"a caller of tenant {caller.tenant!r} may not write in tenant {access.tenant!r}"
            )
        if not may_see(caller.access_labels, access.access_labels):
            raise PermissionDeniedError(
                "the caller may not write documents it could not read: it holds none of "
                f"their access labels {list(access.access_labels)}"
            )
        return replace(access, writer=caller)

    def may_replace(self, existing: common_pb2.DocumentInfo) -> bool:
        """Whether the writer may replace `existing`: it must be able to see it."""
        return self.writer is None or may_see(self.writer.access_labels, existing.access_labels)


@dataclass(frozen=True)
class IncomingDocument:
    """A document's bytes and what its sender told us about it."""

    source_uri: str
    filename: str
    data: bytes
    access: DocumentAccess
    declared_media_type: str = ""
    document_id: str = ""
    title: str = ""
    document_date_unix: int = 0
    """The document's date (Unix seconds): a file's modification time, or what an
    upload declared; 0 when unknown."""
    source_version: str = ""
    """The source's version of `data` (a Cloud Storage generation), "" if none."""


@dataclass(eq=False)
class _Prepared:
    """A document parsed and chunked, waiting for the vectors of its chunks."""

    source_uri: str
    document_id: str
    access: DocumentAccess
    document_date_unix: int
    digest: str
    size_bytes: int
    media_type: str
    title: str
    replaces: bool
    """Whether an older version is indexed (the result is UPDATED, not CREATED)."""
    source_version: str
    drafts: list[ChunkDraft]
    embedder: Embedder
    """The embedding service of the index's live model when the document was chunked."""
    vectors: list[embedding_pb2.Vector | None] = field(default_factory=list)
    missing: int = 0
    abandoned: bool = False
    """Left the shared batches: embedded on its own after a batch failed."""
    embedding_model: str = ""
    """The model that embedded the chunks, as the embedding service named it."""

    def __post_init__(self) -> None:
        self.vectors = [None] * len(self.drafts)
        self.missing = len(self.drafts)


def failed_result(source_uri: str, error: PlatformError) -> ingestion_pb2.IngestResult:
    """The per-document result of a document that could not be ingested."""
    return ingestion_pb2.IngestResult(
        status=Status.STATUS_FAILED,
        error_code=error.code_name,
        message=str(error),
        source_uri=source_uri,
    )


def _unchanged(existing: common_pb2.DocumentInfo, digest: str, document: IncomingDocument) -> bool:
    """Whether the indexed version is this one: same bytes, and the same labels,
    tags and date (relabelling a document must reach its chunks, so it is re-indexed)."""
    access = document.access
    return (
        existing.content_sha256 == digest
        and set(existing.access_labels) == set(access.access_labels)
        and set(existing.tags) == set(access.tags)
        and existing.document_date_unix == document.document_date_unix
    )


def _parse_and_chunk(
    document: IncomingDocument,
    media_type: str,
    counter: OffsetTokenCounter,
    config: ChunkingConfig,
) -> tuple[ParsedDocument, list[ChunkDraft]]:
    parsed = parse_document(document.filename, document.data, media_type)
    return parsed, chunk_document(parsed, counter, config)


def _parse_and_chunk_in_worker(
    document: IncomingDocument,
    media_type: str,
    info: embedding_pb2.GetModelInfoResponse,
    config: ChunkingConfig,
) -> tuple[ParsedDocument, list[ChunkDraft]]:
    """`_parse_and_chunk` in a parse worker process: a counter does not pickle,
    so the worker builds it from the model's info, once per model."""
    return _parse_and_chunk(document, media_type, _worker_counter(info.SerializeToString()), config)


@functools.lru_cache(maxsize=4)
def _worker_counter(info: bytes) -> OffsetTokenCounter:
    return _counter(embedding_pb2.GetModelInfoResponse.FromString(info))


def _counter(info: embedding_pb2.GetModelInfoResponse) -> OffsetTokenCounter:
    """The token counter the embedder announces (GetModelInfo's `token_counting`)."""
    if info.token_counting == embedding_pb2.TOKEN_COUNTING_UTF8_BYTES_UPPER_BOUND:
        return Utf8BoundCounter()
    if not info.tokenizer_json:
        raise PlatformError(f"embedder {info.model} publishes no tokenizer and no token bound")
    return HFTokenCounter.from_json(info.tokenizer_json)


class IngestionPipeline:
    """Runs documents through parse → chunk → embed → index."""

    def __init__(
        self,
        clients: PlatformClients,
        limits: IngestionLimits,
        sources: Sources | None = None,
        parse_pool: ParsePool | None = None,
    ) -> None:
        # Documents are tokenized one per worker thread, so concurrency comes from
        # the documents; the tokenizer's own thread pool would only add wake-up
        # costs, CPU taken from the model (docs/benchmarks.md).
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._clients = clients
        self._limits = limits
        self.sources = sources or Sources({"file": LocalFiles()}, {})
        self.tenant_slots = TenantSlots(limits.max_concurrent_per_tenant)
        self._chunking_of: dict[str, tuple[OffsetTokenCounter, ChunkingConfig]] = {}
        self._parse_pool = parse_pool
        """Worker processes that parse and chunk under limits; None: in a thread here."""

    def _chunking(self, embedder: Embedder) -> tuple[OffsetTokenCounter, ChunkingConfig]:
        """Token counter and limits of the embedder's model, built once per model.

        Chunks are measured with the embedder's own tokenizer, or with the upper
        bound of its count that it announces when its tokenizer is not public,
        so that none is ever truncated or refused by the model.
        """
        if embedder.model not in self._chunking_of:
            info = embedder.info
            max_tokens = info.max_input_tokens - info.special_tokens_per_input
            self._chunking_of[embedder.model] = (
                _counter(info),
                ChunkingConfig(
                    max_tokens=max_tokens,
                    target_tokens=min(self._limits.target_tokens, max_tokens),
                    overlap_tokens=self._limits.overlap_tokens,
                ),
            )
        return self._chunking_of[embedder.model]

    def check_size(self, size: int, name: str) -> None:
        """Refuse a document over the configured size limit."""
        if size > self._limits.max_document_bytes:
            raise TooLargeError(
                f"{name} is {size} bytes; the limit is {self._limits.max_document_bytes} bytes"
            )

    async def _existing(self, tenant: str, document_id: str) -> common_pb2.DocumentInfo | None:
        address = self._clients.settings.retrieval_addr
        try:
            with downstream("retrieval", address):
                response: retrieval_pb2.GetDocumentResponse = (
                    await self._clients.retrieval.GetDocument(
                        retrieval_pb2.GetDocumentRequest(tenant=tenant, document_id=document_id)
                    )
                )
        except PlatformError as error:
            if error.code_name == "NOT_FOUND":
                return None
            raise
        return response.document

    async def _embed(self, prepared: _Prepared) -> list[embedding_pb2.Vector]:
        """The vectors of one document's chunk texts, embedded with its title;
        records the model that embedded them on `prepared`."""
        texts, title = [d.text for d in prepared.drafts], prepared.title
        batch = self._limits.embed_batch
        embedder = prepared.embedder

        async def embed_slice(start: int) -> list[embedding_pb2.Vector]:
            part = texts[start : start + batch]
            with downstream("embedding", embedder.address):
                response = await embedder.stub.EmbedDocuments(
                    embedding_pb2.EmbedDocumentsRequest(texts=part, titles=[title] * len(part))
                )
            prepared.embedding_model = response.model
            return list(response.vectors)

        parts = await asyncio.gather(*(embed_slice(i) for i in range(0, len(texts), batch)))
        return [vector for part in parts for vector in part]

    async def _tenant_is_empty(self, tenant: str) -> bool:
        """Whether the tenant has no indexed document (then none needs looking up)."""
        address = self._clients.settings.retrieval_addr
        with downstream("retrieval", address):
            listing: retrieval_pb2.ListDocumentsResponse = (
                await self._clients.retrieval.ListDocuments(
                    retrieval_pb2.ListDocumentsRequest(tenant=tenant, page_size=1)
                )
            )
        return not listing.documents

    async def _prepare(
        self, document: IncomingDocument, look_up: bool = True, embedder: Embedder | None = None
    ) -> _Prepared | ingestion_pb2.IngestResult:
        """Parse and chunk a document, or its result when there is nothing to embed.

        `look_up=False` skips asking the index for an indexed version (known absent).
        Chunks are cut for `embedder`, by default the live model's.
        """
        name = document.filename or document.source_uri
        self.check_size(len(document.data), name)
        document_id = (
            validate_document_id(document.document_id)
            if document.document_id
            else document_id_for(document.source_uri)
        )
        digest = content_sha256(document.data)
        access = document.access
        existing = await self._existing(access.tenant, document_id) if look_up else None
        if existing is not None and not access.may_replace(existing):
            # The same refusal whatever hides it: the writer learns nothing of the document.
            raise PermissionDeniedError(
                f"{name}: the caller may not write document {document_id!r}"
            )
        if existing is not None and _unchanged(existing, digest, document):
            return ingestion_pb2.IngestResult(
                status=Status.STATUS_UNCHANGED, document=existing, source_uri=document.source_uri
            )
        media_type = detect_media_type(
            document.filename, document.data, document.declared_media_type
        )
        embedder = embedder or await self._clients.embedders.live()
        counter, config = self._chunking(embedder)
        if self._parse_pool is None:
            parsed, drafts = await asyncio.to_thread(
                _parse_and_chunk, document, media_type, counter, config
            )
        else:
            parsed, drafts = await self._parse_pool.run(
                _parse_and_chunk_in_worker,
                document,
                media_type,
                embedder.info,
                config,
                name=name,
                key=access.tenant,
            )
        if not drafts:
            raise InvalidInputError(f"{name}: no text to index")
        return _Prepared(
            source_uri=document.source_uri,
            document_id=document_id,
            access=access,
            document_date_unix=document.document_date_unix,
            digest=digest,
            size_bytes=len(document.data),
            media_type=media_type,
            title=document.title or parsed.title,
            replaces=existing is not None,
            drafts=drafts,
            embedder=embedder,
            source_version=document.source_version,
        )

    async def _index(
        self, prepared: _Prepared, vectors: Sequence[embedding_pb2.Vector]
    ) -> ingestion_pb2.IngestResult:
        """Replace the document's chunks in the index with the embedded ones. If
        the index switched to another embedding model meanwhile (ABORTED), the
        chunks are embedded again with that model's embedder and written once
        more; a chunk too long for it fails the document, naming the chunk."""
        try:
            return await self._write(prepared, vectors)
        except PlatformError as error:
            if error.code_name != "ABORTED":
                raise
            log.info(
                "index switched embedding models; embedding again", extra={"error": str(error)}
            )
        prepared.embedder = await self._clients.embedders.refresh()
        return await self._write(prepared, await self._embed(prepared))

    async def _write(
        self, prepared: _Prepared, vectors: Sequence[embedding_pb2.Vector]
    ) -> ingestion_pb2.IngestResult:
        """ReplaceDocument with `vectors`; the document's result."""
        info = common_pb2.DocumentInfo(
            document_id=prepared.document_id,
            title=prepared.title,
            source_uri=prepared.source_uri,
            media_type=prepared.media_type,
            content_sha256=prepared.digest,
            chunk_count=len(prepared.drafts),
            size_bytes=prepared.size_bytes,
            indexed_at_unix=int(time.time()),
            tenant=prepared.access.tenant,
            access_labels=prepared.access.access_labels,
            tags=prepared.access.tags,
            document_date_unix=prepared.document_date_unix,
            source_version=prepared.source_version,
        )
        request = retrieval_pb2.ReplaceDocumentRequest(
            document=info,
            chunks=[
                retrieval_pb2.IndexedChunk(chunk=self._chunk_message(info, draft), vector=vector)
                for draft, vector in zip(prepared.drafts, vectors, strict=True)
            ],
            embedding_model=prepared.embedding_model,
        )
        with downstream("retrieval", self._clients.settings.retrieval_addr):
            await self._clients.retrieval.ReplaceDocument(request)
        status = Status.STATUS_UPDATED if prepared.replaces else Status.STATUS_CREATED
        log.info(
            "document indexed",
            extra={
                "document_id": prepared.document_id,
                "tenant": prepared.access.tenant,
                "chunks": len(prepared.drafts),
                "status": Status.Name(status),
            },
        )
        return ingestion_pb2.IngestResult(
            status=status, document=info, source_uri=prepared.source_uri
        )

    async def ingest(self, document: IncomingDocument) -> ingestion_pb2.IngestResult:
        """Ingest one document; raises PlatformError naming the problem on failure."""
        prepared = await self._prepare(document)
        if isinstance(prepared, ingestion_pb2.IngestResult):
            return prepared
        vectors = await self._embed(prepared)
        return await self._index(prepared, vectors)

    @staticmethod
    def _chunk_message(info: common_pb2.DocumentInfo, draft: ChunkDraft) -> common_pb2.Chunk:
        return common_pb2.Chunk(
            chunk_id=chunk_id_for(info.tenant, info.document_id, draft.ordinal, draft.text),
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
            tenant=info.tenant,
            access_labels=info.access_labels,
            tags=info.tags,
            document_date_unix=info.document_date_unix,
        )

    async def ingest_uris(
        self, uris: Iterable[str], access: DocumentAccess
    ) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        """Ingest every document the URIs name into `access.tenant`, with its labels
        and tags; one result per document as each finishes. A file's date is its
        modification time.

        A failing document is reported and does not stop the others. The chunks of
        many documents share embedding batches of similar length (see
        `_BulkIngestion`), so results arrive in no particular order.
        """
        targets: list[Expanded] = []
        for uri in uris:
            targets.extend(await asyncio.to_thread(self.sources.expand, uri))
        yield ingestion_pb2.IngestUrisResponse(
            plan=ingestion_pb2.IngestPlan(document_count=len(targets))
        )
        async for result in _BulkIngestion(self, targets, access).run():
            yield ingestion_pb2.IngestUrisResponse(result=result)

    def _read(self, item: SourceObject) -> tuple[bytes, SourceObject]:
        """The object's bytes (checked against the size limit first) and the
        object they are."""
        self.check_size(item.size, item.name)
        data, read = self.sources.read(item)
        self.check_size(len(data), item.name)  # replaced by a larger version meanwhile
        return data, read

    async def delete(self, tenant: str, document_id: str, writer: Caller | None = None) -> int:
        """Remove the tenant's document (chunks and record); NOT_FOUND when the
        tenant has no such document, or `writer` could not see it (the same answer).
        Other tenants' documents are never touched."""
        validate_tenant(tenant)
        if not document_id:
            raise InvalidInputError("document_id is empty")
        if writer is not None:
            if writer.tenant != tenant:
                raise PermissionDeniedError(
                    f"a caller of tenant {writer.tenant!r} may not delete in tenant {tenant!r}"
                )
            existing = await self._existing(tenant, document_id)
            if existing is None or not may_see(writer.access_labels, existing.access_labels):
                raise NotFoundError(f"document {document_id!r} not found in tenant {tenant!r}")
        with downstream("retrieval", self._clients.settings.retrieval_addr):
            response: retrieval_pb2.RemoveDocumentResponse = (
                await self._clients.retrieval.RemoveDocument(
                    retrieval_pb2.RemoveDocumentRequest(tenant=tenant, document_id=document_id)
                )
            )
        return response.chunks_deleted


@dataclass(frozen=True, eq=False)
class _PoolChunk:
    """A chunk waiting for an embedding batch."""

    document: _Prepared
    index: int
    tokens: int
    order: int
    """Arrival order in the pool: the oldest chunk has the smallest."""


class _BulkIngestion:
    """One IngestUris call: many documents through shared, length-grouped embedding batches.

    Why not one EmbedDocuments call per document: a short document gives a
    chunk or two, so per-document calls only fill the model's batches if
    hundreds of documents wait in the embedding service's queue at once, longer
    than any call deadline; and whatever fills a batch, the model pads every
    text to the longest in it, so batches mixing short and long chunks waste
    the model's time (docs/benchmarks.md). Instead:

    * `concurrency` workers read, check (content hash), parse and chunk
      documents ahead into a pool of up to `embed_pool` chunks;
    * a feeder keeps `embed_in_flight` EmbedDocuments calls of `embed_batch`
      chunks outstanding (one running on the model, one queued behind it), each
      the chunks of most similar token count that include the pool's oldest
      chunk: every chunk is sent within `embed_pool / embed_batch` batches;
    * a document whose chunks all have vectors is indexed (ReplaceDocument)
      right away, concurrently with the embedding of later batches.

    Each document is looked up in the tenant's index first (unchanged content,
    labels, tags and date are skipped, anything else is reported UPDATED),
    except when the tenant had no document when the call started, the initial
    load: then every document is new. (A concurrent ingestion of the same files
    into the empty tenant makes both report CREATED; the index ends up the same.)

    A failed batch does not fail every document that had a chunk in it: those
    documents leave the shared batches and are embedded on their own, so only a
    document that fails by itself is reported failed. Every target gets exactly
    one result; an unexpected error ends the stream with that error.
    """

    def __init__(
        self,
        pipeline: IngestionPipeline,
        targets: Sequence[Expanded],
        access: DocumentAccess,
    ) -> None:
        self._pipeline = pipeline
        self._access = access
        limits = pipeline._limits
        self._batch = limits.embed_batch
        self._pool_limit = max(limits.embed_pool, limits.embed_batch)
        self._in_flight_limit = limits.embed_in_flight
        self._workers = max(1, min(limits.concurrency, len(targets)))
        self._count = len(targets)
        self._targets = iter(targets)
        self._results: asyncio.Queue[ingestion_pb2.IngestResult | Exception] = asyncio.Queue()
        self._pool: list[_PoolChunk] = []
        self._arrivals = 0
        self._preparing = 0
        self._in_flight = 0
        self._indexing = 0
        self._look_up = True
        self._changed = asyncio.Event()
        self._index_slots = asyncio.Semaphore(_INDEX_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> AsyncIterator[ingestion_pb2.IngestResult]:
        """Each document's result as it finishes."""
        if self._count > 1:
            with contextlib.suppress(PlatformError):  # then each document is looked up
                self._look_up = not await self._pipeline._tenant_is_empty(self._access.tenant)
        self._preparing = self._workers
        for _ in range(self._workers):
            self._spawn(self._prepare_documents())
        self._spawn(self._feed())
        try:
            for _ in range(self._count):
                item = await self._results.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            for task in list(self._tasks):
                task.cancel()

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as error:  # a bug: end the stream with it rather than hang
            log.exception("bulk ingestion failed")
            self._results.put_nowait(error)

    async def _in_slot(self, work: Coroutine[Any, Any, None]) -> None:
        """`work` holding one of the tenant's slots (services/ingestion/fairness.py)."""
        try:
            async with self._pipeline.tenant_slots.hold(self._access.tenant):
                await work
        finally:
            work.close()  # cancelled before it started: it must not warn "never awaited"

    def _notify(self) -> None:
        self._changed.set()

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds; every state change re-checks it."""
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    # ------------------------------------------------------------------ stages

    async def _prepare_documents(self) -> None:
        pipeline = self._pipeline
        try:
            for target in self._targets:  # shared by the workers
                await self._until(lambda: len(self._pool) < self._pool_limit)
                if not isinstance(target, SourceObject):
                    source_uri, error = target
                    self._results.put_nowait(failed_result(source_uri, error))
                    continue
                source_uri = target.uri
                try:
                    if skipped := await self._unchanged_version(target):
                        self._results.put_nowait(skipped)
                        continue
                    data, read = await asyncio.to_thread(pipeline._read, target)
                    incoming = IncomingDocument(
                        read.uri,
                        read.name,
                        data,
                        self._access,
                        document_date_unix=read.modified_unix,
                        source_version=read.version,
                    )
                    async with pipeline.tenant_slots.hold(self._access.tenant):
                        prepared = await pipeline._prepare(incoming, self._look_up)
                except PlatformError as error:
                    self._results.put_nowait(failed_result(source_uri, error))
                    continue
                if isinstance(prepared, ingestion_pb2.IngestResult):
                    self._results.put_nowait(prepared)
                    continue
                for index, draft in enumerate(prepared.drafts):
                    self._pool.append(
                        _PoolChunk(prepared, index, draft.token_count, self._arrivals)
                    )
                    self._arrivals += 1
                self._notify()
        finally:
            self._preparing -= 1
            self._notify()

    async def _unchanged_version(self, target: SourceObject) -> ingestion_pb2.IngestResult | None:
        """UNCHANGED, without reading the object, when its generation is the
        indexed one with the same access labels and tags; else None."""
        if not target.version or not self._look_up:
            return None
        existing = await self._pipeline._existing(self._access.tenant, document_id_for(target.uri))
        if (
            existing is None
            or existing.source_version != target.version
            or not self._access.may_replace(existing)
            or (tuple(existing.access_labels), tuple(existing.tags))
            != (self._access.access_labels, self._access.tags)
        ):
            return None
        return ingestion_pb2.IngestResult(
            status=Status.STATUS_UNCHANGED, document=existing, source_uri=target.uri
        )

    def _ready_to_send(self) -> bool:
        if self._in_flight >= self._in_flight_limit or self._indexing >= _INDEX_BACKLOG:
            return False
        if len(self._pool) >= self._batch or self._preparing == 0:
            return True
        # Never leave the model idle waiting for a full batch (start, slow parsing).
        return self._in_flight == 0 and bool(self._pool)

    async def _feed(self) -> None:
        while True:
            await self._until(self._ready_to_send)
            if not self._pool:
                return  # nothing left to prepare and nothing waiting
            self._in_flight += 1
            self._spawn(self._in_slot(self._embed_batch(self._take())))

    def _take(self) -> list[_PoolChunk]:
        """Remove the next batch from the pool: the `embed_batch` chunks of most
        similar length that include the oldest one (see the class docstring)."""
        pool, size = self._pool, self._batch
        if len(pool) <= size:
            self._pool = []
            return pool
        by_length = sorted(pool, key=lambda c: (c.tokens, c.order))
        oldest = pool[0]  # the pool is kept in arrival order
        position = by_length.index(oldest)
        first = max(0, position - size + 1)
        last = min(position, len(by_length) - size)
        start = min(
            range(first, last + 1),
            key=lambda s: by_length[s + size - 1].tokens - by_length[s].tokens,
        )
        taken = by_length[start : start + size]
        chosen = {id(c) for c in taken}
        self._pool = [c for c in pool if id(c) not in chosen]
        return taken

    async def _embed_batch(self, chunks: list[_PoolChunk]) -> None:
        texts = [c.document.drafts[c.index].text for c in chunks]
        titles = [c.document.title for c in chunks]
        # The embedder its first chunk was cut for: across a switch of models, a
        # batch may mix documents cut for two; each write names the model used.
        embedder = chunks[0].document.embedder
        try:
            with downstream("embedding", embedder.address):
                response = await embedder.stub.EmbedDocuments(
                    embedding_pb2.EmbedDocumentsRequest(texts=texts, titles=titles)
                )
        except PlatformError as error:
            log.warning(
                "embedding batch failed; its documents are embedded one by one",
                extra={"error": str(error), "chunks": len(chunks)},
            )
            for document in {id(c.document): c.document for c in chunks}.values():
                self._abandon(document)
            return
        finally:
            self._in_flight -= 1
            self._notify()
        for chunk, vector in zip(chunks, response.vectors, strict=True):
            document = chunk.document
            if document.abandoned:
                continue
            document.vectors[chunk.index] = vector
            document.embedding_model = response.model
            document.missing -= 1
            if document.missing == 0:
                vectors = [v for v in document.vectors if v is not None]
                self._indexing += 1
                self._spawn(self._index(document, vectors))

    def _abandon(self, document: _Prepared) -> None:
        if document.abandoned:
            return
        document.abandoned = True
        self._pool = [c for c in self._pool if c.document is not document]
        self._spawn(self._in_slot(self._embed_alone(document)))

    async def _embed_alone(self, document: _Prepared) -> None:
        try:
            vectors = await self._pipeline._embed(document)
        except PlatformError as error:
            self._results.put_nowait(failed_result(document.source_uri, error))
            return
        self._indexing += 1
        await self._index(document, vectors)

    async def _index(self, document: _Prepared, vectors: Sequence[embedding_pb2.Vector]) -> None:
        """ReplaceDocument, then the document's result; the caller counted it in `_indexing`."""
        try:
            async with self._index_slots:
                result = await self._pipeline._index(document, vectors)
        except PlatformError as error:
            result = failed_result(document.source_uri, error)
        finally:
            self._indexing -= 1
            self._notify()
        self._results.put_nowait(result)
