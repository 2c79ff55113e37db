"""Parsing in worker processes, with real processes: a document past its parse
deadline is refused while another tenant's upload is served, a PDF bomb is
refused naming the file, and the service keeps serving.

This module starts its own embedding, retrieval and ingestion processes on its
own ports (5240x), so that it never meets the shared integration platform.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from ragplatform.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.cli.supervisor import Platform
from tests.unit.test_pdf_bombs import LINE, pdf

pytestmark = pytest.mark.integration

ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:52401",
    "RAG_INGESTION_ADDR": "127.0.0.1:52402",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52403",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52404",
    "RAG_GENERATION_ADDR": "127.0.0.1:52405",
    "RAG_GATEWAY_PORT": "52480",
    "RAG_DRAIN_SECONDS": "2",
    "RAG_INGESTION_PARSE_WORKERS": "2",
    "RAG_INGESTION_PARSE_SECONDS": "2",
    "RAG_INGESTION_PARSE_MEMORY_MB": "4096",
}
CREATED = ingestion_pb2.IngestResult.Status.STATUS_CREATED


@pytest.fixture(scope="module")
def ingestion(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ingestion_pb2_grpc.IngestionServiceStub]:
    services = ("embedding", "retrieval", "ingestion")
    with (
        Platform(tmp_path_factory.mktemp("parse-workers"), env=ENV, services=services) as up,
        grpc.insecure_channel(up.settings.ingestion_addr) as channel,
    ):
        yield ingestion_pb2_grpc.IngestionServiceStub(channel)


def upload(
    stub: ingestion_pb2_grpc.IngestionServiceStub, filename: str, data: bytes, tenant: str
) -> ingestion_pb2.IngestResult:
    def messages() -> Iterator[ingestion_pb2.UploadDocumentRequest]:
        header = ingestion_pb2.DocumentHeader(filename=filename, tenant=tenant)
        yield ingestion_pb2.UploadDocumentRequest(header=header)
        for start in range(0, len(data), 1024 * 1024):
            yield ingestion_pb2.UploadDocumentRequest(data=data[start : start + 1024 * 1024])

    response: ingestion_pb2.UploadDocumentResponse = stub.UploadDocument(messages(), timeout=60)
    return response.result


def test_a_document_past_its_deadline_is_refused_and_never_delays_another_tenant(
    ingestion: ingestion_pb2_grpc.IngestionServiceStub,
) -> None:
    # 20 MB of prose takes far more than 2 s to chunk on any machine.
    slow = b"Trains are preferred for trips shorter than four hours. " * 360_000
    with ThreadPoolExecutor(1) as threads:
        flood = threads.submit(upload, ingestion, "huge.txt", slow, "flooder")
        quiet = upload(ingestion, "note.txt", b"Book trains at least 14 days ahead.", "quiet")
        assert quiet.status == CREATED and not flood.done()
        with pytest.raises(grpc.RpcError) as refused:
            flood.result()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "huge.txt: parsing took longer than 2 s" in str(refused.value.details())
    after = upload(ingestion, "after.txt", b"Hotels are booked through the portal.", "flooder")
    assert after.status == CREATED


def test_a_pdf_bomb_is_refused_naming_the_file_and_its_limit(
    ingestion: ingestion_pb2_grpc.IngestionServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        upload(ingestion, "shared.pdf", pdf(100, LINE * 10_000), "flooder")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "shared.pdf: the PDF's page contents decode to more than" in str(refused.value.details())
    honest = upload(ingestion, "report.pdf", pdf(2, LINE * 3), "flooder")
    assert honest.status == CREATED and honest.document.chunk_count >= 1
