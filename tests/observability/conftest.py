"""One real platform for the observability tests, with tracing and metrics on.

Every service runs as its own process (as in production), exports its spans by
OTLP/gRPC to a receiver that runs in this test process, and serves /metrics on
its own port (its serving port + 1000). Ports are distinct from
tests/integration (5215x) and from a developer's `ragctl up`, so the suites can
run side by side.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ragplatform.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc
from scripts.otlp_sink import SpanSink
from services.cli.supervisor import ALL, Platform
from services.common.tenancy import DEFAULT_TENANT

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "corpus"

PORTS = {
    "RAG_QUERY_ADDR": "127.0.0.1:52451",
    "RAG_INGESTION_ADDR": "127.0.0.1:52452",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52453",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52454",
    "RAG_GENERATION_ADDR": "127.0.0.1:52455",
    "RAG_GATEWAY_PORT": "52480",
}

FAILING_FIRST_BACKEND = {
    "RAG_GENERATION_SIMPLE_CHAIN": "vllm,extractive",
    "RAG_GENERATION_COMPLEX_CHAIN": "vllm,extractive",
    "RAG_VLLM_BASE_URL": "http://127.0.0.1:9/v1",  # nothing listens: refused at once
    "RAG_GENERATION_AB_ARMS": json.dumps(
        {
            "simple": [
                {"name": "llm-first", "backend": "vllm", "weight": 50},
                {"name": "extractive", "backend": "extractive", "weight": 50},
            ]
        }
    ),
}
"""Generation as in production, with its first backend down: answers still come
(from the extractive fallback), and fallbacks, backend errors, the circuit
breaker and A/B arms really happen, so their metrics are tested on real events."""


CALLER = common_pb2.Caller(tenant=DEFAULT_TENANT)
"""Whom the tests' gRPC calls act for: the tenant the gateway without API keys uses,
so that documents ingested over gRPC answer questions asked over HTTP."""


@pytest.fixture(scope="session")
def span_sink() -> Iterator[SpanSink]:
    with SpanSink() as sink:
        yield sink


@pytest.fixture(scope="session")
def observed_platform(
    tmp_path_factory: pytest.TempPathFactory, span_sink: SpanSink
) -> Iterator[Platform]:
    env = {
        **PORTS,
        "RAG_DRAIN_SECONDS": "1",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": span_sink.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        **FAILING_FIRST_BACKEND,
    }
    with Platform(tmp_path_factory.mktemp("observed"), env=env, services=ALL) as platform:
        yield platform


@pytest.fixture(scope="session")
def ingested(observed_platform: Platform) -> Platform:
    """The platform with samples/corpus indexed (unchanged documents are skipped)."""
    with grpc.insecure_channel(observed_platform.settings.ingestion_addr) as channel:
        events = ingestion_pb2_grpc.IngestionServiceStub(channel).IngestUris(
            ingestion_pb2.IngestUrisRequest(uris=[str(SAMPLES)], tenant=CALLER.tenant),
            timeout=300,
        )
        results = [event.result for event in events if event.HasField("result")]
    assert results and all(r.status != ingestion_pb2.IngestResult.STATUS_FAILED for r in results)
    return observed_platform
