"""The platform's two front doors, end to end: the REST gateway and ragctl.

Both run against the real services started by the session's Platform, so these
tests see exactly what an external app or an operator would.
"""

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from services.cli.supervisor import Platform, gateway_url
from tests.integration.conftest import TEST_ENV, ragctl

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(platform: Platform) -> httpx.Client:
    return httpx.Client(base_url=gateway_url(platform.settings), timeout=60)


def test_rest_upload_ask_list_delete(http: httpx.Client) -> None:
    body = b"# Ferries\n\nThe night ferry from Marseille to Ajaccio leaves at 19:30 every day.\n"
    created = http.post(
        "/v1/documents",
        files={"file": ("ferries.md", body, "text/markdown")},
        data={"document_id": "rest-ferries"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "STATUS_CREATED"
    assert created.json()["document"]["tenant"] == "default", "no API keys: the default tenant"

    again = http.post("/v1/documents", files={"file": ("ferries.md", body)},
                      data={"document_id": "rest-ferries"})  # fmt: skip
    assert again.status_code == 200
    assert again.json()["status"] == "STATUS_UNCHANGED"

    answer = http.post(
        "/v1/ask", json={"question": "When does the night ferry to Ajaccio leave?", "top_k": 3}
    )
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert "19:30" in payload["answer"]
    assert payload["citations"][0]["document_id"] == "rest-ferries"

    listed = http.get("/v1/documents", params={"page_size": 1000}).json()
    assert "rest-ferries" in {d["document_id"] for d in listed["documents"]}
    assert http.get("/v1/documents/rest-ferries").json()["document_id"] == "rest-ferries"

    deleted = http.delete("/v1/documents/rest-ferries")
    assert deleted.status_code == 200
    assert deleted.json()["chunks_deleted"] >= 1
    missing = http.delete("/v1/documents/rest-ferries")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    assert "rest-ferries" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"json": {"question": ""}}, 400, "INVALID_ARGUMENT"),
        ({"json": {"question": "why?", "top_k": 500}}, 400, "INVALID_ARGUMENT"),
        ({"json": {"top_k": 3}}, 422, "INVALID_ARGUMENT"),
    ],
)
def test_rest_bad_questions_get_json_errors(
    http: httpx.Client, request_kwargs: dict[str, object], status: int, code: str
) -> None:
    response = http.post("/v1/ask", **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_rest_bad_upload_is_400_naming_the_file(http: httpx.Client) -> None:
    response = http.post("/v1/documents", files={"file": ("virus.exe", b"MZ")})
    assert response.status_code == 400
    assert ".exe" in response.json()["error"]["message"]


def test_rest_stream_is_server_sent_events(http: httpx.Client) -> None:
    http.post("/v1/documents", files={"file": ("tides.md", b"# Tides\n\nSpring tides occur "
              b"twice a month, near the new moon and the full moon.\n")})  # fmt: skip
    with http.stream(
        "POST", "/v1/ask/stream", json={"question": "When do spring tides occur?"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [block for block in text.split("\n\n") if block.strip()]
    assert events[0].startswith("event: delta")
    assert events[-1].startswith("event: answer")
    final = json.loads(events[-1].split("data: ", 1)[1])
    assert "new moon" in final["answer"]


def test_rest_health_and_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    spec = http.get("/openapi.json").json()
    assert {"/v1/ask", "/v1/documents", "/v1/documents/{document_id}"} <= set(spec["paths"])


def test_ragctl_status_ingest_ask_docs(platform: Platform, tmp_path: Path) -> None:
    status = ragctl("status", "--json")
    assert status.returncode == 0, status.stderr
    services = {s["name"]: s for s in json.loads(status.stdout)}
    assert set(services) == {"embedding", "retrieval", "generation", "ingestion", "query",
                             "gateway"}  # fmt: skip
    assert services["query"]["address"] == TEST_ENV["RAG_QUERY_ADDR"]
    assert {s["health"] for s in services.values()} == {"SERVING"}

    doc = tmp_path / "volcano.txt"
    doc.write_text("Volcano facts\n\nMauna Loa last erupted in November 2022.\n")
    ingested = ragctl("ingest", str(doc), "--json")
    assert ingested.returncode == 0, ingested.stderr
    result = json.loads(ingested.stdout.splitlines()[-1])
    assert result["status"] == "STATUS_CREATED"

    asked = ragctl("ask", "When did Mauna Loa last erupt?", "--json")
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert "November 2022" in answer["answer"]
    assert answer["citations"][0]["source_uri"] == doc.resolve().as_uri()

    plain = ragctl("ask", "When did Mauna Loa last erupt?")
    assert "November 2022" in plain.stdout and "volcano.txt" in plain.stdout

    listed = ragctl("docs", "list", "--json")
    ids = {d["document_id"] for d in json.loads(listed.stdout)}
    document_id = result["document"]["document_id"]
    assert document_id in ids
    assert ragctl("docs", "delete", document_id).returncode == 0
    gone = ragctl("docs", "delete", document_id)
    assert gone.returncode == 1
    assert "NOT_FOUND" in gone.stderr + gone.stdout


def test_ragctl_reports_failures_with_exit_code(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_bytes(b"")
    failed = ragctl("ingest", str(tmp_path / "empty.md"))
    assert failed.returncode == 1
    assert "empty.md" in failed.stdout + failed.stderr


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    """A service stops on SIGTERM within its grace period, with exit status 0."""
    env = {**os.environ, "RAG_GENERATION_ADDR": "127.0.0.1:52199", "RAG_DRAIN_SECONDS": "1",
           "RAG_DATA_DIR": str(tmp_path)}  # fmt: skip
    with Platform(tmp_path, env=env, services=["generation"]) as single:
        pid = single.pids()["generation"]
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
