"""A real platform for integration tests: every service as its own process.

Ports are offset from the defaults so a developer's running `ragctl up` does not
collide with the tests. The platform starts once per test session (the embedding
model takes ~10 s to load) and each test uses its own document ids.
"""

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ragplatform.v1 import (
    ingestion_pb2_grpc,
    query_pb2_grpc,
    retrieval_pb2_grpc,
)
from services.cli.supervisor import Platform

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
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(self._channels[2])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@pytest.fixture(scope="session")
def stubs(platform: Platform) -> Iterator[Stubs]:
    client = Stubs(platform)
    yield client
    client.close()
