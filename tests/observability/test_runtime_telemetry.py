"""The runtime's telemetry pieces in-process: RPC and HTTP instrumentation,
trace propagation, log lines, the request log and the debug checklist."""

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
from fastapi import FastAPI
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from ragplatform.v1 import (
    common_pb2,
    debug_pb2,
    generation_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.cli.debug import findings, render_checklist
from services.common.errors import InvalidInputError, NotFoundError
from services.ingestion.servicer import IngestionServicer
from services.ingestion.sources import LocalFiles, Sources
from services.query.debug import RequestLog
from services.query.servicer import QueryServicer
from services.runtime import telemetry
from services.runtime.clients import PlatformClients
from services.runtime.errors import ErrorMappingInterceptor
from services.runtime.logs import JsonFormatter
from services.runtime.metrics import init_cache_series, init_rpc_series, record_cache_lookup
from services.runtime.observability import HttpTelemetryMiddleware, RpcTelemetryInterceptor
from services.runtime.settings import PlatformSettings


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory (as configure_tracing would with an exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


# --------------------------------------------------------------------------- gRPC


class Retrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    async def GetDocument(
        self, request: retrieval_pb2.GetDocumentRequest, context: aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.GetDocumentResponse:
        if request.document_id == "missing":
            raise NotFoundError("no such document")
        if request.document_id == "bug":
            raise KeyError("bug")
        return retrieval_pb2.GetDocumentResponse()


class Ingestion(ingestion_pb2_grpc.IngestionServiceServicer):
    async def UploadDocument(
        self,
        requests: AsyncIterator[ingestion_pb2.UploadDocumentRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> ingestion_pb2.UploadDocumentResponse:
        """Echoes, as the result message, the deadline left and the trace it was called in."""
        async for _ in requests:
            pass
        metadata = dict(context.invocation_metadata() or ())
        remaining = context.time_remaining()
        echo = f"{remaining is not None and remaining > 0}|{metadata.get('traceparent', '')}"
        return ingestion_pb2.UploadDocumentResponse(result=ingestion_pb2.IngestResult(message=echo))


@pytest.fixture
async def retrieval_port() -> AsyncIterator[int]:
    server = aio.server(
        interceptors=[
            RpcTelemetryInterceptor("unit-retrieval", metrics=True),
            ErrorMappingInterceptor(),
        ]
    )
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(Retrieval(), server)
    ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(Ingestion(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(0)


async def test_rpc_calls_are_counted_by_final_status_code(retrieval_port: int) -> None:
    clients = PlatformClients(PlatformSettings(retrieval_addr=f"127.0.0.1:{retrieval_port}"))
    labels = {"service": "unit-retrieval", "method": "GetDocument"}
    before = {
        code: sample("rag_rpc_requests_total", **labels, code=code)
        for code in ("OK", "NOT_FOUND", "INTERNAL")
    }
    await clients.retrieval.GetDocument(retrieval_pb2.GetDocumentRequest(document_id="a"))
    for document_id in ("missing", "bug"):
        with pytest.raises(aio.AioRpcError):
            await clients.retrieval.GetDocument(
                retrieval_pb2.GetDocumentRequest(document_id=document_id)
            )
    await clients.close()
    for code in ("OK", "NOT_FOUND", "INTERNAL"):
        assert sample("rag_rpc_requests_total", **labels, code=code) == before[code] + 1, code
    assert sample("rag_rpc_duration_seconds_count", **labels) >= 3


def test_rpc_series_start_at_zero_for_every_code() -> None:
    init_rpc_series("unit-idle", ["Search"])
    labels = {"service": "unit-idle", "method": "Search"}
    assert (
        REGISTRY.get_sample_value("rag_rpc_requests_total", {**labels, "code": "UNAVAILABLE"}) == 0
    )
    assert REGISTRY.get_sample_value("rag_rpc_duration_seconds_count", labels) == 0


async def test_server_span_continues_the_callers_trace(
    retrieval_port: int, spans: InMemorySpanExporter
) -> None:
    clients = PlatformClients(PlatformSettings(retrieval_addr=f"127.0.0.1:{retrieval_port}"))
    with telemetry.stage_span("caller"), pytest.raises(aio.AioRpcError):
        await clients.retrieval.GetDocument(retrieval_pb2.GetDocumentRequest(document_id="missing"))
    await clients.close()
    finished = {span.name: span for span in spans.get_finished_spans()}
    server = finished["ragplatform.v1.RetrievalService/GetDocument"]
    caller = finished["caller"]
    assert server.kind == SpanKind.SERVER
    assert server.context.trace_id == caller.context.trace_id
    assert server.parent is not None and server.parent.span_id == caller.context.span_id
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert not server.status.is_ok


async def test_streaming_calls_get_the_default_deadline_and_the_trace(
    retrieval_port: int, spans: InMemorySpanExporter
) -> None:
    """grpc.aio files an interceptor under one call kind only: each kind must
    have its own, or streaming calls go without deadline and trace context."""
    clients = PlatformClients(PlatformSettings(ingestion_addr=f"127.0.0.1:{retrieval_port}"))
    with telemetry.stage_span("caller"):
        call = clients.ingestion.UploadDocument()
        await call.write(ingestion_pb2.UploadDocumentRequest(data=b"text"))
        await call.done_writing()
        reply = await call
    await clients.close()
    deadline, traceparent = reply.result.message.split("|")
    caller = {span.name: span for span in spans.get_finished_spans()}["caller"]
    assert deadline == "True"
    assert traceparent.split("-")[1] == f"{caller.context.trace_id:032x}"


UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


async def test_unsampled_requests_build_no_span_but_carry_the_trace(
    retrieval_port: int, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "_follow_parent", True)  # the default parent-based sampler
    clients = PlatformClients(PlatformSettings(retrieval_addr=f"127.0.0.1:{retrieval_port}"))
    token = otel_context.attach(telemetry.incoming_context({"traceparent": UNSAMPLED}))
    try:
        assert telemetry.stage_span("embed") is telemetry.stage_span("verify")  # the no-op
        carried = dict(telemetry.outgoing_metadata())["traceparent"]
        await clients.retrieval.GetDocument(retrieval_pb2.GetDocumentRequest(document_id="a"))
    finally:
        otel_context.detach(token)
        await clients.close()
    assert carried.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert spans.get_finished_spans() == ()


def test_tracing_off_by_default_and_helpers_are_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert telemetry.configure_tracing("unit") is False
    assert telemetry.tracing_enabled() is False
    assert telemetry.stage_span("embed") is telemetry.stage_span("retrieve")  # one shared no-op
    with telemetry.genai_span("chat", "m", "p") as span:
        assert span is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.configure_tracing("unit") is False


def test_unsupported_exporter_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with pytest.raises(telemetry.TracingConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc"):
        telemetry.configure_tracing("unit")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(telemetry.TracingConfigError, match="zipkin"):
        telemetry.configure_tracing("unit")


def test_genai_attributes(spans: InMemorySpanExporter) -> None:
    with telemetry.genai_span("chat", "gemini-2.5-pro", "gcp.vertex_ai", temperature=0.2) as span:
        telemetry.record_genai_usage(span, 120, 30, response_model="gemini-2.5-pro-002")
    with telemetry.stage_span("generate") as server:
        final = generation_pb2.GenerateStreamResponse(
            final=generation_pb2.GenerateResponse(
                model="extractive-v1",
                backend="extractive",
                usage=common_pb2.TokenUsage(input_tokens=7, output_tokens=3),
            )
        )
        telemetry.annotate_model_call(
            server, "chat", generation_pb2.GenerateStreamResponse(delta="x")
        )
        telemetry.annotate_model_call(server, "chat", final)
    chat, annotated = spans.get_finished_spans()
    assert chat.name == "chat gemini-2.5-pro" and chat.kind == SpanKind.CLIENT
    assert chat.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "gcp.vertex_ai",
        "gen_ai.request.model": "gemini-2.5-pro",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.response.model": "gemini-2.5-pro-002",
    }
    assert annotated.attributes["gen_ai.request.model"] == "extractive-v1"
    assert annotated.attributes["gen_ai.provider.name"] == "extractive"
    assert annotated.attributes["gen_ai.usage.input_tokens"] == 7


# --------------------------------------------------------------------------- logs


def _log_line(formatter: JsonFormatter, **extra: Any) -> dict[str, Any]:
    record = logging.makeLogRecord({"msg": "asked", "levelname": "INFO", "name": "x", **extra})
    return dict(json.loads(formatter.format(record)))


def test_log_lines_carry_trace_ids_and_no_content(spans: InMemorySpanExporter) -> None:
    plain = JsonFormatter("query")
    assert "trace_id" not in _log_line(plain)
    with telemetry.stage_span("embed"):
        line = _log_line(plain, question="What is my salary?", top_k=3)
        ids = telemetry.current_ids()
    assert ids is not None
    assert (line["trace_id"], line["span_id"]) == ids
    assert line["question"] == "<redacted: 18 chars>"
    assert line["top_k"] == 3
    assert _log_line(JsonFormatter("query", log_content=True), question="Hi?")["question"] == "Hi?"


# --------------------------------------------------------------------------- HTTP


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/documents/{document_id:path}", responses={404: {"description": "unknown"}})
    async def get_document(document_id: str) -> dict[str, str]:
        return {"id": document_id}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(HttpTelemetryMiddleware, openapi=app.openapi)
    return app


async def test_http_requests_are_labelled_by_route_template(spans: InMemorySpanExporter) -> None:
    route = {"route": "/v1/documents/{document_id}", "method": "GET"}
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        before = sample("rag_http_requests_total", **route, status="200")
        response = await http.get(
            "/v1/documents/folder/report.pdf",
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )
        assert response.status_code == 200
        await http.get("/healthz")
        await http.get("/wp-login.php")
    assert sample("rag_http_requests_total", **route, status="200") == before + 1
    assert (
        REGISTRY.get_sample_value("rag_http_requests_total", {**route, "status": "404"}) is not None
    )
    assert sample("rag_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert (
        REGISTRY.get_sample_value(
            "rag_http_requests_total", {"route": "/healthz", "method": "GET", "status": "200"}
        )
        is None
    )  # probes are not observed
    (span,) = [s for s in spans.get_finished_spans() if s.name.startswith("GET /v1/")]
    assert span.name == "GET /v1/documents/{document_id}"
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert span.attributes["http.response.status_code"] == 200


def test_cache_lookups() -> None:
    init_cache_series(["unit-answers"])
    assert (
        REGISTRY.get_sample_value(
            "rag_cache_requests_total", {"cache": "unit-answers", "result": "miss"}
        )
        == 0
    )
    record_cache_lookup("unit-answers", hit=True)
    assert sample("rag_cache_requests_total", cache="unit-answers", result="hit") == 1


# --------------------------------------------------------------------------- ingestion


class FakeIngestion:
    sources = Sources({"file": LocalFiles()}, {})

    async def ingest_uris(
        self, uris: Any, access: Any
    ) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        yield ingestion_pb2.IngestUrisResponse(plan=ingestion_pb2.IngestPlan(document_count=3))
        yield ingestion_pb2.IngestUrisResponse(
            result=ingestion_pb2.IngestResult(
                status=ingestion_pb2.IngestResult.STATUS_CREATED,
                document=common_pb2.DocumentInfo(chunk_count=4),
            )
        )
        yield ingestion_pb2.IngestUrisResponse(
            result=ingestion_pb2.IngestResult(
                status=ingestion_pb2.IngestResult.STATUS_FAILED, error_code="INVALID_ARGUMENT"
            )
        )
        raise InvalidInputError("stopped early")  # the third document never finishes


async def test_ingestion_counts_outcomes_and_backlog_returns_to_zero() -> None:
    servicer = IngestionServicer(FakeIngestion())  # type: ignore[arg-type]
    created = sample("rag_ingestion_documents_total", status="created")
    chunks = sample("rag_ingestion_chunks_total")
    failures = sample("rag_ingestion_failures_total", code="INVALID_ARGUMENT")
    backlog = []
    with pytest.raises(InvalidInputError):
        request = ingestion_pb2.IngestUrisRequest(uris=["x"], tenant="default")
        async for _ in servicer.IngestUris(request, None):  # type: ignore[arg-type]
            backlog.append(sample("rag_ingestion_backlog_documents"))
    assert backlog == [3, 2, 1]
    assert sample("rag_ingestion_backlog_documents") == 0
    assert sample("rag_ingestion_documents_total", status="created") == created + 1
    assert sample("rag_ingestion_chunks_total") == chunks + 4
    assert sample("rag_ingestion_failures_total", code="INVALID_ARGUMENT") == failures + 1


# --------------------------------------------------------------------------- request debugging


class FakePipeline:
    def __init__(self) -> None:
        self.debug_seen: list[bool] = []

    async def ask(self, params: query_pb2.AskRequest) -> query_pb2.AskResponse:
        self.debug_seen.append(params.debug)
        if params.question == "fail":
            raise NotFoundError("nothing")
        return query_pb2.AskResponse(
            answer="12 days [1].",
            request_id=f"r-{len(self.debug_seen)}",
            timings=[common_pb2.StageTiming(stage="embed", seconds=0.01)],
            debug=query_pb2.AskDebug(
                prompt="PROMPT", retrieved=[common_pb2.ScoredChunk(score=0.8)]
            ),
        )


async def test_query_records_debug_view_but_returns_it_only_when_asked() -> None:
    pipeline = FakePipeline()
    requests = RequestLog(capacity=10, ttl_seconds=60)
    servicer = QueryServicer(pipeline, requests)  # type: ignore[arg-type]
    stage_count = sample("rag_stage_duration_seconds_count", stage="embed")
    acme = common_pb2.Caller(tenant="acme", access_labels=["hr"])
    plain = await servicer.Ask(query_pb2.AskRequest(question="q", caller=acme), None)  # type: ignore[arg-type]
    asked = await servicer.Ask(query_pb2.AskRequest(question="q", debug=True), None)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        await servicer.Ask(query_pb2.AskRequest(question="fail"), None)  # type: ignore[arg-type]
    assert pipeline.debug_seen == [True, True, True]
    assert not plain.HasField("debug") and asked.debug.prompt == "PROMPT"
    record = requests.find(request_id=plain.request_id)
    assert record is not None and record.response.debug.prompt == "PROMPT"
    assert record.request.question == "q"
    assert record.request.caller == acme, "the record keeps whom the request acted for"
    assert sample("rag_stage_duration_seconds_count", stage="embed") == stage_count + 2
    assert len(requests) == 2  # the failure has neither request id nor trace id (tracing off)


def test_request_log_evicts_oldest_and_expires() -> None:
    now = [0.0]
    log = RequestLog(capacity=2, ttl_seconds=10, clock=lambda: now[0])
    for n in range(3):
        log.add(debug_pb2.RequestRecord(request_id=f"r{n}", trace_id=f"{n:032x}"))
    assert log.find(request_id="r0") is None
    assert log.find(trace_id=f"{1:032x}") is not None
    now[0] = 11
    assert log.find(request_id="r2") is None
    log.add(debug_pb2.RequestRecord())  # no key: nothing could find it
    assert len(log) == 2


def _record(cited: bool, documents: list[str]) -> debug_pb2.RequestRecord:
    response = query_pb2.AskResponse(
        request_id="r1",
        citations=[query_pb2.Citation(number=1, document_id=documents[0])] if cited else [],
        debug=query_pb2.AskDebug(
            retrieved=[
                common_pb2.ScoredChunk(chunk=common_pb2.Chunk(document_id=d), score=0.5)
                for d in documents
            ]
        ),
    )
    return debug_pb2.RequestRecord(
        request_id="r1", request=query_pb2.AskRequest(question="q"), response=response
    )


@pytest.mark.parametrize(
    ("record", "check", "expected"),
    [
        (_record(True, ["a"]), debug_pb2.CheckDocumentResponse(indexed=False), "not indexed"),
        (
            _record(True, ["a"]),
            debug_pb2.CheckDocumentResponse(indexed=True, rank=7, depth=100),
            "ranks 7",
        ),
        (
            _record(False, ["b", "x"]),
            debug_pb2.CheckDocumentResponse(indexed=True, rank=1),
            "not cited",
        ),
        (_record(True, ["b"]), debug_pb2.CheckDocumentResponse(indexed=True, rank=1), "and cited"),
        (
            _record(True, ["a"]),
            debug_pb2.CheckDocumentResponse(indexed=True, rank=0, depth=100),
            "first 100",
        ),
    ],
)
def test_debug_findings_name_the_failing_stage(
    record: debug_pb2.RequestRecord, check: debug_pb2.CheckDocumentResponse, expected: str
) -> None:
    found = findings(record, "b", check)
    assert expected in found[0], found
    assert render_checklist(record, "b", check)


def test_debug_findings_of_a_failed_request() -> None:
    record = debug_pb2.RequestRecord(error_code="UNAVAILABLE", error_message="retrieval down")
    assert findings(record) == ["the request failed: UNAVAILABLE: retrieval down"]


def test_json_logs_go_to_stderr_as_one_line_per_event() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("gateway"))
    logger = logging.getLogger("unit.oneline")
    logger.addHandler(handler)
    logger.warning("two\nlines", extra={"prompt": "secret prompt"})
    logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "two\nlines" and "secret" not in line
