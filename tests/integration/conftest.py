"""A real platform for integration tests: every service as its own process.

Ports are offset from the defaults so a developer's running `ragctl up` does not
collide with the tests. The platform starts once per test session (the embedding
model takes ~10 s to load) and each test uses its own document ids, or its own
tenants. Requests act for the embedded world's tenant ("default", as ragctl and
the gateway without keys do) unless a test names another.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ragplatform.v1 import (
    common_pb2,
    debug_pb2_grpc,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    retrieval_pb2_grpc,
)
from services.cli.supervisor import Platform
from services.common.tenancy import DEFAULT_TENANT

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "corpus"
MAX_DOCUMENT_BYTES = 1_000_000

TEST_ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:52151",
    "RAG_INGESTION_ADDR": "127.0.0.1:52152",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52153",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52154",
    "RAG_GENERATION_ADDR": "127.0.0.1:52155",
    "RAG_GATEWAY_PORT": "52180",
    "RAG_INGESTION_MAX_DOCUMENT_BYTES": str(MAX_DOCUMENT_BYTES),
    "RAG_DRAIN_SECONDS": "2",
}


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("platform")
    with Platform(data_dir, env=TEST_ENV) as running:
        yield running


class Stubs:
    """Synchronous stubs on the test platform (tests read better without async)."""

    def __init__(self, platform: Platform) -> None:
        settings = platform.settings
        self._channels = [
            grpc.insecure_channel(settings.ingestion_addr),
            grpc.insecure_channel(settings.query_addr),
            grpc.insecure_channel(settings.retrieval_addr),
        ]
        self.ingestion = ingestion_pb2_grpc.IngestionServiceStub(self._channels[0])
        self.query = query_pb2_grpc.QueryServiceStub(self._channels[1])
        self.request_debug = debug_pb2_grpc.RequestDebugServiceStub(self._channels[1])
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(self._channels[2])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@pytest.fixture(scope="session")
def stubs(platform: Platform) -> Iterator[Stubs]:
    client = Stubs(platform)
    yield client
    client.close()


def upload(
    stubs: Stubs,
    filename: str,
    data: bytes,
    document_id: str = "",
    media_type: str = "",
    **header: object,
) -> ingestion_pb2.IngestResult:
    """UploadDocument in 64 KiB messages; `header` adds DocumentHeader fields (the
    tenant defaults to the embedded one)."""
    fields: dict[str, object] = {"tenant": DEFAULT_TENANT, **header}

    def messages() -> Iterator[ingestion_pb2.UploadDocumentRequest]:
        yield ingestion_pb2.UploadDocumentRequest(
            header=ingestion_pb2.DocumentHeader(
                filename=filename, document_id=document_id, media_type=media_type, **fields
            )
        )
        for start in range(0, len(data), 64 * 1024):
            yield ingestion_pb2.UploadDocumentRequest(data=data[start : start + 64 * 1024])

    return stubs.ingestion.UploadDocument(messages(), timeout=60).result


def ingest(
    stubs: Stubs, *paths: Path, tenant: str = DEFAULT_TENANT
) -> list[ingestion_pb2.IngestResult]:
    """IngestUris of `paths` into `tenant`; the results, after checking the plan."""
    events = list(
        stubs.ingestion.IngestUris(
            ingestion_pb2.IngestUrisRequest(uris=[p.as_uri() for p in paths], tenant=tenant),
            timeout=300,
        )
    )
    assert events[0].HasField("plan")
    results = [e.result for e in events[1:]]
    assert len(results) == events[0].plan.document_count
    return results


def ask(
    stubs: Stubs, question: str, tenant: str = DEFAULT_TENANT, **kwargs: object
) -> query_pb2.AskResponse:
    """Ask as a caller of `tenant` (kwargs may give a whole `caller` instead)."""
    fields: dict[str, object] = {"caller": common_pb2.Caller(tenant=tenant), **kwargs}
    return stubs.query.Ask(query_pb2.AskRequest(question=question, **fields), timeout=60)


def ragctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ragctl as a user would, against the test platform."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.ragctl", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **TEST_ENV, **(env or {})},
        check=False,
    )
