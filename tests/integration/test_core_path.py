"""The core RAG path with every service a real process talking gRPC on loopback."""

from pathlib import Path

import grpc
import pytest
from fpdf import FPDF
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    query_pb2,
    retrieval_pb2,
)
from services.cli.supervisor import Platform
from services.common.tenancy import DEFAULT_TENANT
from services.runtime.settings import SERVICE_NAMES
from tests.integration.conftest import MAX_DOCUMENT_BYTES, SAMPLES, Stubs, ask, ingest, upload

pytestmark = pytest.mark.integration

Status = ingestion_pb2.IngestResult.Status

# Demo questions and the sample file that answers each (samples/questions.txt).
EXPECTED_SOURCES = {
    "How many days of paid annual leave do full-time employees get?": "leave-policy.md",
    "What is the hotel limit per night in London?": "expense-policy.md",
    "How often must the status page be updated during a SEV1 incident?": "incident-runbook.html",
    "What is the maximum size of a single object in Acme Cloud Object Storage?": (
        "object-storage-faq.txt"
    ),
    "How quickly must critical vulnerabilities be patched?": "security-policy.md",
}
UNANSWERABLE = "Which programming language is the Acme Cloud billing service written in?"


CALLER = common_pb2.Caller(tenant=DEFAULT_TENANT)


def list_documents(stubs: Stubs) -> list[common_pb2.DocumentInfo]:
    reply = stubs.retrieval.ListDocuments(
        retrieval_pb2.ListDocumentsRequest(page_size=1000, tenant=DEFAULT_TENANT), timeout=10
    )
    return list(reply.documents)


def delete(stubs: Stubs, document_id: str) -> ingestion_pb2.DeleteDocumentResponse:
    request = ingestion_pb2.DeleteDocumentRequest(document_id=document_id, tenant=DEFAULT_TENANT)
    reply: ingestion_pb2.DeleteDocumentResponse = stubs.ingestion.DeleteDocument(
        request, timeout=10
    )
    return reply


def stats(stubs: Stubs) -> retrieval_pb2.GetStatsResponse:
    return stubs.retrieval.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)


def make_pdf(path: Path) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.set_title("Orbital Greenhouse Report")
    pages = [
        "Chapter one describes the station layout and the crew rotation schedule.",
        "The orbital greenhouse grows dwarf wheat under red and blue LED panels. "
        "Each harvest cycle of the dwarf wheat takes 64 days in microgravity.",
    ]
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="session")
def corpus(
    stubs: Stubs, tmp_path_factory: pytest.TempPathFactory
) -> list[ingestion_pb2.IngestResult]:
    pdf = make_pdf(tmp_path_factory.mktemp("pdf") / "greenhouse.pdf")
    results = ingest(stubs, SAMPLES, pdf)
    assert [Status.Name(r.status) for r in results] == ["STATUS_CREATED"] * len(results)
    return results


def test_every_service_serves_health_and_reflection(platform: Platform) -> None:
    for name in SERVICE_NAMES:
        with grpc.insecure_channel(platform.settings.address_of(name)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            names = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert f"ragplatform.v1.{name.capitalize()}Service" in names
            assert "grpc.health.v1.Health" in names


def test_corpus_is_indexed_with_chunks(
    stubs: Stubs, corpus: list[ingestion_pb2.IngestResult]
) -> None:
    assert len(corpus) == len(list(SAMPLES.iterdir())) + 1
    listed = list_documents(stubs)
    listed_ids = {d.document_id for d in listed}
    assert {r.document.document_id for r in corpus} <= listed_ids
    assert {d.tenant for d in listed} == {DEFAULT_TENANT}
    assert all(r.document.tenant == DEFAULT_TENANT for r in corpus)
    assert all(r.document.document_date_unix > 0 for r in corpus), "dated by modification time"
    assert all(r.document.chunk_count >= 1 for r in corpus)
    assert stats(stubs).chunk_count >= sum(r.document.chunk_count for r in corpus)


@pytest.mark.parametrize(("question", "filename"), EXPECTED_SOURCES.items())
def test_answers_cite_the_right_document(
    stubs: Stubs, corpus: list[ingestion_pb2.IngestResult], question: str, filename: str
) -> None:
    answer = ask(stubs, question)
    assert not answer.declined, answer.answer
    assert answer.citations, answer.answer
    assert answer.citations[0].source_uri.endswith("/" + filename)
    for citation in answer.citations:
        assert f"[{citation.number}]" in answer.answer
    assert {t.stage for t in answer.timings} >= {"embed", "retrieve", "generate", "verify", "total"}
    assert answer.request_id


def test_pdf_answer_cites_its_page(stubs: Stubs, corpus: list[ingestion_pb2.IngestResult]) -> None:
    answer = ask(stubs, "How long is a harvest cycle of dwarf wheat in the orbital greenhouse?")
    assert not answer.declined
    top = answer.citations[0]
    assert top.source_uri.endswith("/greenhouse.pdf")
    assert top.title == "Orbital Greenhouse Report"
    assert "64 days" in answer.answer


def test_unanswerable_question_is_declined(
    stubs: Stubs, corpus: list[ingestion_pb2.IngestResult]
) -> None:
    answer = ask(stubs, UNANSWERABLE)
    assert answer.declined
    assert not answer.citations


def test_debug_view_shows_retrieved_chunks_and_selection(
    stubs: Stubs, corpus: list[ingestion_pb2.IngestResult]
) -> None:
    question = next(iter(EXPECTED_SOURCES))
    dense = common_pb2.RETRIEVAL_MODE_DENSE  # hybrid orders by fusion, scores stay cosines
    answer = ask(stubs, question, debug=True, top_k=5, retrieval_mode=dense)
    assert len(answer.debug.retrieved) == 5
    scores = [r.score for r in answer.debug.retrieved]
    assert scores == sorted(scores, reverse=True)
    assert answer.debug.selection
    plain = ask(stubs, question)
    assert not plain.HasField("debug")


def test_stream_deltas_add_up_to_the_final_answer(
    stubs: Stubs, corpus: list[ingestion_pb2.IngestResult]
) -> None:
    question = next(iter(EXPECTED_SOURCES))
    request = query_pb2.AskStreamRequest(question=question, caller=CALLER)
    events = list(stubs.query.AskStream(request, timeout=60))
    assert events[-1].HasField("final")
    assert all(e.HasField("delta") for e in events[:-1])
    assert "".join(e.delta for e in events[:-1]).strip() == events[-1].final.answer
    assert events[-1].final.citations


def test_reingest_changes_nothing(stubs: Stubs, corpus: list[ingestion_pb2.IngestResult]) -> None:
    before = stats(stubs)
    again = ingest(stubs, SAMPLES)
    assert {Status.Name(r.status) for r in again} == {"STATUS_UNCHANGED"}
    after = stats(stubs)
    assert (after.chunk_count, after.document_count) == (before.chunk_count, before.document_count)


def test_update_replaces_and_delete_removes(stubs: Stubs) -> None:
    old = b"# Parking\n\nThe staff parking fee at the Lyon office is 12 euros per day.\n"
    new = b"# Parking\n\nThe staff parking fee at the Lyon office is 20 euros per day.\n"
    question = "What is the staff parking fee at the Lyon office?"
    only_this = common_pb2.MetadataFilter(document_ids=["parking-policy"])

    created = upload(stubs, "parking.md", old, document_id="parking-policy")
    assert created.status == Status.STATUS_CREATED
    assert "12 euros" in ask(stubs, question, filter=only_this).answer
    first_chunks = {r.chunk.chunk_id for r in ask(stubs, question, debug=True).debug.retrieved}

    assert upload(stubs, "parking.md", old, document_id="parking-policy").status == (
        Status.STATUS_UNCHANGED
    )
    updated = upload(stubs, "parking.md", new, document_id="parking-policy")
    assert updated.status == Status.STATUS_UPDATED
    answer = ask(stubs, question, filter=only_this, debug=True)
    assert "20 euros" in answer.answer and "12 euros" not in answer.answer
    assert all("12 euros" not in r.chunk.text for r in answer.debug.retrieved)
    assert not first_chunks & {r.chunk.chunk_id for r in answer.debug.retrieved}

    removed = delete(stubs, "parking-policy")
    assert removed.chunks_deleted == updated.document.chunk_count
    after = ask(stubs, question, debug=True)
    assert all(r.chunk.document_id != "parking-policy" for r in after.debug.retrieved)
    with pytest.raises(grpc.RpcError) as caught:
        delete(stubs, "parking-policy")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "parking-policy" in caught.value.details()


def _corrupt_pdf(tmp: Path) -> bytes:
    return make_pdf(tmp / "whole.pdf").read_bytes()[:400]


@pytest.mark.parametrize(
    ("filename", "payload", "code", "fragment"),
    [
        ("tool.exe", b"MZ binary", grpc.StatusCode.INVALID_ARGUMENT, ".exe"),
        ("notes.pdf", b"plain text pretending", grpc.StatusCode.INVALID_ARGUMENT, "PDF"),
        ("empty.txt", b"", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ("broken.pdf", "CORRUPT", grpc.StatusCode.INVALID_ARGUMENT, "broken.pdf"),
        ("big.txt", b"word " * (MAX_DOCUMENT_BYTES // 5 + 10),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
    ],
)  # fmt: skip
def test_bad_uploads_get_clear_errors_and_write_nothing(
    stubs: Stubs, tmp_path: Path, filename: str, payload: bytes | str, code: grpc.StatusCode,
    fragment: str,
) -> None:  # fmt: skip
    data = _corrupt_pdf(tmp_path) if payload == "CORRUPT" else payload
    assert isinstance(data, bytes)
    before = stats(stubs)
    with pytest.raises(grpc.RpcError) as caught:
        upload(stubs, filename, data, document_id=f"bad-{filename}")
    assert caught.value.code() == code
    assert fragment in caught.value.details()
    after = stats(stubs)
    assert (after.document_count, after.chunk_count) == (before.document_count, before.chunk_count)


def test_declared_media_type_must_match(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        upload(stubs, "page.html", b"<p>hi</p>", media_type="application/pdf")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "application/pdf" in caught.value.details()


@pytest.mark.parametrize(
    ("request_fields", "fragment"),
    [
        ({"question": "   "}, "question is empty"),
        ({"question": "why? " * 1000}, "limit is 2000"),
        ({"question": "what?", "top_k": 21}, "top_k 21 is out of range"),
    ],
)
def test_bad_questions_are_invalid_argument(
    stubs: Stubs, request_fields: dict[str, object], fragment: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stubs.query.Ask(query_pb2.AskRequest(caller=CALLER, **request_fields), timeout=10)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()


def test_unknown_document_is_not_found(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stubs.retrieval.GetDocument(
            retrieval_pb2.GetDocumentRequest(document_id="no-such-doc", tenant=DEFAULT_TENANT),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_batch_reports_each_failure_and_ingests_the_rest(stubs: Stubs, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.md").write_text("# Bees\n\nA honeybee colony overwinters as a tight cluster.\n")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "broken.pdf").write_bytes(_corrupt_pdf(tmp_path))
    results = ingest(stubs, folder, tmp_path / "missing.md")
    by_name = {r.source_uri.rsplit("/", 1)[1]: r for r in results}
    assert by_name["good.md"].status == Status.STATUS_CREATED
    for name in ("empty.txt", "broken.pdf"):
        assert by_name[name].status == Status.STATUS_FAILED
        assert by_name[name].error_code == "INVALID_ARGUMENT"
        assert name in by_name[name].message
    assert by_name["missing.md"].error_code == "NOT_FOUND"
    sources = {d.source_uri.rsplit("/", 1)[1] for d in list_documents(stubs)}
    assert "good.md" in sources
    assert not {"empty.txt", "broken.pdf", "missing.md"} & sources
    answer = ask(stubs, "How does a honeybee colony overwinter?")
    assert answer.citations[0].source_uri.endswith("/good.md")


def test_restart_keeps_the_index(
    platform: Platform, stubs: Stubs, corpus: list[ingestion_pb2.IngestResult]
) -> None:
    before = stats(stubs)
    platform.restart("retrieval")
    after = stats(stubs)
    assert (after.document_count, after.chunk_count) == (before.document_count, before.chunk_count)
    question, filename = next(iter(EXPECTED_SOURCES.items()))
    assert ask(stubs, question).citations[0].source_uri.endswith("/" + filename)
