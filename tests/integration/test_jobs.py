"""Durable imports through real processes: `ragctl import --follow`, the REST
import routes with the tenant's allowed sources, and a kill -9 of the ingestion
service in the middle of a job, after which the restarted service resumes it
and every document ends up indexed exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from ragplatform.v1 import ingestion_pb2, ingestion_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.cli.supervisor import Platform, gateway_url
from tests.integration.conftest import REPO

Job = ingestion_pb2.Job
ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:52381",
    "RAG_INGESTION_ADDR": "127.0.0.1:52382",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52383",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52384",
    "RAG_GENERATION_ADDR": "127.0.0.1:52385",
    "RAG_GATEWAY_PORT": "52397",
    "RAG_DRAIN_SECONDS": "1",
    "RAG_INGESTION_JOB_LEASE_SECONDS": "2",
}


def notes(directory: Path, count: int, topic: str) -> Path:
    directory.mkdir(parents=True)
    for number in range(count):
        (directory / f"{topic}-{number:03d}.txt").write_text(
            f"{topic.title()} note {number}: room {number} seats {number % 12 + 2} people "
            f"and has {number % 3 + 1} screens.\n" * 3
        )
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imports")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Iterator[Platform]:
    allowed = {"default": [f"{corpus.as_uri()}/rest/"]}
    env = {**ENV, "RAG_INGESTION_SOURCES": json.dumps(allowed)}
    with Platform(tmp_path_factory.mktemp("jobs"), env=env) as running:
        yield running


def ragctl(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.ragctl", *args],
        env={**os.environ, **ENV, "RAG_DATA_DIR": str(platform.settings.data_dir),
             "PYTHONPATH": str(REPO)},
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def documents(platform: Platform, tenant: str) -> list[Any]:
    with grpc.insecure_channel(platform.settings.retrieval_addr) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        reply = stub.ListDocuments(
            retrieval_pb2.ListDocumentsRequest(tenant=tenant, page_size=1000), timeout=30
        )
    return list(reply.documents)


def test_an_import_is_a_job_that_ragctl_follows(platform: Platform, corpus: Path) -> None:
    folder = notes(corpus / "cli", 12, "meeting")
    done = ragctl(platform, "--tenant", "cli", "import", str(folder), "--follow", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout.splitlines()[-1])
    assert (job["state"], job["total"], job["created"], job["failed"]) == (
        "STATE_SUCCEEDED", 12, 12, 0,
    )  # fmt: skip
    listed = ragctl(platform, "--tenant", "cli", "jobs", "list", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]
    again = ragctl(platform, "--tenant", "cli", "import", str(folder), "--follow", "--json")
    assert json.loads(again.stdout.splitlines()[-1])["unchanged"] == 12


def test_a_killed_ingestion_service_resumes_its_job(platform: Platform, corpus: Path) -> None:
    folder = notes(corpus / "bulk", 150, "office")
    request = ingestion_pb2.IngestUrisRequest(uris=[folder.as_uri()], tenant="bulk")
    with grpc.insecure_channel(platform.settings.ingestion_addr) as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        job = stub.StartImport(ingestion_pb2.StartImportRequest(request=request), timeout=30).job

        def current() -> Any:
            return stub.GetJob(
                ingestion_pb2.GetJobRequest(job_id=job.id, tenant="bulk"), timeout=30
            ).job

        deadline = time.monotonic() + 120
        while current().created < 10:
            assert time.monotonic() < deadline, current()
            time.sleep(0.05)
        os.kill(platform.pids()["ingestion"], signal.SIGKILL)
    indexed_before = len(documents(platform, "bulk"))
    assert 10 <= indexed_before < 150, "killed in the middle of the job"

    platform.restart("ingestion")
    with grpc.insecure_channel(platform.settings.ingestion_addr) as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        deadline = time.monotonic() + 240
        while (finished := current()).state != Job.STATE_SUCCEEDED:
            assert finished.state in (Job.STATE_PENDING, Job.STATE_RUNNING), finished
            assert time.monotonic() < deadline, finished
            time.sleep(0.2)
    assert finished.attempts == 2 and finished.failed == 0
    assert finished.created + finished.unchanged == 150  # the second run re-embeds only the rest
    assert finished.unchanged >= indexed_before
    indexed = documents(platform, "bulk")
    assert len(indexed) == 150 and len({d.document_id for d in indexed}) == 150


def test_rest_imports_come_only_from_the_tenants_sources(platform: Platform, corpus: Path) -> None:
    folder = notes(corpus / "rest", 5, "parking")
    url = gateway_url(platform.settings)
    with httpx.Client(base_url=url, timeout=60) as http:
        started = http.post("/v1/imports", json={"uris": [folder.as_uri()]})
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        deadline = time.monotonic() + 120
        while (job := http.get(location).json())["state"] != "STATE_SUCCEEDED":
            assert job["state"] in ("STATE_PENDING", "STATE_RUNNING"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["created"] == 5
        outside = http.post("/v1/imports", json={"uris": [(corpus / "bulk").as_uri()]})
        assert outside.status_code == 403, outside.text
        assert "may not import from there" in outside.json()["error"]["message"]
        assert http.get("/v1/jobs/0123abcd").status_code == 404
