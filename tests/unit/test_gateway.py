"""The gateway's HTTP ↔ gRPC mapping, against real in-process grpc.aio servers.

The servers run small deterministic *fakes* of QueryService, IngestionService and
RetrievalService written here: they exist only to check what the gateway sends
and how it renders what comes back (JSON shapes, status codes, SSE, multipart
streaming, auth and the tenant each key acts for), not the services' behaviour,
which their own tests cover (tenant isolation end to end: tests/integration).
"""

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ValidationError

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.common.tenancy import Caller, may_see
from services.gateway.app import create_app
from services.gateway.errors import GRPC_TO_HTTP, http_status_for
from services.gateway.routes.documents import UPLOAD_CHUNK_BYTES
from services.gateway.schemas import IDENTITY_FIELDS, PROTO_MODELS, from_proto
from services.gateway.settings import GatewaySettings, parse_api_keys
from services.runtime.clients import PlatformClients

pytestmark = pytest.mark.asyncio(loop_scope="session")

ERROR_PREFIX = "error:"


async def _abort_if_asked(text: str, context: Any) -> None:
    """Fakes fail on request: a text `error:CODE` aborts with that gRPC status."""
    if text.startswith(ERROR_PREFIX):
        code = grpc.StatusCode[text.removeprefix(ERROR_PREFIX)]
        await context.abort(code, f"fake {code.name} for {text!r}")


def _fake_answer(question: str) -> query_pb2.AskResponse:
    return query_pb2.AskResponse(
        answer=f"Answer to {question} [1].",
        citations=[
            query_pb2.Citation(
                number=1,
                document_id="doc-1",
                title="Doc one",
                source_uri="file:///tmp/doc1.md",
                chunk_id="c1",
                score=0.5,
                page=3,
                section="Intro",
            )
        ],
        backend="extractive",
        model="fake",
        usage=common_pb2.TokenUsage(input_tokens=10, output_tokens=5),
        timings=[common_pb2.StageTiming(stage="retrieve", seconds=0.25)],
        request_id="req-1",
    )


class FakeQuery(query_pb2_grpc.QueryServiceServicer):
    """Fake QueryService: answers `Answer to <question> [1].`; `error:CODE` fails;
    the question `cached` comes back as a semantic cache hit."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def Ask(self, request: query_pb2.AskRequest, context: Any) -> query_pb2.AskResponse:
        self.requests.append(request)
        await _abort_if_asked(request.question, context)
        reply = _fake_answer(request.question)
        if request.question == "cached":
            reply.cache.CopyFrom(
                query_pb2.CacheHit(
                    kind=query_pb2.CacheHit.KIND_SEMANTIC,
                    age_seconds=12.5,
                    similarity=0.96875,
                    cached_question="cached?",
                )
            )
        if request.debug:
            reply.debug.prompt = "fake prompt"
            reply.debug.retrieved.add(chunk=common_pb2.Chunk(chunk_id="c1", text="t"), score=0.5)
        return reply

    async def AskStream(
        self, request: query_pb2.AskStreamRequest, context: Any
    ) -> AsyncIterator[query_pb2.AskStreamResponse]:
        self.requests.append(request)
        await _abort_if_asked(request.question, context)
        for piece in ("Answer ", "to ", request.question, " [1]."):
            yield query_pb2.AskStreamResponse(delta=piece)
        if request.question == "fail midway":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "generation service went away")
        yield query_pb2.AskStreamResponse(final=_fake_answer(request.question))


@dataclass
class Upload:
    header: ingestion_pb2.DocumentHeader
    chunk_sizes: list[int] = field(default_factory=list)
    sha256: str = ""


class FakeIngestion(ingestion_pb2_grpc.IngestionServiceServicer):
    """Fake IngestionService: records uploads; a second upload of an id is UPDATED,
    file `failed.txt` returns a FAILED result, a filename `error:CODE` aborts.
    Deletes are recorded; only (tenant, id) pairs FakeRetrieval holds exist."""

    def __init__(self) -> None:
        self.uploads: list[Upload] = []
        self.deleted: list[tuple[str, str]] = []

    async def UploadDocument(
        self, request_iterator: Any, context: Any
    ) -> ingestion_pb2.UploadDocumentResponse:
        first = await anext(request_iterator)
        upload = Upload(header=first.header)
        digest = hashlib.sha256()
        async for message in request_iterator:
            upload.chunk_sizes.append(len(message.data))
            digest.update(message.data)
        upload.sha256 = digest.hexdigest()
        await _abort_if_asked(upload.header.filename, context)
        document_id = upload.header.document_id or upload.header.filename
        seen = any((u.header.document_id or u.header.filename) == document_id for u in self.uploads)
        self.uploads.append(upload)
        if upload.header.filename == "failed.txt":
            result = ingestion_pb2.IngestResult(
                status=ingestion_pb2.IngestResult.STATUS_FAILED,
                error_code="INVALID_ARGUMENT",
                message="empty file",
                source_uri="upload://failed.txt",
            )
            return ingestion_pb2.UploadDocumentResponse(result=result)
        status = (
            ingestion_pb2.IngestResult.STATUS_UPDATED
            if seen
            else ingestion_pb2.IngestResult.STATUS_CREATED
        )
        info = common_pb2.DocumentInfo(
            document_id=document_id,
            title=upload.header.title or upload.header.filename,
            source_uri=f"upload://{upload.header.filename}",
            media_type=upload.header.media_type or "text/plain",
            content_sha256=upload.sha256,
            chunk_count=2,
            size_bytes=sum(upload.chunk_sizes),
            indexed_at_unix=1_700_000_000,
            tenant=upload.header.tenant,
            access_labels=upload.header.access_labels,
            tags=upload.header.tags,
            document_date_unix=upload.header.document_date_unix,
        )
        result = ingestion_pb2.IngestResult(
            status=status, document=info, source_uri=info.source_uri
        )
        return ingestion_pb2.UploadDocumentResponse(result=result)

    async def DeleteDocument(
        self, request: ingestion_pb2.DeleteDocumentRequest, context: Any
    ) -> ingestion_pb2.DeleteDocumentResponse:
        labels = DOCUMENTS.get(request.tenant, {}).get(request.document_id)
        held = set(request.caller.access_labels)
        hidden = labels and request.HasField("caller") and not set(labels) & held
        if labels is None or hidden:  # the contract: what the caller cannot see is NOT_FOUND
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no document {request.document_id!r}")
        self.deleted.append((request.tenant, request.document_id))
        return ingestion_pb2.DeleteDocumentResponse(chunks_deleted=4)


DOCUMENTS: dict[str, dict[str, list[str]]] = {
    "default": {"doc-1": [], "doc-2": [], "doc-3": []},
    "acme": {"acme-public": [], "acme-salaries": ["hr"]},
}
"""What FakeRetrieval holds: tenant -> document id -> access labels."""


def _fake_info(tenant: str, document_id: str) -> common_pb2.DocumentInfo:
    return common_pb2.DocumentInfo(
        document_id=document_id,
        title=f"Title {document_id}",
        source_uri=f"file:///docs/{document_id}.md",
        media_type="text/markdown",
        content_sha256="ab" * 32,
        chunk_count=3,
        size_bytes=2**40,  # a uint64 beyond 32 bits: JSON must still carry a number
        indexed_at_unix=1_700_000_000,
        tenant=tenant,
        access_labels=DOCUMENTS[tenant][document_id],
        tags=["handbook"],
        document_date_unix=2**33,  # an int64: JSON carries it as a string, the model a number
    )


class FakeRetrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    """Fake RetrievalService holding DOCUMENTS, paged by page_size; `default` has
    doc-1..doc-3, `acme` a public and an HR document.
    Every request is recorded, to check the tenant the gateway sent."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def ListDocuments(
        self, request: retrieval_pb2.ListDocumentsRequest, context: Any
    ) -> retrieval_pb2.ListDocumentsResponse:
        self.requests.append(request)
        await _abort_if_asked(request.page_token, context)
        tenant = request.caller.tenant or request.tenant
        ids = [
            document_id
            for document_id, labels in DOCUMENTS.get(tenant, {}).items()
            if not request.HasField("caller") or may_see(request.caller.access_labels, labels)
        ]
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = ids[start : start + size]
        token = str(start + size) if start + size < len(ids) else ""
        return retrieval_pb2.ListDocumentsResponse(
            documents=[_fake_info(tenant, i) for i in page], next_page_token=token
        )

    async def LookupDocuments(
        self, request: retrieval_pb2.LookupDocumentsRequest, context: Any
    ) -> retrieval_pb2.LookupDocumentsResponse:
        """The tenant's documents the caller's labels may see, as the store does."""
        self.requests.append(request)
        tenant = request.caller.tenant
        visible = [
            document_id
            for document_id in request.document_ids
            if document_id in DOCUMENTS.get(tenant, {})
            and may_see(request.caller.access_labels, DOCUMENTS[tenant][document_id])
        ]
        return retrieval_pb2.LookupDocumentsResponse(
            found=[_fake_info(tenant, document_id) for document_id in visible],
            missing=[d for d in request.document_ids if d not in visible],
        )


@dataclass
class Fakes:
    query: FakeQuery
    ingestion: FakeIngestion
    retrieval: FakeRetrieval
    address: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fakes() -> AsyncIterator[Fakes]:
    """One in-process grpc.aio server hosting the three fakes and a health service."""
    server = aio.server()
    found = Fakes(FakeQuery(), FakeIngestion(), FakeRetrieval(), "")
    query_pb2_grpc.add_QueryServiceServicer_to_server(found.query, server)
    ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(found.ingestion, server)
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(found.retrieval, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    found.address = f"127.0.0.1:{port}"
    yield found
    await server.stop(None)


def _settings(fakes: Fakes, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "query_addr": fakes.address,
        "ingestion_addr": fakes.address,
        "retrieval_addr": fakes.address,
        "rpc_timeout_seconds": 5.0,
        "gateway_api_keys": "",
    }
    return GatewaySettings(**(values | overrides))


@pytest_asyncio.fixture(loop_scope="session")
async def make_client(
    fakes: Fakes,
) -> AsyncIterator[Any]:
    """Factory of HTTP clients bound to a gateway app built with given settings."""
    opened: list[tuple[httpx.AsyncClient, PlatformClients]] = []

    async def make(raise_app_exceptions: bool = True, **overrides: Any) -> httpx.AsyncClient:
        settings = _settings(fakes, **overrides)
        clients = PlatformClients(settings)
        app = create_app(settings, clients)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        http = httpx.AsyncClient(transport=transport, base_url="http://gateway")
        opened.append((http, clients))
        return http

    yield make
    for http, clients in opened:
        await http.aclose()
        await clients.close()


@pytest_asyncio.fixture(loop_scope="session")
async def client(make_client: Any) -> httpx.AsyncClient:
    result: httpx.AsyncClient = await make_client()
    return result


# --------------------------------------------------------------------------- ask


async def test_ask_returns_answer_json_with_proto_field_names(
    client: httpx.AsyncClient, fakes: Fakes
) -> None:
    body = {
        "question": "what?",
        "top_k": 5,
        "filter": {"document_ids": ["doc-1"], "media_types": ["text/markdown"]},
    }
    response = await client.post("/v1/ask", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["answer"] == "Answer to what? [1]."
    assert data["citations"][0] == {
        "number": 1,
        "document_id": "doc-1",
        "title": "Doc one",
        "source_uri": "file:///tmp/doc1.md",
        "chunk_id": "c1",
        "score": 0.5,
        "page": 3,
        "section": "Intro",
    }
    assert data["declined"] is False
    assert data["usage"] == {"input_tokens": 10, "output_tokens": 5}
    assert data["timings"] == [{"stage": "retrieve", "seconds": 0.25}]
    assert data["debug"] is None
    assert data["request_id"] == "req-1"
    assert data["cache"] is None
    sent = fakes.query.requests[-1]
    assert (sent.question, sent.top_k, sent.debug, sent.bypass_cache) == ("what?", 5, False, False)
    assert list(sent.filter.document_ids) == ["doc-1"]
    assert list(sent.filter.media_types) == ["text/markdown"]
    assert list(sent.filter.source_uris) == []
    assert not sent.filter.HasField("date_from_unix"), "an unset bound stays unset, not 0"
    assert not sent.filter.HasField("date_to_unix")
    assert sent.caller == common_pb2.Caller(tenant="default"), "no keys: the default tenant"


async def test_ask_forwards_tags_dates_and_bypass_cache(
    client: httpx.AsyncClient, fakes: Fakes
) -> None:
    body = {
        "question": "what?",
        "bypass_cache": True,
        "filter": {"tags": ["policy", "hr"], "date_from_unix": 0, "date_to_unix": 1_700_000_000},
    }
    response = await client.post("/v1/ask", json=body)
    assert response.status_code == 200, response.text
    sent = fakes.query.requests[-1]
    assert sent.bypass_cache is True
    assert list(sent.filter.tags) == ["policy", "hr"]
    assert sent.filter.HasField("date_from_unix") and sent.filter.date_from_unix == 0
    assert sent.filter.date_to_unix == 1_700_000_000


async def test_ask_renders_a_cache_hit(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ask", json={"question": "cached"})
    assert response.status_code == 200
    assert response.json()["cache"] == {
        "kind": "KIND_SEMANTIC",
        "age_seconds": 12.5,
        "similarity": 0.96875,
        "cached_question": "cached?",
    }


async def test_ask_debug_includes_debug_view(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ask", json={"question": "q", "debug": True})
    assert response.status_code == 200
    debug = response.json()["debug"]
    assert debug["prompt"] == "fake prompt"
    assert debug["retrieved"][0]["chunk"]["chunk_id"] == "c1"
    assert debug["retrieved"][0]["score"] == 0.5


def _parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.parametrize("path", ["/v1/ask/stream", "/v1/ask?stream=true"])
async def test_ask_stream_serves_sse_deltas_then_answer(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.post(path, json={"question": "why"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _parse_sse(response.text)
    assert [kind for kind, _ in events] == ["delta"] * 4 + ["answer"]
    assert "".join(data["text"] for kind, data in events if kind == "delta") == "Answer to why [1]."
    assert events[-1][1]["answer"] == "Answer to why [1]."
    assert events[-1][1]["citations"][0]["number"] == 1


async def test_ask_stream_error_before_output_gets_http_status(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ask/stream", json={"question": "error:INVALID_ARGUMENT"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"


async def test_ask_stream_error_midway_is_an_error_event(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ask/stream", json={"question": "fail midway"})
    assert response.status_code == 200
    events = _parse_sse(response.text)
    assert events[0][0] == "delta"
    assert events[-1] == (
        "error",
        {"error": {"code": "UNAVAILABLE", "message": "generation service went away"}},
    )


# --------------------------------------------------------------------------- errors


ALL_ERROR_CODES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


@pytest.mark.parametrize("code", ALL_ERROR_CODES, ids=lambda c: c.name)
async def test_every_grpc_code_maps_to_its_http_status(
    client: httpx.AsyncClient, code: grpc.StatusCode
) -> None:
    response = await client.post("/v1/ask", json={"question": f"{ERROR_PREFIX}{code.name}"})
    assert response.status_code == GRPC_TO_HTTP[code.name]
    assert response.json() == {
        "error": {"code": code.name, "message": f"fake {code.name} for 'error:{code.name}'"}
    }


async def test_status_mapping_decisions() -> None:
    assert http_status_for("INVALID_ARGUMENT") == 400
    assert http_status_for("NOT_FOUND") == 404
    assert http_status_for("RESOURCE_EXHAUSTED") == 429
    assert http_status_for("RESOURCE_EXHAUSTED", upload=True) == 413
    assert http_status_for("FAILED_PRECONDITION") == 409
    assert http_status_for("UNAVAILABLE") == 503
    assert http_status_for("DEADLINE_EXCEEDED") == 504
    assert http_status_for("UNIMPLEMENTED") == 501
    assert http_status_for("INTERNAL") == 500
    assert http_status_for("SOMETHING_NEW") == 500


async def test_unreachable_service_is_503(make_client: Any) -> None:
    client = await make_client(query_addr="127.0.0.1:1")
    response = await client.post("/v1/ask", json={"question": "q"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UNAVAILABLE"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.question"),
        ({"question": "q", "top_k": -1}, "body.top_k"),
        ({"question": "q", "top_k": "many"}, "body.top_k"),
        ({"question": "q", "filter": {"document_ids": "doc-1"}}, "body.filter.document_ids"),
        ({"question": "q", "topk": 3}, "body.topk"),
        ({"question": "q", "filter": {"tenant": "acme"}}, "body.filter.tenant"),
        ({"question": "q", "filter": {"date_from": 5}}, "body.filter.date_from"),
        ({"question": "q", "filter": {"date_to_unix": "soon"}}, "body.filter.date_to_unix"),
        ({"question": "q", "caller": {"tenant": "acme"}}, "body.caller"),
    ],
)
async def test_validation_errors_use_the_error_shape_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/ask", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert set(response.json()) == {"error"}
    assert error["code"] == "INVALID_ARGUMENT"
    assert field in error["message"]


async def test_malformed_json_and_bad_query_params_are_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ask", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"
    response = await client.get("/v1/documents", params={"page_size": "-1"})
    assert response.status_code == 422
    assert "query.page_size" in response.json()["error"]["message"]


async def test_a_filter_list_over_the_limit_is_422_naming_it(client: httpx.AsyncClient) -> None:
    too_many = [f"doc-{i}" for i in range(1025)]
    response = await client.post(
        "/v1/ask", json={"question": "q", "filter": {"document_ids": too_many}}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert "filter.document_ids" in error["message"] and "1024" in error["message"]


async def test_http_layer_errors_use_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    response = await client.put("/v1/ask", json={})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "UNIMPLEMENTED"


async def test_unexpected_exception_is_500_without_traceback(make_client: Any) -> None:
    client = await make_client(raise_app_exceptions=False)
    app = client._transport.app

    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/v1/boom", boom)
    response = await client.get("/v1/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "INTERNAL", "message": "internal error"}}
    assert "secret" not in response.text and "Traceback" not in response.text


# --------------------------------------------------------------------------- documents


async def test_upload_streams_header_and_bytes_intact(
    client: httpx.AsyncClient, fakes: Fakes
) -> None:
    payload = bytes(range(256)) * (4 * 1024 + 3)  # 1 MiB + 768 bytes: five data messages
    response = await client.post(
        "/v1/documents",
        files={"file": ("manual.pdf", payload, "application/octet-stream")},
        data={"document_id": "manual", "title": "The Manual", "media_type": "application/pdf"},
    )
    assert response.status_code == 201
    assert response.headers["location"] == "/v1/documents/manual"
    upload = fakes.ingestion.uploads[-1]
    assert upload.header.filename == "manual.pdf"
    assert upload.header.document_id == "manual"
    assert upload.header.title == "The Manual"
    assert upload.header.media_type == "application/pdf"
    assert sum(upload.chunk_sizes) == len(payload)
    assert max(upload.chunk_sizes) == UPLOAD_CHUNK_BYTES
    assert len(upload.chunk_sizes) == -(-len(payload) // UPLOAD_CHUNK_BYTES)
    assert upload.sha256 == hashlib.sha256(payload).hexdigest()
    result = response.json()
    assert result["status"] == "STATUS_CREATED"
    assert result["document"]["size_bytes"] == len(payload)
    assert result["document"]["indexed_at_unix"] == 1_700_000_000
    assert result["document"]["tenant"] == upload.header.tenant == "default"

    again = await client.post(
        "/v1/documents",
        files={"file": ("manual.pdf", payload)},
        data={"document_id": "manual"},
    )
    assert again.status_code == 200
    assert again.json()["status"] == "STATUS_UPDATED"


async def test_upload_forwards_labels_tags_and_date(
    client: httpx.AsyncClient, fakes: Fakes
) -> None:
    response = await client.post(
        "/v1/documents",
        files={"file": ("pay.txt", b"salaries")},
        data={
            "access_labels": ["hr", "finance"],
            "tags": ["payroll"],
            "document_date_unix": "1700000000",
        },
    )
    assert response.status_code == 201, response.text
    header = fakes.ingestion.uploads[-1].header
    assert (list(header.access_labels), list(header.tags)) == (["hr", "finance"], ["payroll"])
    assert header.document_date_unix == 1_700_000_000
    document = response.json()["document"]
    assert document["access_labels"] == ["hr", "finance"]
    assert document["tags"] == ["payroll"]
    assert document["document_date_unix"] == 1_700_000_000
    response = await client.post(
        "/v1/documents",
        files={"file": ("x.txt", b"x")},
        data={"document_date_unix": "-5"},
    )
    assert response.status_code == 422
    assert "body.document_date_unix" in response.json()["error"]["message"]


async def test_upload_does_not_forward_the_parts_guessed_content_type(
    client: httpx.AsyncClient, fakes: Fakes
) -> None:
    response = await client.post(
        "/v1/documents", files={"file": ("notes.txt", b"hello", "application/octet-stream")}
    )
    assert response.status_code == 201
    assert fakes.ingestion.uploads[-1].header.media_type == ""


async def test_upload_too_large_is_413_and_failed_result_maps_its_code(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/documents", files={"file": ("error:RESOURCE_EXHAUSTED", b"x" * 10)}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    response = await client.post("/v1/documents", files={"file": ("failed.txt", b"")})
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "INVALID_ARGUMENT", "message": "empty file"}}


async def test_upload_without_file_part_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/documents", data={"title": "t"})
    assert response.status_code == 422
    assert "body.file" in response.json()["error"]["message"]


async def test_list_documents_pages(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/documents", params={"page_size": 2})
    assert response.status_code == 200
    first = response.json()
    assert [d["document_id"] for d in first["documents"]] == ["doc-1", "doc-2"]
    assert first["documents"][0]["size_bytes"] == 2**40
    assert first["documents"][0]["document_date_unix"] == 2**33
    assert first["documents"][0]["tags"] == ["handbook"]
    assert first["next_page_token"] == "2"
    response = await client.get("/v1/documents", params={"page_size": 2, "page_token": "2"})
    second = response.json()
    assert [d["document_id"] for d in second["documents"]] == ["doc-3"]
    assert second["next_page_token"] == ""


async def test_get_document_and_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/documents/doc-2")
    assert response.status_code == 200
    assert response.json()["title"] == "Title doc-2"
    response = await client.get("/v1/documents/nope")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "NOT_FOUND", "message": "document 'nope' not found in tenant 'default'"}
    }


async def test_delete_document_and_not_found(client: httpx.AsyncClient, fakes: Fakes) -> None:
    response = await client.delete("/v1/documents/doc-1")
    assert response.status_code == 200
    assert response.json() == {"document_id": "doc-1", "chunks_deleted": 4}
    assert fakes.ingestion.deleted[-1] == ("default", "doc-1")
    response = await client.delete("/v1/documents/unknown")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


# --------------------------------------------------------------------------- health


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "services": {"query": "SERVING", "ingestion": "SERVING", "retrieval": "SERVING"},
        "not_serving": [],
    }


async def test_readyz_503_names_services_not_serving(make_client: Any) -> None:
    client = await make_client(retrieval_addr="127.0.0.1:1")
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["not_serving"] == ["retrieval"]
    assert body["services"]["retrieval"] == "UNREACHABLE"


# --------------------------------------------------------------------------- auth


KEYS = {
    "key-one": {"tenant": "acme"},
    "key-two": {"tenant": "globex", "access_labels": ["hr"]},
    "key-hr": {"tenant": "acme", "access_labels": ["hr", "it"]},
}
"""Two tenants; acme has a key without and a key with the `hr` label."""


def _key(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


@pytest_asyncio.fixture(loop_scope="session")
async def secured(make_client: Any) -> httpx.AsyncClient:
    result: httpx.AsyncClient = await make_client(gateway_api_keys=json.dumps(KEYS))
    return result


async def test_auth_rejects_missing_and_wrong_keys(secured: httpx.AsyncClient) -> None:
    response = await secured.post("/v1/ask", json={"question": "q"})
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "UNAUTHENTICATED", "message": "missing API key"}}
    assert response.headers["www-authenticate"] == "Bearer"
    response = await secured.get("/v1/documents", headers={"Authorization": "Bearer key-three"})
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid API key"
    response = await secured.get("/v1/documents", headers={"Authorization": "Basic key-one"})
    assert response.status_code == 401


async def test_failed_requests_are_logged_and_others_only_counted(
    secured: httpx.AsyncClient, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    """RAG_GATEWAY_ACCESS_LOG=errors (the default): a line per failure, with its
    route and status, never the key; nothing for a success."""
    with caplog.at_level(logging.INFO, logger="ragplatform.access"):
        assert (await secured.post("/v1/ask", json={"question": "q"})).status_code == 401
        ok = await secured.get("/v1/documents", headers=_key("key-one"))
        assert ok.status_code == 200
        missing = await secured.get("/v1/documents/nope", headers=_key("key-one"))
        assert missing.status_code == 404
    lines = [r for r in caplog.records if r.name == "ragplatform.access"]
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (logging.INFO, "POST /v1/ask 401"),
        (logging.INFO, "GET /v1/documents/nope 404"),
    ]
    assert [getattr(r, "route", None) for r in lines] == ["/v1/ask", "/v1/documents/{document_id}"]
    assert "key-one" not in caplog.text


async def test_server_errors_are_logged_as_warnings(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(raise_app_exceptions=False)

    async def boom() -> None:
        raise RuntimeError("secret internals")

    client._transport.app.add_api_route("/v1/boom", boom)
    with caplog.at_level(logging.INFO, logger="ragplatform.access"):
        assert (await client.get("/v1/boom")).status_code == 500
    [line] = [r for r in caplog.records if r.name == "ragplatform.access"]
    assert (line.levelno, line.getMessage()) == (logging.WARNING, "GET /v1/boom 500")


async def test_access_log_all_or_off_logs_no_failures_here(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With all, uvicorn's access log (started by __main__) logs every request."""
    for setting in ("all", "off"):
        client = await make_client(gateway_api_keys=json.dumps(KEYS), gateway_access_log=setting)
        with caplog.at_level(logging.INFO, logger="ragplatform.access"):
            assert (await client.post("/v1/ask", json={"question": "q"})).status_code == 401
    assert not [r for r in caplog.records if r.name == "ragplatform.access"]


async def test_auth_accepts_bearer_and_x_api_key(secured: httpx.AsyncClient) -> None:
    response = await secured.post("/v1/ask", json={"question": "q"}, headers=_key("key-one"))
    assert response.status_code == 200
    response = await secured.get("/v1/documents", headers={"X-API-Key": "key-two"})
    assert response.status_code == 200
    both = {**_key("key-one"), "X-API-Key": "key-one"}
    assert (await secured.get("/v1/documents", headers=both)).status_code == 200


async def test_auth_refuses_two_different_keys(secured: httpx.AsyncClient) -> None:
    response = await secured.get(
        "/v1/documents", headers={**_key("key-one"), "X-API-Key": "key-two"}
    )
    assert response.status_code == 401
    assert "different keys" in response.json()["error"]["message"]


async def test_every_route_acts_for_the_keys_tenant(
    secured: httpx.AsyncClient, fakes: Fakes
) -> None:
    acme, globex = _key("key-one"), _key("key-two")
    assert (await secured.post("/v1/ask", json={"question": "q"}, headers=acme)).status_code == 200
    assert fakes.query.requests[-1].caller == common_pb2.Caller(tenant="acme")
    streamed = await secured.post("/v1/ask/stream", json={"question": "q"}, headers=globex)
    assert streamed.status_code == 200
    assert fakes.query.requests[-1].caller == common_pb2.Caller(
        tenant="globex", access_labels=["hr"]
    )
    await secured.post("/v1/ask?stream=true", json={"question": "q"}, headers=acme)
    assert fakes.query.requests[-1].caller.tenant == "acme"

    uploaded = await secured.post("/v1/documents", files={"file": ("a.txt", b"a")}, headers=globex)
    assert uploaded.status_code == 201
    assert fakes.ingestion.uploads[-1].header.tenant == "globex"
    assert uploaded.json()["document"]["tenant"] == "globex"

    listed = await secured.get("/v1/documents", headers=acme)
    assert {d["document_id"] for d in listed.json()["documents"]} == {"acme-public"}
    assert fakes.retrieval.requests[-1].caller.tenant == "acme"
    assert (await secured.get("/v1/documents/acme-public", headers=acme)).status_code == 200
    assert fakes.retrieval.requests[-1].caller.tenant == "acme"
    other = await secured.get("/v1/documents/doc-1", headers=acme)  # the default tenant's
    assert other.status_code == 404
    assert fakes.retrieval.requests[-1].caller.tenant == "acme"
    assert (await secured.delete("/v1/documents/doc-1", headers=acme)).status_code == 404
    assert (await secured.delete("/v1/documents/acme-public", headers=acme)).status_code == 200
    assert fakes.ingestion.deleted[-1] == ("acme", "acme-public")


async def test_no_request_field_can_choose_the_tenant(
    secured: httpx.AsyncClient, fakes: Fakes
) -> None:
    response = await secured.post(
        "/v1/ask",
        json={"question": "q", "caller": {"tenant": "globex"}},
        headers={**_key("key-one"), "X-Tenant": "globex"},
    )
    assert response.status_code == 422
    assert "body.caller" in response.json()["error"]["message"]
    response = await secured.post(
        "/v1/documents",
        files={"file": ("spoof.txt", b"a")},
        data={"tenant": "globex"},  # not a form field of the route: ignored
        headers={**_key("key-one"), "X-Tenant": "globex"},
    )
    assert response.status_code == 201
    assert fakes.ingestion.uploads[-1].header.tenant == "acme"
    listed = await secured.get(
        "/v1/documents", params={"tenant": "globex"}, headers={**_key("key-one")}
    )
    assert fakes.retrieval.requests[-1].caller.tenant == "acme"
    assert listed.status_code == 200


async def test_access_labels_hide_documents(secured: httpx.AsyncClient, fakes: Fakes) -> None:
    plain, hr = _key("key-one"), _key("key-hr")
    listed = await secured.get("/v1/documents", headers=plain)
    assert "acme-salaries" not in {d["document_id"] for d in listed.json()["documents"]}
    hidden = await secured.get("/v1/documents/acme-salaries", headers=plain)
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "NOT_FOUND"
    before = list(fakes.ingestion.deleted)
    assert (await secured.delete("/v1/documents/acme-salaries", headers=plain)).status_code == 404
    assert fakes.ingestion.deleted == before, "a hidden document is never deleted"
    assert (await secured.delete("/v1/documents/acme-salaries", headers=hr)).status_code == 200
    assert fakes.ingestion.deleted[-1] == ("acme", "acme-salaries")

    listed = await secured.get("/v1/documents", headers=hr)
    assert "acme-salaries" in {d["document_id"] for d in listed.json()["documents"]}
    assert "hr" in fakes.retrieval.requests[-1].caller.access_labels
    shown = await secured.get("/v1/documents/acme-salaries", headers=hr)
    assert shown.status_code == 200
    assert shown.json()["access_labels"] == ["hr"]


async def test_default_tenant_is_configurable(make_client: Any, fakes: Fakes) -> None:
    solo = await make_client(gateway_default_tenant="solo")
    assert (await solo.post("/v1/ask", json={"question": "q"})).status_code == 200
    assert fakes.query.requests[-1].caller == common_pb2.Caller(tenant="solo")
    with pytest.raises(ValidationError, match="tenant 'two words' is invalid"):
        _settings(fakes, gateway_default_tenant="two words")


async def test_api_keys_format() -> None:
    assert parse_api_keys("") == parse_api_keys("  ") == {}
    assert parse_api_keys(json.dumps(KEYS)) == {
        "key-one": Caller("acme"),
        "key-two": Caller("globex", ("hr",)),
        "key-hr": Caller("acme", ("hr", "it")),
    }


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("s3cret-a,s3cret-b", "is not JSON"),
        ('["s3cret-a"]', "must be a non-empty JSON object"),
        ("{}", "must be a non-empty JSON object"),
        ('{"s3cret-a": "acme"}', "entry 1: Input should be a valid dictionary"),
        ('{"s3cret-a": {"tenant": "acme"}, "s3cret-b": {}}', "entry 2: tenant: Field required"),
        ('{"s3cret-a": {"tenant": "a b"}}', "entry 1: tenant 'a b' is invalid"),
        ('{"s3cret-a": {"tenant": ""}}', "entry 1: tenant is missing"),
        ('{"s3cret-a": {"tenant": "acme", "role": "x"}}', "entry 1: role: Extra inputs"),
        ('{"s3cret-a": {"tenant": "acme", "access_labels": "hr"}}', "entry 1: access_labels"),
        ('{"s3cret-a": {"tenant": "acme", "access_labels": [" hr"]}}', "access label ' hr'"),
        ('{" s3cret-a": {"tenant": "acme"}}', "entry 1: the key is empty or starts or ends"),
    ],
)
async def test_malformed_api_keys_fail_at_startup_without_echoing_keys(
    value: str, problem: str, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="RAG_GATEWAY_API_KEYS") as direct:
        parse_api_keys(value)
    assert problem in str(direct.value)
    monkeypatch.setenv("RAG_GATEWAY_API_KEYS", value)
    with pytest.raises(ValidationError) as caught:
        GatewaySettings()
    assert problem in str(caught.value)
    assert "s3cret" not in str(caught.value) + str(direct.value), "keys are secrets"


async def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_GATEWAY_API_KEYS", json.dumps(KEYS))
    settings = GatewaySettings()
    assert settings.api_keys()["key-two"] == Caller("globex", ("hr",))
    assert "key-two" not in repr(settings), "the value is a secret"


async def test_auth_refuses_upload_before_reading_it(
    secured: httpx.AsyncClient, fakes: Fakes
) -> None:
    before = len(fakes.ingestion.uploads)
    response = await secured.post("/v1/documents", files={"file": ("a.txt", b"data")})
    assert response.status_code == 401
    assert len(fakes.ingestion.uploads) == before


async def test_health_and_docs_need_no_key(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/healthz")).status_code == 200
    assert (await secured.get("/readyz")).status_code == 200
    assert (await secured.get("/openapi.json")).status_code == 200
    assert (await secured.get("/docs")).status_code == 200


async def test_no_keys_logs_a_warning(fakes: Fakes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.gateway.app"):
        create_app(_settings(fakes), PlatformClients(_settings(fakes)))
    assert "authentication disabled" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="services.gateway.app"):
        keyed = _settings(fakes, gateway_api_keys='{"k": {"tenant": "acme"}}')
        create_app(keyed, PlatformClients(keyed))
    assert "authentication disabled" not in caplog.text


# --------------------------------------------------------------------------- openapi


async def test_openapi_describes_bodies_errors_and_auth(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "ragplatform gateway"
    assert spec["info"]["version"]
    assert spec["info"]["description"]
    paths = spec["paths"]
    assert {"/v1/ask", "/v1/ask/stream", "/v1/documents", "/v1/documents/{document_id}"} <= set(
        paths
    )
    ask = paths["/v1/ask"]["post"]
    assert ask["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AskBody")
    ok = ask["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("/AskResponse")
    assert "text/event-stream" in ok
    assert ask["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )
    upload = paths["/v1/documents"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"200", "201", "413"} <= set(upload["responses"])
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"
    assert "security" not in paths["/healthz"]["get"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_http_models_mirror_the_contract_field_for_field() -> None:
    for model, message in PROTO_MODELS.items():
        proto_fields = set(message.DESCRIPTOR.fields_by_name) - IDENTITY_FIELDS.get(model, set())
        assert set(model.model_fields) == proto_fields, model.__name__


def _populated(message: Message, depth: int = 0) -> Message:
    """`message` with every field set to a value its type can hold: floats that
    are not exact in 32 bits, 64-bit integers beyond 2**53, the last enum value,
    two items in every list."""
    for descriptor in message.DESCRIPTOR.fields:
        count = 2 if descriptor.is_repeated else 1
        for index in range(count):
            if descriptor.message_type is not None:
                if depth > 3:
                    break
                target = (
                    getattr(message, descriptor.name).add()
                    if descriptor.is_repeated
                    else getattr(message, descriptor.name)
                )
                _populated(target, depth + 1)
                continue
            if descriptor.enum_type is not None:
                value: object = descriptor.enum_type.values[-1].number
            elif descriptor.cpp_type == descriptor.CPPTYPE_STRING:
                text = f"{descriptor.name}-{index}"
                value = b"\x00\xff" if descriptor.type == descriptor.TYPE_BYTES else text
            elif descriptor.cpp_type == descriptor.CPPTYPE_BOOL:
                value = True
            elif descriptor.cpp_type in (descriptor.CPPTYPE_FLOAT, descriptor.CPPTYPE_DOUBLE):
                value = 0.1 + index
            elif descriptor.cpp_type in (descriptor.CPPTYPE_INT64, descriptor.CPPTYPE_UINT64):
                value = 2**60 + index
            else:
                value = 7 + index
            if descriptor.is_repeated:
                getattr(message, descriptor.name).append(value)
            else:
                setattr(message, descriptor.name, value)
    return message


@pytest.mark.parametrize("model", list(PROTO_MODELS), ids=lambda m: m.__name__)
async def test_responses_convert_as_the_proto3_json_mapping_does(model: type[BaseModel]) -> None:
    """The fast converter gives the models exactly what MessageToDict gives them,
    on fully populated messages and on empty ones (unset fields left out)."""
    message_type = PROTO_MODELS[model]
    for message in (_populated(message_type()), message_type()):
        for name in IDENTITY_FIELDS.get(model, set()):
            message.ClearField(name)
        reference = MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        expected = model.model_validate(reference).model_dump(mode="json")
        assert from_proto(message, model).model_dump(mode="json") == expected


async def test_bodies_over_their_limit_are_413_before_they_are_read(
    make_client: Any, fakes: Fakes
) -> None:
    http = await make_client(gateway_max_upload_bytes=1000, gateway_max_request_bytes=200)
    uploads, asks = len(fakes.ingestion.uploads), len(fakes.query.requests)

    response = await http.post("/v1/documents", files={"file": ("big.txt", b"x" * 2000)})
    assert response.status_code == 413
    error = response.json()["error"]
    assert (
        error["code"] == "RESOURCE_EXHAUSTED" and "over the limit of 1000 bytes" in error["message"]
    )

    question = {"question": "why? " * 100}
    response = await http.post("/v1/ask", json=question)
    assert response.status_code == 413
    assert "over the limit of 200 bytes" in response.json()["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b'{"question": "' + b"a" * 50

    response = await http.post(
        "/v1/ask", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "at least" in response.json()["error"]["message"]
    assert (len(fakes.ingestion.uploads), len(fakes.query.requests)) == (uploads, asks)

    small = await http.post("/v1/documents", files={"file": ("small.txt", b"fits")})
    assert small.status_code == 201
