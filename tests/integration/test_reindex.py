"""A re-index to another embedding model, blue/green, while asks go on.

A platform of its own (own ports and data): the index is built with MiniLM,
then `ragctl reindex` moves it to Vertex AI's text-embedding-005 (an embedding
service on the Vertex fake, in RAG_EMBEDDING_ADDRS) while a thread asks without
pause; every ask is counted, and none may fail. Writes made while the new
generation waits for its switch are carried over by the next pass, ingestion
follows the switch on its own, the answer cache stops serving answers of the
old generation, and a re-index whose process is killed resumes without
embedding again what it had copied.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ragplatform.v1 import common_pb2, ingestion_pb2, query_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.cli.supervisor import Platform
from tests.contract.fakes.server import serve
from tests.contract.fakes.vertex_embedding_fake import VertexEmbeddingFake
from tests.integration.conftest import REPO, SAMPLES, Stubs, ingest, upload

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
VERTEX = "text-embedding-005"
OTHER_EMBEDDING = "127.0.0.1:52323"
ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:52311",
    "RAG_INGESTION_ADDR": "127.0.0.1:52312",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52313",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52314",
    "RAG_GENERATION_ADDR": "127.0.0.1:52315",
    "RAG_GATEWAY_PORT": "52390",
    "RAG_EMBEDDING_ADDRS": OTHER_EMBEDDING,
    "RAG_DRAIN_SECONDS": "2",
}
QUESTIONS = (
    "How many days of paid leave do full-time employees get?",
    "What is the refund policy?",
)
CACHED = "How many days of paid leave do employees get?"
"""Asked only before and after the switch, never by the asking thread."""


@pytest.fixture(scope="module")
def vertex_embedding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedding service running text-embedding-005 on Vertex AI's fake."""
    fake = VertexEmbeddingFake()
    with serve(fake.app) as url:
        env = {
            "RAG_EMBEDDING_ADDR": OTHER_EMBEDDING,
            "RAG_EMBEDDING_BACKEND": "vertex",
            "RAG_GCP_PROJECT": "acme-rag",
            "RAG_VERTEX_EMBEDDING_BASE_URL": url,
            "RAG_VERTEX_EMBEDDING_ACCESS_TOKEN": "fake-token",
            "RAG_VERTEX_EMBEDDING_DIMENSION": "256",
        }
        with Platform(
            tmp_path_factory.mktemp("vertex-embedder"), env=env, services=["embedding"]
        ) as running:
            yield running.settings.embedding_addr


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, vertex_embedding: str) -> Iterator[Platform]:
    with Platform(tmp_path_factory.mktemp("reindex"), env=ENV) as running:
        yield running


@pytest.fixture(scope="module")
def stubs(platform: Platform) -> Iterator[Stubs]:
    client = Stubs(platform)
    yield client
    client.close()


@pytest.fixture(scope="module")
def generations(platform: Platform) -> Iterator[retrieval_pb2_grpc.IndexGenerationServiceStub]:
    with grpc.insecure_channel(platform.settings.retrieval_addr) as channel:
        yield retrieval_pb2_grpc.IndexGenerationServiceStub(channel)


def ragctl(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.ragctl", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ENV, "RAG_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)},
        cwd=REPO,
        check=False,
    )


def listing(stubs: Stubs, tenant: str, generation: str = "") -> dict[str, common_pb2.DocumentInfo]:
    page = stubs.retrieval.ListDocuments(
        retrieval_pb2.ListDocumentsRequest(tenant=tenant, page_size=1000, generation=generation),
        timeout=10,
    )
    return {document.document_id: document for document in page.documents}


def states(
    generations: retrieval_pb2_grpc.IndexGenerationServiceStub,
) -> dict[str, tuple[str, str, int]]:
    reply = generations.ListGenerations(retrieval_pb2.ListGenerationsRequest(), timeout=10)
    return {g.name: (g.state, g.embedding_model, g.document_count) for g in reply.generations}


class Asker(threading.Thread):
    """Asks without pause until stopped; counts answers and errors by code."""

    def __init__(self, stubs: Stubs) -> None:
        super().__init__(daemon=True)
        self._stubs = stubs
        self.outcomes: Counter[str] = Counter()
        self._stop_event = threading.Event()

    def run(self) -> None:
        number = 0
        while not self._stop_event.is_set():
            question = QUESTIONS[number % len(QUESTIONS)]
            number += 1
            try:
                answer = self._stubs.query.Ask(
                    query_pb2.AskRequest(
                        question=question,
                        caller=common_pb2.Caller(tenant="default"),
                        bypass_cache=number % 3 == 0,
                    ),
                    timeout=60,
                )
                self.outcomes["answered" if answer.citations else "declined"] += 1
            except grpc.RpcError as error:
                self.outcomes[error.code().name] += 1

    def stop(self) -> Counter[str]:
        self._stop_event.set()
        self.join(timeout=90)
        return self.outcomes


def test_a_reindex_switches_models_while_every_ask_is_answered(
    platform: Platform,
    stubs: Stubs,
    generations: retrieval_pb2_grpc.IndexGenerationServiceStub,
    tmp_path: Path,
) -> None:
    results = ingest(stubs, SAMPLES)
    assert all(r.status != ingestion_pb2.IngestResult.STATUS_FAILED for r in results)
    upload(stubs, "memo.txt", b"Globex travel memo: economy class for flights under six hours.",
           document_id="memo", tenant="globex")  # fmt: skip
    upload(stubs, "old.txt", b"An outdated note that will be deleted during the re-index.",
           document_id="old-note")  # fmt: skip
    request = query_pb2.AskRequest(question=CACHED, caller=common_pb2.Caller(tenant="default"))
    before = stubs.query.Ask(request, timeout=60)
    cached = stubs.query.Ask(request, timeout=60)
    assert before.citations and cached.HasField("cache")

    asker = Asker(stubs)
    asker.start()
    try:
        built = ragctl("reindex", "--embedding", VERTEX, "--no-promote", data_dir=tmp_path)
        assert built.returncode == 0, built.stdout + built.stderr
        assert "building generation g1 of 'text-embedding-005' (256 dimensions)" in built.stdout
        assert "generation g1 is complete; switch with --promote g1" in built.stdout
        assert states(generations)["g1"][:2] == ("building", VERTEX)
        assert stubs.retrieval.GetStats(retrieval_pb2.GetStatsRequest()).embedding_model == MINILM

        # Writes while g1 waits: an update, a new document, a deletion (from every generation).
        upload(stubs, "memo.txt", b"Globex travel memo: business class for flights over six hours.",
               document_id="memo", tenant="globex")  # fmt: skip
        upload(stubs, "new.txt", b"Parking permits are renewed every January at reception.",
               document_id="parking")  # fmt: skip
        stubs.ingestion.DeleteDocument(
            ingestion_pb2.DeleteDocumentRequest(document_id="old-note", tenant="default"),
            timeout=30,
        )
        assert "old-note" not in listing(stubs, "default", "g1")

        switched = ragctl("reindex", "--embedding", VERTEX, data_dir=tmp_path)
        assert switched.returncode == 0, switched.stdout + switched.stderr
        assert "pass 1: 2 copied, 0 removed" in switched.stdout  # the update and the new one
        assert "switched: generation g1 of 'text-embedding-005' is live" in switched.stdout
        time.sleep(1)  # asks keep going across the switch
    finally:
        outcomes = asker.stop()
    print(f"asks during the re-index: {dict(outcomes)}")
    assert outcomes["answered"] >= 3
    assert set(outcomes) <= {"answered", "declined"}, outcomes  # no ask failed

    stats = stubs.retrieval.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)
    assert (stats.embedding_model, stats.dimension) == (VERTEX, 256)
    table = states(generations)
    assert table["g1"][:2] == ("live", VERTEX) and table["g0"][:2] == ("retired", MINILM)
    for tenant in ("default", "globex"):
        old, new = listing(stubs, tenant, "g0"), listing(stubs, tenant, "g1")
        assert new == old  # records copied verbatim (versions, labels, dates)
    memo = generations.GetDocumentChunks(
        retrieval_pb2.GetDocumentChunksRequest(tenant="globex", document_id="memo"), timeout=10
    )
    assert "business class" in " ".join(chunk.text for chunk in memo.chunks)

    # The answer cache no longer serves the answer retrieved from g0 (its cited
    # documents are unchanged: only the key's model changed).
    after = stubs.query.Ask(request, timeout=60)
    assert not after.HasField("cache")

    # Ingestion follows the switch: its next write is embedded with the live model.
    created = upload(stubs, "late.txt", b"The cafeteria opens at eight in the morning.",
                     document_id="late")  # fmt: skip
    assert created.status == ingestion_pb2.IngestResult.STATUS_CREATED
    assert "late" in listing(stubs, "default") and "late" not in listing(stubs, "default", "g0")

    dropped = ragctl("reindex", "--drop", "g0", data_dir=tmp_path)
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    assert set(states(generations)) == {"g1"}
    answered = stubs.query.Ask(
        query_pb2.AskRequest(
            question=QUESTIONS[1], caller=common_pb2.Caller(tenant="default"), debug=True
        ),
        timeout=60,
    )
    assert answered.debug.retrieved  # searched in g1 with the new model's vector


def test_a_killed_reindex_resumes_without_embedding_again(
    platform: Platform,
    stubs: Stubs,
    generations: retrieval_pb2_grpc.IndexGenerationServiceStub,
    tmp_path: Path,
) -> None:
    for number in range(60):
        upload(stubs, f"note-{number}.txt",
               f"Note {number}: the meeting room {number} seats {number % 12 + 2} people.".encode(),
               document_id=f"note-{number:02d}", tenant="bulk")  # fmt: skip
    total = states(generations)["g1"][2]
    command = [sys.executable, "-m", "services.cli.ragctl", "reindex", "--embedding", MINILM,
               "--no-promote"]  # fmt: skip
    env = {**os.environ, **ENV, "RAG_DATA_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    copied_before_kill = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        building = {n: s for n, s in states(generations).items() if s[0] == "building"}
        if building and next(iter(building.values()))[2] >= 5:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, "the re-index ended before it could be killed"
    time.sleep(0.5)  # writes the killed client had sent finish on the server
    name, (_, model, copied_before_kill) = next(
        (n, s) for n, s in states(generations).items() if s[0] == "building"
    )
    assert model == MINILM and 5 <= copied_before_kill < total

    resumed = ragctl("reindex", "--embedding", MINILM, "--no-promote", data_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"building generation {name} of '{MINILM}'" in resumed.stdout
    # Only what the killed run had not copied is embedded now.
    assert (
        f"pass 1: {total - copied_before_kill} copied, 0 removed, "
        f"{copied_before_kill} already current, 0 failed"
    ) in resumed.stdout
    assert states(generations)[name][2] == total
