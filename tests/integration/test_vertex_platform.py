"""The whole platform on Vertex AI: `RAG_EMBEDDING_BACKEND=vertex` and
`RAG_RETRIEVAL_BACKEND=vertex`, every service a real process, against the
fakes of Vertex AI's embedding and Vector Search REST APIs (served by this test
process) and the Firestore emulator: ingest, ask, update, delete and tenancy.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from ragplatform.v1 import common_pb2, ingestion_pb2, retrieval_pb2
from services.cli.supervisor import Platform
from tests.contract.fakes.server import serve
from tests.contract.fakes.vertex_embedding_fake import VertexEmbeddingFake
from tests.contract.vector_store import VectorSearchWorld
from tests.emulators import fresh_project
from tests.integration.conftest import Stubs, ask, upload

DIMENSION = 256
ACME, GLOBEX = "acme-vertex", "globex-vertex"
QUESTION = "How many days of paid annual leave do employees receive?"


def handbook(days: int) -> bytes:
    """The fake embeds a bag of words, so the answer's chunk shares most of the
    question's words: the extractive answerer's score threshold is tuned on
    MiniLM's cosines, not on the fake's."""
    return (
        "# Paid annual leave\n\n"
        f"Employees receive {days} days of paid annual leave.\n\n"
        "## Remote work\n\nStaff may work remotely two days per week.\n"
    ).encode()


PARKING = (
    b"# Parking rules\n\nThe visitor car park opens at seven in the morning. Employees "
    b"park on levels two and three of the garage and display their permit.\n"
)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    world = VectorSearchWorld.get()
    target = world.target(DIMENSION)
    embeddings = VertexEmbeddingFake()
    with serve(embeddings.app) as embedding_url:
        prefix = "5258"
        env = {
            "RAG_QUERY_ADDR": f"127.0.0.1:{prefix}1",
            "RAG_INGESTION_ADDR": f"127.0.0.1:{prefix}2",
            "RAG_EMBEDDING_ADDR": f"127.0.0.1:{prefix}3",
            "RAG_RETRIEVAL_ADDR": f"127.0.0.1:{prefix}4",
            "RAG_GENERATION_ADDR": f"127.0.0.1:{prefix}5",
            "RAG_GATEWAY_PORT": f"{prefix}0",
            "RAG_DRAIN_SECONDS": "1",
            "RAG_GCP_PROJECT": fresh_project(),
            "RAG_GCP_LOCATION": "us-central1",
            "RAG_EMBEDDING_BACKEND": "vertex",
            "RAG_VERTEX_EMBEDDING_BASE_URL": embedding_url,
            "RAG_VERTEX_EMBEDDING_ACCESS_TOKEN": "fake-token",
            "RAG_VERTEX_EMBEDDING_DIMENSION": str(DIMENSION),
            "RAG_RETRIEVAL_BACKEND": "vertex",
            "RAG_RETRIEVAL_DIMENSION": str(DIMENSION),
            "RAG_VECTOR_SEARCH_INDEX": target.index,
            "RAG_VECTOR_SEARCH_INDEX_ENDPOINT": target.index_endpoint,
            "RAG_VECTOR_SEARCH_DEPLOYED_INDEX_ID": target.deployed_index_id,
            "RAG_VECTOR_SEARCH_API_ENDPOINT": target.api_endpoint,
            "FIRESTORE_EMULATOR_HOST": world.firestore,
        }
        services = ["embedding", "retrieval", "generation", "ingestion", "query"]
        with Platform(
            tmp_path_factory.mktemp("vertex-platform"), env=env, services=services
        ) as running:
            yield running


@pytest.fixture(scope="module")
def stubs(platform: Platform) -> Iterator[Stubs]:
    client = Stubs(platform)
    yield client
    client.close()


def cited(stubs: Stubs, question: str, tenant: str) -> tuple[set[str], str]:
    """(the document ids an answer cites, the answer) for a caller of `tenant`."""
    answer = ask(stubs, question, tenant=tenant)
    return {Path(c.source_uri).stem for c in answer.citations}, answer.answer


def test_ingest_ask_update_delete_and_tenancy_on_vertex(stubs: Stubs) -> None:
    created = ingestion_pb2.IngestResult.STATUS_CREATED
    results = [
        upload(stubs, name, data, tenant=tenant)
        for tenant, name, data in (
            (ACME, "handbook.md", handbook(25)),
            (ACME, "parking.md", PARKING),
            (GLOBEX, "parking.md", PARKING),
        )
    ]
    assert [r.status for r in results] == [created] * 3, results

    documents, answer = cited(stubs, QUESTION, ACME)
    assert "handbook" in documents and "25 days" in answer, answer
    documents, answer = cited(stubs, QUESTION, GLOBEX)  # globex has no handbook
    assert "handbook" not in documents and "25 days" not in answer, answer

    updated = upload(stubs, "handbook.md", handbook(30), tenant=ACME)
    assert updated.status == ingestion_pb2.IngestResult.STATUS_UPDATED, updated.message
    documents, answer = cited(stubs, QUESTION, ACME)
    assert "handbook" in documents and "30 days" in answer and "25 days" not in answer, answer

    stubs.ingestion.DeleteDocument(
        ingestion_pb2.DeleteDocumentRequest(document_id=updated.document.document_id, tenant=ACME),
        timeout=30,
    )
    documents, answer = cited(stubs, QUESTION, ACME)
    assert "handbook" not in documents and "30 days" not in answer, answer
    listed = stubs.retrieval.ListDocuments(
        retrieval_pb2.ListDocumentsRequest(caller=common_pb2.Caller(tenant=ACME)), timeout=30
    )
    assert [d.document_id for d in listed.documents] == [results[1].document.document_id]
