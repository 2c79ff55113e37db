"""A service started with another embedder than the index's refuses to serve.

The session platform's index holds MiniLM vectors. A query service started
against the same retrieval service but an embedding service running Vertex AI's
text-embedding-005 (on the fake) exits at start-up naming both models, and the
index refuses that embedder's vectors when asked directly.
"""

import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from ragplatform.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc, retrieval_pb2
from services.cli.supervisor import Platform
from tests.contract.fakes.server import serve
from tests.contract.fakes.vertex_embedding_fake import VertexEmbeddingFake
from tests.integration.conftest import REPO, Stubs, upload

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
PREFIX = "5259"


@pytest.fixture(scope="module")
def vertex_embedding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedding service on Vertex AI's fake: its address."""
    fake = VertexEmbeddingFake()
    with serve(fake.app) as url:
        env = {
            "RAG_EMBEDDING_ADDR": f"127.0.0.1:{PREFIX}3",
            "RAG_EMBEDDING_BACKEND": "vertex",
            "RAG_GCP_PROJECT": "acme-rag",
            "RAG_VERTEX_EMBEDDING_BASE_URL": url,
            "RAG_VERTEX_EMBEDDING_ACCESS_TOKEN": "fake-token",
            "RAG_VERTEX_EMBEDDING_DIMENSION": "384",
        }
        with Platform(
            tmp_path_factory.mktemp("other-embedder"), env=env, services=["embedding"]
        ) as running:
            yield running.settings.embedding_addr


def test_a_query_service_with_another_embedder_refuses_to_serve(
    platform: Platform, stubs: Stubs, vertex_embedding: str
) -> None:
    upload(stubs, "stamp.txt", b"Any document records the index's embedding model.")
    stats = stubs.retrieval.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)
    assert stats.embedding_model == MINILM

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RAG_QUERY_ADDR": f"127.0.0.1:{PREFIX}1",
        "RAG_EMBEDDING_ADDR": vertex_embedding,
        "RAG_RETRIEVAL_ADDR": platform.settings.retrieval_addr,
        "RAG_GENERATION_ADDR": platform.settings.generation_addr,
        "RAG_DATA_DIR": str(platform.settings.data_dir),
    }
    started = subprocess.run(
        [sys.executable, "-m", "services.query"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode != 0
    assert (
        f"runs 'text-embedding-005' (384 dimensions), but the index at "
        f"{platform.settings.retrieval_addr} holds vectors of '{MINILM}'"
    ) in started.stderr, started.stderr

    with grpc.insecure_channel(vertex_embedding) as channel:
        embedded = embedding_pb2_grpc.EmbeddingServiceStub(channel).EmbedQueries(
            embedding_pb2.EmbedQueriesRequest(texts=["How many days of leave?"]), timeout=10
        )
    with pytest.raises(grpc.RpcError) as refused:
        stubs.retrieval.Search(
            retrieval_pb2.SearchRequest(
                vector=embedded.vectors[0],
                top_k=3,
                caller=common_pb2.Caller(tenant="default"),
                embedding_model=embedded.model,
            ),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not of 'text-embedding-005'" in str(refused.value.details())
