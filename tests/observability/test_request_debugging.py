"""`ragctl debug` walks the checklist of a real request, found by request id or
trace id; the services' log lines of that request carry its trace id."""

import json

import grpc
import httpx
import pytest

from ragplatform.v1 import debug_pb2, debug_pb2_grpc, query_pb2, query_pb2_grpc
from services.cli import ragctl
from services.cli.supervisor import Platform
from tests.observability.conftest import CALLER, PORTS

QUESTION = "How many days of paid annual leave do full-time employees get?"


@pytest.fixture
def answer(ingested: Platform, monkeypatch: pytest.MonkeyPatch) -> query_pb2.AskResponse:
    for key, value in PORTS.items():
        monkeypatch.setenv(key, value)
    with grpc.insecure_channel(ingested.settings.query_addr) as channel:
        reply: query_pb2.AskResponse = query_pb2_grpc.QueryServiceStub(channel).Ask(
            # A fresh answer each time: a cached one has no retrieval for the record.
            query_pb2.AskRequest(question=QUESTION, caller=CALLER, bypass_cache=True),
            timeout=60,
        )
    assert not reply.HasField("debug"), "the caller did not ask for the debug view"
    return reply


def test_debug_by_request_id_shows_the_checklist(
    answer: query_pb2.AskResponse, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ragctl.main(["debug", answer.request_id, "--expect", "leave-policy.md"]) == 0
    out = capsys.readouterr().out
    for section in ("1. retrieval", "2. expected document", "3. generation", "4. answer"):
        assert section in out
    assert "5. grounding" in out and "findings" in out
    assert QUESTION in out
    assert "leave-policy.md" in out
    assert f"tenant: {CALLER.tenant}" in out, "the record keeps whom the request acted for"


def test_debug_by_trace_id_as_json(
    answer: query_pb2.AskResponse,
    observed_platform: Platform,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with grpc.insecure_channel(observed_platform.settings.query_addr) as channel:
        record = (
            debug_pb2_grpc.RequestDebugServiceStub(channel)
            .GetRequestRecord(
                debug_pb2.GetRequestRecordRequest(request_id=answer.request_id, caller=CALLER)
            )
            .record
        )
    assert len(record.trace_id) == 32, "tracing is on: the record knows its trace"
    code = ragctl.main(["debug", record.trace_id, "--expect", "no-such-document", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["record"]["request_id"] == answer.request_id
    assert data["record"]["response"]["debug"]["retrieved"], "the debug view was recorded"
    assert data["expected"]["indexed"] is False
    assert "no-such-document is not indexed" in data["findings"][0]
    log = observed_platform.log_path("query").read_text()
    assert QUESTION not in log, "questions stay out of logs unless RAG_LOG_CONTENT"


def test_debug_of_an_unknown_request_fails(
    answer: query_pb2.AskResponse, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ragctl.main(["debug", "0" * 32]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_gateway_log_lines_carry_trace_ids(observed_platform: Platform) -> None:
    reply = httpx.get(f"{observed_platform.address('gateway')}/v1/documents", timeout=30)
    assert reply.status_code == 200
    lines = [
        json.loads(line)
        for line in observed_platform.log_path("gateway").read_text().splitlines()
        if line.startswith("{")
    ]
    requests = [line for line in lines if "/v1/" in line.get("message", "")]
    assert requests, "the gateway logged its requests"
    assert all(len(line.get("trace_id", "")) == 32 for line in requests), requests[:3]
