"""Vertex AI embeddings in the real platform: the embedding, retrieval and
ingestion services as processes, the embedding service on
``RAG_EMBEDDING_BACKEND=vertex`` pointed at the fake of Vertex's REST API
(served by this test process), through a storm of 429 RESOURCE_EXHAUSTED
answers during a bulk ingest.

Backoff is configured in milliseconds and the attempts outnumber the 429s, so
the storm costs the test no time and no request can run out of attempts.
"""

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ragplatform.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    ingestion_pb2,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.cli.supervisor import Platform
from tests.contract.fakes.server import serve
from tests.contract.fakes.vertex_embedding_fake import VertexEmbeddingFake
from tests.integration.conftest import Stubs, ingest

TENANT = "vertex-storm"
STORM = 40
TOPICS = [
    "parking", "cafeteria", "holidays", "laptops", "badges", "shuttle",
    "printing", "lockers", "bicycles", "mail", "visitors", "recycling",
]  # fmt: skip


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[VertexEmbeddingFake, str]]:
    server = VertexEmbeddingFake()
    with serve(server.app) as url:
        yield server, url


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, fake: tuple[VertexEmbeddingFake, str]
) -> Iterator[Platform]:
    prefix = "5257"
    env = {
        "RAG_INGESTION_ADDR": f"127.0.0.1:{prefix}2",
        "RAG_EMBEDDING_ADDR": f"127.0.0.1:{prefix}3",
        "RAG_RETRIEVAL_ADDR": f"127.0.0.1:{prefix}4",
        "RAG_DRAIN_SECONDS": "1",
        "RAG_EMBEDDING_BACKEND": "vertex",
        "RAG_GCP_PROJECT": "acme-rag",
        "RAG_GCP_LOCATION": "europe-west4",
        "RAG_VERTEX_EMBEDDING_BASE_URL": fake[1],
        "RAG_VERTEX_EMBEDDING_ACCESS_TOKEN": "fake-token",
        "RAG_VERTEX_EMBEDDING_DIMENSION": "256",
        "RAG_RETRIEVAL_DIMENSION": "256",
        "RAG_VERTEX_EMBEDDING_MAX_TEXTS_PER_REQUEST": "4",
        "RAG_VERTEX_EMBEDDING_CONCURRENCY": "4",
        "RAG_VERTEX_EMBEDDING_MAX_ATTEMPTS": str(STORM + 1),
        "RAG_VERTEX_EMBEDDING_BACKOFF_SECONDS": "0.001",
        "RAG_VERTEX_EMBEDDING_BACKOFF_MAX_SECONDS": "0.01",
    }
    services = ["embedding", "retrieval", "ingestion"]
    with Platform(tmp_path_factory.mktemp("vertex"), env=env, services=services) as running:
        yield running


def document(topic: str) -> str:
    paragraphs = [
        f"Paragraph {n} of the {topic} policy: the {topic} rules of office {n} "
        f"were revised, and every {topic} question goes to the {topic} desk."
        for n in range(12)
    ]
    return f"# {topic.title()} policy\n\n" + "\n\n".join(paragraphs) + "\n"


def test_a_bulk_ingest_through_a_429_storm_embeds_every_chunk_once(
    platform: Platform, fake: tuple[VertexEmbeddingFake, str], tmp_path: Path
) -> None:
    server = fake[0]
    paths = []
    for topic in TOPICS:
        path = tmp_path / f"{topic}.md"
        path.write_text(document(topic))
        paths.append(path)
    server.reset()
    server.storm(429, STORM)
    stubs = Stubs(platform)
    try:
        results = ingest(stubs, *paths, tenant=TENANT)
    finally:
        stubs.close()

    assert {ingestion_pb2.IngestResult.Status.Name(r.status) for r in results} == {
        "STATUS_CREATED"
    }, results[0].message
    assert not server.replies, "the whole storm was met"
    embedded = Counter(server.documents())
    assert max(embedded.values()) == 1, "no chunk embedded twice"
    assert sum(embedded.values()) == sum(r.document.chunk_count for r in results)
    assert all(r.document.chunk_count > 1 for r in results)
    titled = {e.title for e in server.embedded}
    assert titled == {f"{topic.title()} policy" for topic in TOPICS}

    with grpc.insecure_channel(platform.settings.embedding_addr) as channel:
        info = embedding_pb2_grpc.EmbeddingServiceStub(channel).GetModelInfo(
            embedding_pb2.GetModelInfoRequest(), timeout=10
        )
        question = embedding_pb2_grpc.EmbeddingServiceStub(channel).EmbedQueries(
            embedding_pb2.EmbedQueriesRequest(texts=["Where do bicycles questions go?"]),
            timeout=10,
        )
    assert (info.model, info.dimension) == ("text-embedding-005", 256)
    assert info.token_counting == embedding_pb2.TOKEN_COUNTING_UTF8_BYTES_UPPER_BOUND
    with grpc.insecure_channel(platform.settings.retrieval_addr) as channel:
        found = retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(
            retrieval_pb2.SearchRequest(
                vector=question.vectors[0],
                top_k=3,
                mode=common_pb2.RETRIEVAL_MODE_DENSE,
                caller=common_pb2.Caller(tenant=TENANT),
            ),
            timeout=10,
        )
    assert found.results
    assert found.results[0].chunk.title == "Bicycles policy"
