"""Tracing with the OpenTelemetry SDK, configured by the standard OTEL_* variables.

One question is one trace: the gateway starts it (or continues the caller's W3C
`traceparent`), every gRPC call carries the context in its metadata, each server
opens a span per call, the query pipeline a span per stage, and model calls carry
the OpenTelemetry GenAI attributes.

Tracing is off unless `OTEL_TRACES_EXPORTER` names an exporter (`otlp` or
`console`; the embedded default is off, the Helm chart turns it on) and
`OTEL_SDK_DISABLED` is not true. Off, no provider is installed, no interceptor
or middleware creates spans, and every helper here returns a shared no-op
context manager, so tracing costs nothing. On, the SDK reads the rest itself:
`OTEL_EXPORTER_OTLP_ENDPOINT` (and the other exporter variables), sampling
(`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`; default parent-based
always-on), the batch processor (`OTEL_BSP_*`), the propagators
(`OTEL_PROPAGATORS`, default W3C tracecontext and baggage) and the resource
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`; service.name defaults to the
process name, e.g. "query"). Code records spans through the helpers here (or
`tracer()`), not through OpenTelemetry's global tracer provider, which stays
unset.
"""

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import Span, SpanKind

TRACER_NAME = "ragplatform"
SERVICE_NAMESPACE = "ragplatform"

MODEL_CALLS: dict[str, str] = {
    "/ragplatform.v1.GenerationService/Generate": "chat",
    "/ragplatform.v1.GenerationService/GenerateStream": "chat",
    "/ragplatform.v1.EmbeddingService/EmbedQueries": "embeddings",
    "/ragplatform.v1.EmbeddingService/EmbedDocuments": "embeddings",
}
"""gRPC methods that are model calls, with their GenAI operation name: their
server span gets the gen_ai.* attributes from the response (see
`annotate_model_call`), whichever backend answered."""

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_follow_parent = False
"""Whether the sampler keeps a parent's decision (the default, parent-based): then
nothing under an unsampled parent can be recorded, and no span is built for it."""
_NOOP: AbstractContextManager[None] = contextlib.nullcontext()


class TracingConfigError(ValueError):
    """An OTEL_* variable asks for something this platform does not ship."""


def _exporters() -> list[str]:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")
    return [name.strip().lower() for name in names if name.strip().lower() not in ("", "none")]


def _processor(exporter: str) -> SpanProcessor:
    if exporter == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    if exporter != "otlp":
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={exporter!r} is not supported; use otlp, console or none"
        )
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    if protocol.strip().lower() != "grpc":
        raise TracingConfigError(
            f"OTLP protocol {protocol!r} is not supported; set OTEL_EXPORTER_OTLP_PROTOCOL=grpc"
        )
    # Imported only when used: the exporter pulls in its own gRPC stubs.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter())


def configure_tracing(process: str) -> bool:
    """Install the SDK for `process` when OTEL_* asks for it; True when tracing is on."""
    global _provider, _tracer, _follow_parent
    exporters = _exporters()
    if not exporters:
        return False
    resource = Resource.create({"service.namespace": SERVICE_NAMESPACE})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: process}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(_processor(exporter))
    # Deliberately not the global provider: libraries that trace through it on
    # their own (FastAPI does as soon as one is set) would add a second span tree
    # per request; the platform's spans are exactly the ones made here.
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)
    _follow_parent = isinstance(provider.sampler, ParentBased)
    return True


def shutdown_tracing() -> None:
    """Export the spans still buffered (at process exit)."""
    if _provider is not None:
        _provider.shutdown()


def tracing_enabled() -> bool:
    """Whether this process records spans."""
    return _tracer is not None


def tracer() -> trace.Tracer:
    """The platform's tracer (a no-op one while tracing is off)."""
    return _tracer if _tracer is not None else trace.NoOpTracer()


def unsampled(parent: otel_context.Context | None = None) -> bool:
    """Whether a span under `parent` (default: the current context) could not be
    recorded: tracing is off, or the parent-based sampler follows a parent that
    was not sampled. Callers then build no span at all, which keeps unsampled
    requests nearly as cheap as with tracing off; the parent's context still
    propagates, so the trace stays one."""
    if _tracer is None:
        return True
    context = trace.get_current_span(parent).get_span_context()
    return _follow_parent and context.is_valid and not context.trace_flags.sampled


def stage_span(stage: str) -> AbstractContextManager[object]:
    """A span around one pipeline stage; free when tracing is off or unsampled."""
    if _tracer is None or unsampled():
        return _NOOP
    return _tracer.start_as_current_span(stage, attributes={"rag.stage": stage})


def outgoing_metadata() -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata (W3C traceparent, tracestate, baggage)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def incoming_context(carrier: Mapping[str, str]) -> otel_context.Context:
    """The caller's trace context from gRPC metadata or HTTP headers (lower-case keys)."""
    return propagate.extract(carrier)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in W3C hex form of the current span, if one is recording."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# --------------------------------------------------------------------------- GenAI


@contextlib.contextmanager
def genai_span(
    operation: str, model: str, provider: str, **request: str | int | float
) -> Iterator[Span | None]:
    """A CLIENT span for one model call, named "{operation} {model}" as the GenAI
    conventions say; `request` adds gen_ai.request.* attributes (temperature,
    max_tokens, ...). Yields None while tracing is off; pass what it yields to
    `record_genai_usage`."""
    if _tracer is None or unsampled():
        yield None
        return
    attributes: dict[str, str | int | float] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
    }
    attributes.update({f"gen_ai.request.{key}": value for key, value in request.items()})
    with _tracer.start_as_current_span(
        f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


def record_genai_usage(
    span: Span | None, input_tokens: int, output_tokens: int, response_model: str = ""
) -> None:
    """Token usage (and the model that actually answered) on a GenAI span."""
    if span is None or not span.is_recording():
        return
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)


def annotate_model_call(span: Span, operation: str, message: Message) -> None:
    """Set the GenAI attributes on the server span of a model-call RPC from its
    response: `model`, `backend` and `usage` fields (a stream's `final` message).
    Other messages of a stream (deltas) are ignored."""
    fields = message.DESCRIPTOR.fields_by_name
    if "final" in fields:
        if not message.HasField("final"):
            return
        message = message.final  # type: ignore[attr-defined]
        fields = message.DESCRIPTOR.fields_by_name
    model = str(getattr(message, "model", ""))
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
    }
    if "backend" in fields:
        attributes["gen_ai.provider.name"] = message.backend  # type: ignore[attr-defined]
    if "usage" in fields:
        usage = message.usage  # type: ignore[attr-defined]
        attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
    span.set_attributes(attributes)
