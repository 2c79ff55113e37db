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


def kill_during_a_job(platform: Platform, folder: Path, tenant: str, count: int) -> Any:
    """Start an import of `folder`, kill -9 the ingestion service once 10 documents
    are indexed, restart it, and return the job once it has succeeded."""
    request = ingestion_pb2.IngestUrisRequest(uris=[folder.as_uri()], tenant=tenant)
    with grpc.insecure_channel(platform.settings.ingestion_addr) as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        job = stub.StartImport(ingestion_pb2.StartImportRequest(request=request), timeout=30).job
        get = ingestion_pb2.GetJobRequest(job_id=job.id, tenant=tenant)
        deadline = time.monotonic() + 120
        while stub.GetJob(get, timeout=30).job.created < 10:
            assert time.monotonic() < deadline, stub.GetJob(get, timeout=30).job
            time.sleep(0.05)
        os.kill(platform.pids()["ingestion"], signal.SIGKILL)
    indexed_before = len(documents(platform, tenant))
    assert 10 <= indexed_before < count, "killed in the middle of the job"
    platform.restart("ingestion")
    with grpc.insecure_channel(platform.settings.ingestion_addr) as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        deadline = time.monotonic() + 60 + count
        while (finished := stub.GetJob(get, timeout=30).job).state != Job.STATE_SUCCEEDED:
            assert finished.state in (Job.STATE_PENDING, Job.STATE_RUNNING), finished
            assert time.monotonic() < deadline, finished
            time.sleep(0.2)
    assert finished.attempts == 2 and finished.failed == 0
    assert finished.created + finished.unchanged == count  # the rest, never the done ones
    assert finished.unchanged >= indexed_before
    return finished


def chunk_counts(platform: Platform, tenant: str) -> dict[str, int]:
    return {d.document_id: d.chunk_count for d in documents(platform, tenant)}


def test_a_killed_ingestion_service_resumes_its_job(platform: Platform, corpus: Path) -> None:
    kill_during_a_job(platform, notes(corpus / "bulk", 150, "office"), "bulk", 150)
    indexed = documents(platform, "bulk")
    assert len(indexed) == 150 and len({d.document_id for d in indexed}) == 150


@pytest.mark.slow
def test_a_thousand_document_job_survives_a_kill_as_a_clean_run_would(
    platform: Platform, corpus: Path
) -> None:
    """The issue's size: every document indexed once, chunk counts equal to a
    clean, uninterrupted run of the same files."""
    folder = notes(corpus / "thousand", 1000, "desk")
    kill_during_a_job(platform, folder, "thousand", 1000)
    with grpc.insecure_channel(platform.settings.ingestion_addr) as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        clean = ingestion_pb2.IngestUrisRequest(uris=[folder.as_uri()], tenant="clean")
        list(stub.IngestUris(clean, timeout=600))
    assert chunk_counts(platform, "thousand") == chunk_counts(platform, "clean")
    assert len(chunk_counts(platform, "clean")) == 1000


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
