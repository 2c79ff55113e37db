"""One question is one trace across gateway, query, embedding, retrieval and
generation, with correct parent links and the GenAI attributes on model calls."""

import time

import httpx
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from scripts.otlp_sink import ServiceSpan, SpanSink
from services.cli.supervisor import Platform
from tests.observability.conftest import SAMPLES

Spans = list[ServiceSpan]
FIVE = {"gateway", "query", "embedding", "retrieval", "generation"}
SERVER = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
EXPECTED = {
    ("gateway", "POST /v1/ask"),
    ("query", "ragplatform.v1.QueryService/Ask"),
    *(("query", stage) for stage in ("embed", "retrieve", "cache_pin", "generate", "verify")),
    ("embedding", "ragplatform.v1.EmbeddingService/EmbedQueries"),
    ("retrieval", "ragplatform.v1.RetrievalService/Search"),
    ("generation", "ragplatform.v1.GenerationService/Generate"),
}
"""The spans of one ask (processes export in their own batches: wait for all)."""


def _value(value: common_pb2.AnyValue) -> object:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def attributes(span: trace_pb2.Span) -> dict[str, object]:
    return {a.key: _value(a.value) for a in span.attributes}


def ask_spans(spans: Spans) -> Spans:
    """The spans of the trace whose root is the gateway's POST /v1/ask span."""
    roots = [s for service, s in spans if service == "gateway" and s.name == "POST /v1/ask"]
    if not roots:
        return []
    trace_id = roots[-1].trace_id
    return [(service, s) for service, s in spans if s.trace_id == trace_id]


def test_one_question_is_one_trace_across_five_services(
    observed_platform: Platform, span_sink: SpanSink
) -> None:
    sink = span_sink
    url = observed_platform.address("gateway")
    with httpx.Client(base_url=url, timeout=60) as http:
        upload = http.post(
            "/v1/documents",
            files={"file": ("leave-policy.md", (SAMPLES / "leave-policy.md").read_bytes())},
        )
        assert upload.status_code in (200, 201), upload.text
        sink.wait_for(lambda spans: any(s.name == "POST /v1/documents" for _, s in spans))
        time.sleep(0.5)  # the upload's last batches of spans
        sink.clear()
        answer = http.post(
            "/v1/ask",
            json={
                "question": "How many days of paid annual leave do full-time employees get?",
                # Every stage must run: an earlier test may have cached this answer.
                "bypass_cache": True,
            },
        )
    assert answer.status_code == 200, answer.text

    def complete(spans: Spans) -> bool:
        return {(service, s.name) for service, s in ask_spans(spans)} >= EXPECTED

    assert sink.wait_for(complete), f"incomplete trace: {ask_spans(sink.spans())}"
    spans = sink.spans()
    trace = ask_spans(spans)
    services = {service for service, _ in trace}
    assert services >= FIVE, f"spans of the ask came from {services} only"

    # One trace: every span exported since the ask belongs to it (health probes
    # are not traced and nothing else ran meanwhile).
    others = [(svc, s.name) for svc, s in spans if s.trace_id != trace[0][1].trace_id]
    assert not others, f"spans outside the ask's trace: {others}"

    by_id = {span.span_id: (service, span) for service, span in trace}
    roots = [span for _, span in trace if not span.parent_span_id]
    assert [r.name for r in roots] == ["POST /v1/ask"], "the gateway span must be the only root"
    for service, span in trace:
        if span.parent_span_id:
            assert span.parent_span_id in by_id, f"{service} span {span.name} has a lost parent"

    def server_span(service: str, name: str, stage: str = "") -> trace_pb2.Span:
        found = [
            s
            for svc, s in trace
            if svc == service
            and s.name == name
            and s.kind == SERVER
            and (not stage or by_id[s.parent_span_id][1].name == stage)
        ]
        assert len(found) == 1, f"expected one {service} span {name}, got {len(found)}"
        return found[0]

    def parent_of(span: trace_pb2.Span) -> tuple[str, trace_pb2.Span]:
        return by_id[span.parent_span_id]

    gateway = roots[0]
    ask = server_span("query", "ragplatform.v1.QueryService/Ask")
    assert parent_of(ask) == ("gateway", gateway)
    downstream = {
        "embed": server_span("embedding", "ragplatform.v1.EmbeddingService/EmbedQueries"),
        # The answer cache repeats the search under "cache_pin" to pin document versions.
        "retrieve": server_span("retrieval", "ragplatform.v1.RetrievalService/Search", "retrieve"),
        "generate": server_span("generation", "ragplatform.v1.GenerationService/Generate"),
    }
    for stage, callee in downstream.items():
        service, stage_span = parent_of(callee)
        assert (service, stage_span.name) == ("query", stage), f"{callee.name} under {stage_span}"
        assert parent_of(stage_span) == ("query", ask)
    verify = [s for svc, s in trace if svc == "query" and s.name == "verify"]
    assert len(verify) == 1 and parent_of(verify[0]) == ("query", ask)
    pins = [s for svc, s in trace if svc == "query" and s.name == "cache_pin"]
    assert len(pins) == 1 and parent_of(pins[0]) == ("query", ask)

    generate = attributes(downstream["generate"])
    assert generate["gen_ai.operation.name"] == "chat"
    assert generate["gen_ai.request.model"], generate
    assert generate["gen_ai.provider.name"], generate
    assert isinstance(generate["gen_ai.usage.input_tokens"], int)
    assert isinstance(generate["gen_ai.usage.output_tokens"], int)
    embed = attributes(downstream["embed"])
    assert embed["gen_ai.operation.name"] == "embeddings"
    assert embed["gen_ai.request.model"], embed
    assert attributes(gateway)["http.response.status_code"] == 200
    assert attributes(ask)["rpc.grpc.status_code"] == 0
