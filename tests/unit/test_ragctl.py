"""ragctl without a platform: argument parsing, output formatting, error lines, and
the commands' rendering against fake gRPC servers written here.

The fakes (FakeQuery, FakeIngestion, FakeRetrieval) are test doubles of our own
services that return fixed replies; they check how ragctl converts arguments to
requests and replies to output, nothing of the services' behaviour. The
supervisor tests at the end start only the gateway as a real process (it needs
no model and starts in about a second); the end-to-end test of `ragctl up` with
every service lives elsewhere.
"""

import io
import json
import os
import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from rich.console import Console, Group

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.cli import ragctl
from services.cli.supervisor import (
    ALL,
    Platform,
    StartupError,
    check_health,
    gateway_url,
    port_in_use,
    read_log_tail,
    settings_from_env,
)
from services.runtime.settings import PlatformSettings
from tests.emulators import free_port

# --------------------------------------------------------------------------- parsing


def parse(*argv: str) -> Any:
    return ragctl.build_parser().parse_args(argv)


def test_timeout_is_accepted_before_or_after_the_command() -> None:
    assert parse("--timeout", "5", "ask", "q").timeout == 5.0
    assert parse("ask", "q", "--timeout", "2.5").timeout == 2.5
    assert parse("docs", "list", "--timeout", "3").timeout == 3.0
    assert parse("ask", "q").timeout is None


def test_tenant_is_accepted_before_or_after_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAG_TENANT", raising=False)
    assert parse("--tenant", "acme", "ask", "q").tenant == "acme"
    assert parse("docs", "delete", "d", "--tenant", "acme").tenant == "acme"
    assert parse("ask", "q").tenant is None, "resolved by main: --tenant, RAG_TENANT, default"


@pytest.mark.parametrize(
    ("argv", "env", "tenant"),
    [
        (["ask", "q"], None, "default"),
        (["ask", "q"], "acme", "acme"),
        (["--tenant", "globex", "ask", "q"], "acme", "globex"),
        (["ingest", "x"], None, "default"),
        (["docs", "list"], None, "default"),
        (["eval", "answers", "d"], None, "eval"),
        (["eval", "retrieval", "d"], None, "eval"),
        (["eval", "answers", "d"], "acme", "acme"),
        (["eval", "retrieval", "d", "--tenant", "t1"], "acme", "t1"),
        (["status"], "acme", None),
        (["eval", "router", "f"], "acme", None),
    ],
)
def test_resolve_tenant(
    argv: list[str], env: str | None, tenant: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is None:
        monkeypatch.delenv("RAG_TENANT", raising=False)
    else:
        monkeypatch.setenv("RAG_TENANT", env)
    args = parse(*argv)
    if not hasattr(args, "tenant"):
        args.tenant = None
    ragctl.resolve_tenant(args)
    assert args.tenant == tenant


def test_filters_and_labels_options() -> None:
    ingest = parse("ingest", "a", "--tag", "policy", "--tag", "hr", "--access-label", "hr")
    assert (ingest.tags, ingest.access_labels) == (["policy", "hr"], ["hr"])
    assert (parse("ingest", "a").tags, parse("ingest", "a").access_labels) == ([], [])
    ask = parse("ask", "q", "--tag", "t", "--since", "2024-05-01", "--until", "2024-05-31")
    assert ask.tags == ["t"]
    assert ask.since == 1_714_521_600  # 2024-05-01T00:00:00Z
    assert ask.until == 1_717_199_999  # 2024-05-31T23:59:59Z: the whole last day
    assert parse("ask", "q", "--since", "1700000000").since == 1_700_000_000
    plain = parse("ask", "q")
    assert (plain.since, plain.until, plain.tags, plain.access_labels) == (None, None, [], [])


def test_ask_options() -> None:
    args = parse("ask", "what is rag?", "--top-k", "7", "--json", "--debug", "--stream")
    assert args.handler is ragctl.cmd_ask
    assert (args.question, args.top_k, args.json, args.debug, args.stream) == (
        "what is rag?",
        7,
        True,
        True,
        True,
    )
    assert parse("ask", "q").top_k == 0


def test_commands_and_their_defaults() -> None:
    up = parse("up")
    assert (up.handler, up.data_dir, up.detach) == (ragctl.cmd_up, None, False)
    assert parse("up", "--data-dir", "/tmp/x", "--detach").data_dir == Path("/tmp/x")
    assert parse("down", "--data-dir", "d").handler is ragctl.cmd_down
    assert parse("status", "--json").json is True
    ingest = parse("ingest", "a.pdf", "docs/", "--json")
    assert (ingest.paths, ingest.json) == (["a.pdf", "docs/"], True)
    assert parse("docs", "list").handler is ragctl.cmd_docs_list
    delete = parse("docs", "delete", "doc-1")
    assert (delete.handler, delete.document_id) == (ragctl.cmd_docs_delete, "doc-1")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["ask"],
        ["ask", "q", "--top-k", "-1"],
        ["ask", "q", "--top-k", "many"],
        ["ask", "q", "--timeout", "0"],
        ["ingest"],
        ["docs"],
        ["docs", "delete"],
        ["status", "--verbose"],
        ["--tenant", "two words", "ask", "q"],
        ["ask", "q", "--tenant", ""],
        ["ask", "q", "--since", "yesterday"],
        ["ingest", "a", "--tag", " padded"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ragctl.main(argv)
    assert exit_info.value.code == 2
    assert "usage: ragctl" in capsys.readouterr().err


# --------------------------------------------------------------------------- formatting


def render(*renderables: Any) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None, soft_wrap=True)
    console.print(Group(*renderables))
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def test_to_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ragctl.to_uri("a b.pdf") == (tmp_path / "a b.pdf").as_uri()
    assert ragctl.to_uri("a b.pdf").startswith("file:///")
    assert "%20" in ragctl.to_uri("a b.pdf")
    assert ragctl.to_uri("/abs/x.md") == "file:///abs/x.md"
    assert ragctl.to_uri("file:///already/uri.md") == "file:///already/uri.md"
    assert ragctl.to_uri("gs://bucket/o.pdf") == "gs://bucket/o.pdf"


def test_ingest_summary() -> None:
    assert ragctl.ingest_summary({"created": 2, "unchanged": 1, "failed": 1}) == (
        "4 documents: 2 created, 0 updated, 1 unchanged, 1 failed"
    )
    assert ragctl.ingest_summary({"updated": 1}) == (
        "1 document: 0 created, 1 updated, 0 unchanged, 0 failed"
    )


def test_result_status_and_failure_line() -> None:
    failed = ingestion_pb2.IngestResult(
        status=ingestion_pb2.IngestResult.STATUS_FAILED,
        error_code="INVALID_ARGUMENT",
        message="not a valid PDF",
        source_uri="file:///d/bad.pdf",
    )
    assert ragctl.result_status(failed) == "failed"
    assert ragctl.result_status(ingestion_pb2.IngestResult()) == "unspecified"
    assert ragctl.failure_line(failed).plain == (
        "failed file:///d/bad.pdf: INVALID_ARGUMENT: not a valid PDF"
    )


def _answer(**extra: Any) -> query_pb2.AskResponse:
    return query_pb2.AskResponse(
        answer="Paris is the capital of France [1].",
        citations=[
            query_pb2.Citation(
                number=1,
                document_id="paris",
                title="Paris",
                source_uri="file:///corpus/paris.pdf",
                score=0.8123,
                page=3,
                section="Geography",
            ),
            query_pb2.Citation(number=2, document_id="rome", source_uri="file:///rome.md"),
        ],
        backend="extractive",
        model="lexical-v1",
        timings=[
            common_pb2.StageTiming(stage="embed", seconds=0.012),
            common_pb2.StageTiming(stage="generate", seconds=0.0404),
        ],
        request_id="r-42",
        **extra,
    )


def test_format_citation() -> None:
    first, second = _answer().citations
    assert ragctl.format_citation(first).plain == (
        "[1] Paris — file:///corpus/paris.pdf · p. 3 · § Geography · score 0.812"
    )
    assert ragctl.format_citation(second).plain == "[2] rome — file:///rome.md · score 0.000"


def test_format_timings_is_dim() -> None:
    line = ragctl.format_timings(_answer())
    assert line.plain == "embed 12 ms · generate 40 ms · extractive/lexical-v1 · request r-42"
    assert str(line.style) == "dim"


def test_render_answer_text_sources_and_timings() -> None:
    text = render(*ragctl.render_answer(_answer()))
    lines = text.splitlines()
    assert lines[0] == "Paris is the capital of France [1]."
    assert "Sources" in lines
    assert lines.index("Sources") < next(i for i, ln in enumerate(lines) if ln.startswith("[1]"))
    assert lines[-1].startswith("embed 12 ms")
    streamed = render(*ragctl.render_answer(_answer(), include_text=False))
    assert "capital" not in streamed.splitlines()[0]


def test_render_answer_declined_and_debug() -> None:
    response = _answer(declined=True)
    response.debug.retrieved.add(
        chunk=common_pb2.Chunk(title="Paris", ordinal=2, text="Paris  is\nbig."), score=0.5
    )
    response.debug.selection.add(source_number=1, text="Paris is big.", score=0.9)
    text = render(*ragctl.render_answer(response, debug=True))
    assert "(the sources do not answer this question)" in text
    assert "1. Paris #2 score 0.500" in text
    assert "Paris is big." in text
    assert "[1] Paris is big. (0.900)" in text
    without = render(*ragctl.render_answer(response, debug=False))
    assert "Retrieved" not in without


def test_message_to_dict_uses_proto_field_names_and_defaults() -> None:
    data = ragctl.message_to_dict(_answer())
    assert data["request_id"] == "r-42"
    assert data["declined"] is False
    assert data["citations"][1]["page"] == 0


def test_status_rows_and_table() -> None:
    settings = PlatformSettings(query_addr="127.0.0.1:7001", gateway_port=9000)
    rows = ragctl.status_rows(settings, {"query": "SERVING", "gateway": "UNREACHABLE"})
    assert rows == [
        {
            "name": "query",
            "address": "127.0.0.1:7001",
            "health": "SERVING",
            "metrics": "http://127.0.0.1:8001/metrics",
        },
        {
            "name": "gateway",
            "address": "http://127.0.0.1:9000",
            "health": "UNREACHABLE",
            "metrics": "http://127.0.0.1:10000/metrics",
        },
    ]
    unmetered = PlatformSettings(metrics_enabled=False)
    assert ragctl.status_rows(unmetered, {"query": "SERVING"})[0]["metrics"] == ""
    table = render(ragctl.health_table(rows))
    assert "127.0.0.1:7001" in table and "UNREACHABLE" in table


def test_documents_table_never_shortens_ids() -> None:
    doc = common_pb2.DocumentInfo(
        document_id="doc_8afe5b4e4759d06862d6",
        title="A title long enough to need wrapping in a narrow terminal",
        source_uri="file:///a/very/long/path/to/some/document/in/a/folder.pdf",
        size_bytes=3 * 1024 * 1024,
        chunk_count=12,
        indexed_at_unix=1_700_000_000,
    )
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(ragctl.documents_table([doc]))
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert "doc_8afe5b4e4759d06862d6" in output
    assert "3.0 MiB" in output
    assert "2023-11-14" in output


def test_human_size() -> None:
    assert ragctl.human_size(512) == "512 B"
    assert ragctl.human_size(2048) == "2.0 KiB"
    assert ragctl.human_size(5 * 1024**3) == "5.0 GiB"


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_error_line() -> None:
    err = _FakeRpcError(grpc.StatusCode.NOT_FOUND, "document 'x' not found")
    assert ragctl.error_line(err) == "error: NOT_FOUND: document 'x' not found"
    assert ragctl.error_line(err, "query service at h:1") == (
        "error: NOT_FOUND: document 'x' not found"
    )
    down = _FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    assert ragctl.error_line(down, "query service at h:1") == (
        "error: UNAVAILABLE: query service at h:1: failed to connect to all addresses"
    )
    relayed = _FakeRpcError(grpc.StatusCode.UNAVAILABLE, "embedding service at e:2: unavailable")
    assert ragctl.error_line(relayed, "query service at h:1") == (
        "error: UNAVAILABLE: embedding service at e:2: unavailable"
    )
    late = _FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert ragctl.error_line(late, "q at h:1") == (
        "error: DEADLINE_EXCEEDED: q at h:1: Deadline Exceeded"
    )


# --------------------------------------------------------------------------- commands


class FakeQuery(query_pb2_grpc.QueryServiceServicer):
    """Fake QueryService: a fixed answer; the question `fail` is INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def Ask(self, request: Any, context: Any) -> query_pb2.AskResponse:
        self.requests.append(request)
        if request.question == "fail":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "question is bad")
        return _answer()

    def AskStream(self, request: Any, context: Any) -> Iterator[query_pb2.AskStreamResponse]:
        self.requests.append(request)
        yield query_pb2.AskStreamResponse(delta="Paris is ")
        yield query_pb2.AskStreamResponse(delta="the capital of France [1].")
        yield query_pb2.AskStreamResponse(final=_answer())


class FakeIngestion(ingestion_pb2_grpc.IngestionServiceServicer):
    """Fake IngestionService: every URI is created except those ending in .bad."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self.requests: list[Any] = []

    def IngestUris(self, request: Any, context: Any) -> Iterator[ingestion_pb2.IngestUrisResponse]:
        self.requests.append(request)
        self.uris = list(request.uris)
        yield ingestion_pb2.IngestUrisResponse(
            plan=ingestion_pb2.IngestPlan(document_count=len(request.uris))
        )
        for uri in request.uris:
            if uri.endswith(".bad"):
                result = ingestion_pb2.IngestResult(
                    status=ingestion_pb2.IngestResult.STATUS_FAILED,
                    error_code="INVALID_ARGUMENT",
                    message="unknown file type",
                    source_uri=uri,
                )
            else:
                result = ingestion_pb2.IngestResult(
                    status=ingestion_pb2.IngestResult.STATUS_CREATED,
                    document=common_pb2.DocumentInfo(document_id=uri.rsplit("/", 1)[1]),
                    source_uri=uri,
                )
            yield ingestion_pb2.IngestUrisResponse(result=result)

    def DeleteDocument(self, request: Any, context: Any) -> ingestion_pb2.DeleteDocumentResponse:
        self.requests.append(request)
        if request.document_id != "doc-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"document {request.document_id!r} not found")
        return ingestion_pb2.DeleteDocumentResponse(chunks_deleted=3)


class FakeRetrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    """Fake RetrievalService: 1 500 documents, so listing needs two pages."""

    def __init__(self) -> None:
        self.tenants: list[str] = []

    def ListDocuments(self, request: Any, context: Any) -> retrieval_pb2.ListDocumentsResponse:
        self.tenants.append(request.tenant)
        start = int(request.page_token or 0)
        ids = [f"doc-{i:04d}" for i in range(1500)][start : start + request.page_size]
        end = start + request.page_size
        return retrieval_pb2.ListDocumentsResponse(
            documents=[common_pb2.DocumentInfo(document_id=i, size_bytes=2**33) for i in ids],
            next_page_token=str(end) if end < 1500 else "",
        )


class Fakes:
    def __init__(self) -> None:
        self.query = FakeQuery()
        self.ingestion = FakeIngestion()
        self.retrieval = FakeRetrieval()


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[Fakes, str]]:
    """A thread-pool gRPC server with the fakes and a SERVING health service."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fakes = Fakes()
    query_pb2_grpc.add_QueryServiceServicer_to_server(fakes.query, server)
    ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(fakes.ingestion, server)
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(fakes.retrieval, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fakes, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def fakes(fake_server: tuple[Fakes, str], monkeypatch: pytest.MonkeyPatch) -> Fakes:
    """Points RAG_* addresses of query, ingestion and retrieval at the fakes."""
    found, address = fake_server
    for name in ("query", "ingestion", "retrieval"):
        monkeypatch.setenv(f"RAG_{name.upper()}_ADDR", address)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("RAG_TENANT", raising=False)
    return found


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ragctl.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ask_prints_answer_sources_and_timings(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "ask", "capital?", "--top-k", "4")
    assert code == 0
    assert out.startswith("Paris is the capital of France [1].\n")
    assert "[1] Paris — file:///corpus/paris.pdf · p. 3 · § Geography · score 0.812" in out
    assert "embed 12 ms" in out
    sent = fakes.query.requests[-1]
    assert (sent.question, sent.top_k) == ("capital?", 4)
    assert sent.caller == common_pb2.Caller(tenant="default")
    assert sent.filter == common_pb2.MetadataFilter(), "no filter option: no restriction"


def test_ask_sends_tenant_labels_and_filters(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAG_TENANT", "acme")
    argv = ["ask", "q", "--access-label", "hr", "--tag", "policy", "--until", "2024-01-01"]
    assert run(capsys, *argv)[0] == 0
    sent = fakes.query.requests[-1]
    assert sent.caller == common_pb2.Caller(tenant="acme", access_labels=["hr"])
    assert list(sent.filter.tags) == ["policy"]
    assert not sent.filter.HasField("date_from_unix")
    assert sent.filter.date_to_unix == 1_704_153_599
    assert run(capsys, "--tenant", "globex", "ask", "q", "--stream")[0] == 0
    assert fakes.query.requests[-1].caller.tenant == "globex"


def test_ask_json_prints_the_ask_response(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ask", "capital?", "--json", "--debug")
    assert code == 0
    data = json.loads(out)
    assert data["answer"] == "Paris is the capital of France [1]."
    assert data["citations"][0]["source_uri"] == "file:///corpus/paris.pdf"
    assert fakes.query.requests[-1].debug is True


def test_ask_stream_prints_deltas_then_sources(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "ask", "capital?", "--stream")
    assert code == 0
    assert out.startswith("Paris is the capital of France [1].\n")
    assert out.count("capital of France") == 1
    assert "[1] Paris" in out
    code, out, _ = run(capsys, "ask", "capital?", "--stream", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert [next(iter(e)) for e in events] == ["delta", "delta", "final"]


def test_grpc_error_is_one_line_exit_1(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "ask", "fail")
    assert code == 1
    assert out == ""
    assert err == "error: INVALID_ARGUMENT: question is bad\n"
    code, _, err = run(capsys, "docs", "delete", "nope")
    assert code == 1
    assert err == "error: NOT_FOUND: document 'nope' not found\n"


def test_unreachable_service_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAG_QUERY_ADDR", address)
    code, _, err = run(capsys, "--timeout", "5", "ask", "q")
    assert code == 1
    assert err.startswith(f"error: UNAVAILABLE: query service at {address}: ")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_ingest_sends_absolute_uris_and_summarises(
    fakes: Fakes,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "ingest", "a.md", "sub/b.md")
    assert code == 0
    assert fakes.ingestion.uris == [(tmp_path / "a.md").as_uri(), (tmp_path / "sub/b.md").as_uri()]
    assert "2 documents: 2 created, 0 updated, 0 unchanged, 0 failed" in out
    sent = fakes.ingestion.requests[-1]
    assert (sent.tenant, list(sent.tags), list(sent.access_labels)) == ("default", [], [])


def test_ingest_sends_tenant_tags_and_access_labels(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ingest", "/d/a.md", "--tenant", "acme", "--tag", "policy", "--access-label", "hr"]
    assert run(capsys, *argv)[0] == 0
    sent = fakes.ingestion.requests[-1]
    assert (sent.tenant, list(sent.tags), list(sent.access_labels)) == ("acme", ["policy"], ["hr"])


def test_ingest_failure_is_printed_and_exit_1(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "ingest", "/d/ok.md", "/d/x.bad")
    assert code == 1
    assert "failed file:///d/x.bad: INVALID_ARGUMENT: unknown file type" in out
    assert "2 documents: 1 created, 0 updated, 0 unchanged, 1 failed" in out


def test_ingest_json_prints_one_object_per_result(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "ingest", "/d/ok.md", "/d/x.bad", "--json")
    assert code == 1
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in results] == ["STATUS_CREATED", "STATUS_FAILED"]
    assert results[1]["message"] == "unknown file type"


def test_docs_list_follows_pages(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "docs", "list", "--json")
    assert code == 0
    documents = json.loads(out)
    assert len(documents) == 1500
    assert documents[-1]["document_id"] == "doc-1499"
    code, out, _ = run(capsys, "docs", "list")
    assert "doc-1499" in out and "8.0 GiB" in out
    assert set(fakes.retrieval.tenants) == {"default"}
    run(capsys, "--tenant", "acme", "docs", "list", "--json")
    assert fakes.retrieval.tenants[-1] == "acme"


def test_docs_delete(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "docs", "delete", "doc-1", "--tenant", "acme")
    assert (code, out) == (0, "deleted doc-1 (3 chunks)\n")
    sent = fakes.ingestion.requests[-1]
    assert (sent.document_id, sent.tenant) == ("doc-1", "acme")


def test_status_json_and_exit_code(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("embedding", "generation"):
        monkeypatch.setenv(f"RAG_{name.upper()}_ADDR", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("RAG_GATEWAY_PORT", str(free_port()))
    code, out, _ = run(capsys, "status", "--json", "--timeout", "2")
    assert code == 1
    rows = json.loads(out)
    assert [row["name"] for row in rows] == list(ALL)
    health = {row["name"]: row["health"] for row in rows}
    assert health["query"] == health["ingestion"] == health["retrieval"] == "SERVING"
    assert health["embedding"] == health["gateway"] == "UNREACHABLE"
    assert rows[-1]["address"].startswith("http://127.0.0.1:")


# --------------------------------------------------------------------------- supervisor


def test_settings_from_env_and_gateway_url() -> None:
    settings = settings_from_env({"RAG_QUERY_ADDR": "127.0.0.1:6001", "RAG_GATEWAY_PORT": "9001"})
    assert settings.query_addr == "127.0.0.1:6001"
    assert gateway_url(settings) == "http://127.0.0.1:9001"
    assert gateway_url(PlatformSettings(listen_host="0.0.0.0", gateway_port=1)) == (
        "http://127.0.0.1:1"
    )


def test_port_in_use_and_log_tail(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert port_in_use("127.0.0.1", held.getsockname()[1])
    assert not port_in_use("127.0.0.1", free_port())
    log = tmp_path / "x.log"
    log.write_text("old run\n" + "".join(f"line {i}\n" for i in range(100)))
    assert read_log_tail(log, 2) == "line 98\nline 99"
    assert read_log_tail(log, 100, since=len("old run\n")).startswith("line 0")
    assert read_log_tail(tmp_path / "missing.log") == ""


def test_platform_rejects_unknown_services(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown services"):
        Platform(tmp_path, services=("gateway", "frontend"))


@pytest.fixture
def gateway_env() -> dict[str, str]:
    """Non-default ports so that a platform running on this machine is not disturbed."""
    return {
        "RAG_GATEWAY_PORT": str(free_port()),
        "RAG_QUERY_ADDR": f"127.0.0.1:{free_port()}",
        "RAG_INGESTION_ADDR": f"127.0.0.1:{free_port()}",
        "RAG_RETRIEVAL_ADDR": f"127.0.0.1:{free_port()}",
    }


@pytest.mark.integration
def test_platform_starts_restarts_and_stops_the_gateway(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    platform = Platform(tmp_path / "data", gateway_env, services=("gateway",))
    seen: list[dict[str, str]] = []
    with platform:
        pass  # __enter__ starts, __exit__ stops
    platform.start(60, on_progress=seen.append)
    try:
        assert seen[-1] == {"gateway": "SERVING"}
        assert platform.health() == {"gateway": "SERVING"}
        url = gateway_url(platform.settings)
        assert url.endswith(gateway_env["RAG_GATEWAY_PORT"])
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        pid = platform.pids()["gateway"]
        assert platform.pid_path("gateway").read_text().strip() == str(pid)
        assert "starting gateway" in platform.log_path("gateway").read_text()
        platform.restart("gateway", 60)
        assert platform.pids()["gateway"] != pid
        assert platform.health() == {"gateway": "SERVING"}
        assert platform.exited() == {}
    finally:
        platform.stop()
    assert not platform.pid_path("gateway").exists()
    assert check_health(platform.settings, ["gateway"]) == {"gateway": "UNREACHABLE"}


@pytest.mark.integration
def test_platform_start_failure_carries_the_log_tail(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    platform = Platform(tmp_path, {**gateway_env, "RAG_LOG_LEVEL": "BOGUS"}, services=["gateway"])
    with pytest.raises(StartupError) as failure:
        platform.start(60)
    assert failure.value.service == "gateway"
    assert "exited with code" in failure.value.reason
    assert "Unknown level: 'BOGUS'" in failure.value.log_tail
    assert platform.pids() == {}
    assert not platform.pid_path("gateway").exists()


@pytest.mark.integration
def test_platform_refuses_a_port_in_use(tmp_path: Path, gateway_env: dict[str, str]) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", int(gateway_env["RAG_GATEWAY_PORT"])))
        held.listen()
        with pytest.raises(StartupError, match="already in use"):
            Platform(tmp_path, gateway_env, services=["gateway"]).start(10)


@pytest.mark.integration
def test_detached_processes_are_stopped_from_pid_files(
    tmp_path: Path, gateway_env: dict[str, str]
) -> None:
    started = Platform(tmp_path, gateway_env, services=["gateway"])
    started.start(60)
    pid = started.pids()["gateway"]
    try:
        with pytest.raises(StartupError, match="already running"):
            Platform(tmp_path, gateway_env, services=["gateway"]).start(10)
        adopted = Platform.from_pid_files(tmp_path, gateway_env)
        assert adopted.pids() == {"gateway": pid}
        adopted.stop()
        assert started.exited() != {}
        assert not started.pid_path("gateway").exists()
    finally:
        started.stop()
    (tmp_path / "run" / "query.pid").write_text(f"{os.getpid()}\n")  # not a query service
    assert Platform.from_pid_files(tmp_path, gateway_env).pids() == {}
    assert not (tmp_path / "run" / "query.pid").exists()
