"""Rate limits and fairness with real processes: two quiet tenants keep being
answered and ingested while a third floods the platform.

The flooder hammers the gateway's /v1/ask and /v1/documents from several
threads and runs a bulk IngestUris of generated documents at the same time;
the quiet tenants ask (cache bypassed, so every ask does the full work) and
upload at a pace within their limits. Correctness is asserted: every quiet
request succeeds, the flooder gets 429s, the ingestion service made the
flooder's work wait for its tenant's slots. Latency is only reported: the ask
p50 of each quiet tenant under the flood over its p50 alone, printed (run with
`-s` to see it); on a shared 2-core machine a timing assertion would measure
the neighbours.

This module starts its own platform on its own ports (5226x, gateway 52280),
so that it never meets the shared integration platform (5215x).
"""

import json
import random
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ragplatform.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.cli.supervisor import Platform, gateway_url, metrics_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "samples" / "corpus"
QUESTIONS = [q for q in (REPO / "samples" / "questions.txt").read_text().splitlines() if q]

QUIET = ("quiet-a", "quiet-b")
FLOODER = "flooder"
KEYS = {f"key-{tenant}": {"tenant": tenant} for tenant in (*QUIET, FLOODER)}
ASKS_PER_PHASE = 12
ASK_INTERVAL_SECONDS = 0.5
"""A quiet tenant's pace: 2 asks a second, within its key's 4 (so none is refused)."""
FLOOD_THREADS = 6
"""Threads asking as the flooder; UPLOAD_THREADS more upload as it."""
UPLOAD_THREADS = 3
FLOOD_DOCUMENTS = 160
FLOOD_PAUSE_SECONDS = 0.02
"""Between a flood thread's requests: ~300 a second in all, 40 times the flooder's
limit, while leaving this test process (one GIL) room to time the quiet asks."""
FLOOD_SECONDS_MAX = 90.0
"""Every loop of the flood stops by then, whatever happens."""

ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:52261",
    "RAG_INGESTION_ADDR": "127.0.0.1:52262",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52263",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52264",
    "RAG_GENERATION_ADDR": "127.0.0.1:52265",
    "RAG_GATEWAY_PORT": "52280",
    "RAG_DRAIN_SECONDS": "2",
    "RAG_GATEWAY_API_KEYS": json.dumps(KEYS),
    "RAG_GATEWAY_ASK_RATE_PER_KEY": "4",
    "RAG_GATEWAY_ASK_BURST_PER_KEY": "4",
    "RAG_GATEWAY_ASK_RATE_PER_TENANT": "8",
    "RAG_GATEWAY_ASK_BURST_PER_TENANT": "8",
    "RAG_GATEWAY_UPLOAD_RATE_PER_KEY": "0.2",
    "RAG_GATEWAY_UPLOAD_BURST_PER_KEY": "2",
    "RAG_INGESTION_MAX_CONCURRENT_PER_TENANT": "2",
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with Platform(tmp_path_factory.mktemp("fairness"), env=ENV) as running:
        with grpc.insecure_channel(running.settings.ingestion_addr) as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            for tenant in QUIET:
                request = ingestion_pb2.IngestUrisRequest(uris=[CORPUS.as_uri()], tenant=tenant)
                results = [e.result for e in stub.IngestUris(request, timeout=300)][1:]
                assert results and all(not r.error_code for r in results), results
        yield running


def as_key(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{tenant}"}


def quiet_asks(http: httpx.Client, tenant: str, phase: str) -> list[float]:
    """ASKS_PER_PHASE asks at ASK_INTERVAL_SECONDS; each must be answered (200)."""
    seconds = []
    for index in range(ASKS_PER_PHASE):
        started = time.perf_counter()
        body = {"question": QUESTIONS[index % len(QUESTIONS)], "bypass_cache": True}
        reply = http.post("/v1/ask", json=body, headers=as_key(tenant))
        elapsed = time.perf_counter() - started
        assert reply.status_code == 200, f"{tenant} {phase}: {reply.status_code} {reply.text}"
        seconds.append(elapsed)
        time.sleep(max(0.0, ASK_INTERVAL_SECONDS - elapsed))
    return seconds


@dataclass
class Flood:
    """The flooder's threads and what they got back."""

    url: str
    documents: Path
    ingestion_addr: str
    stop: threading.Event = field(default_factory=threading.Event)
    statuses: dict[str, list[int]] = field(default_factory=lambda: {"ask": [], "upload": []})
    ingested: list[ingestion_pb2.IngestResult] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.threads = [
            threading.Thread(target=self._asks, args=(n,)) for n in range(FLOOD_THREADS)
        ]
        self.threads += [
            threading.Thread(target=self._uploads, args=(n,)) for n in range(UPLOAD_THREADS)
        ]
        self.threads.append(threading.Thread(target=self._bulk))
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=FLOOD_SECONDS_MAX)

    def _record(self, kind: str, status: int) -> None:
        with self._lock:
            self.statuses[kind].append(status)

    def _running(self, deadline: float) -> bool:
        return not self.stop.is_set() and time.monotonic() < deadline

    def _asks(self, seed: int) -> None:
        deadline = time.monotonic() + FLOOD_SECONDS_MAX
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while self._running(deadline):
                question = f"{QUESTIONS[seed % len(QUESTIONS)]} ({seed}-{time.monotonic()})"
                body = {"question": question, "bypass_cache": True}
                reply = http.post("/v1/ask", json=body, headers=as_key(FLOODER))
                self._record("ask", reply.status_code)
                time.sleep(FLOOD_PAUSE_SECONDS)

    def _uploads(self, thread: int) -> None:
        deadline = time.monotonic() + FLOOD_SECONDS_MAX
        with httpx.Client(base_url=self.url, timeout=60) as http:
            count = 0
            while self._running(deadline):
                count += 1
                name = f"flood-{thread}-{count}"
                files = {"file": (f"{name}.txt", f"Flood upload {name}. " * 200)}
                reply = http.post("/v1/documents", files=files, headers=as_key(FLOODER))
                self._record("upload", reply.status_code)
                time.sleep(FLOOD_PAUSE_SECONDS)

    def _bulk(self) -> None:
        with grpc.insecure_channel(self.ingestion_addr) as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            request = ingestion_pb2.IngestUrisRequest(
                uris=[self.documents.as_uri()], tenant=FLOODER
            )
            call = stub.IngestUris(request, timeout=FLOOD_SECONDS_MAX)
            try:
                for event in call:
                    if event.HasField("result"):
                        self.ingested.append(event.result)
                    if self.stop.is_set():
                        break
            finally:
                call.cancel()


def flood_documents(directory: Path) -> Path:
    """FLOOD_DOCUMENTS text files of a few chunks each, every one different."""
    words = (CORPUS / "leave-policy.md").read_text().split()
    rng = random.Random(7)
    directory.mkdir()
    for index in range(FLOOD_DOCUMENTS):
        text = " ".join(rng.choice(words) for _ in range(700))
        (directory / f"bulk-{index:04d}.txt").write_text(f"Bulk document {index}.\n\n{text}\n")
    return directory


def metric(platform: Platform, process: str, name: str, **labels: str) -> float:
    text = httpx.get(metrics_url(platform.settings, process), timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_quiet_tenants_are_served_while_a_third_floods(platform: Platform, tmp_path: Path) -> None:
    url = gateway_url(platform.settings)
    with httpx.Client(base_url=url, timeout=60) as http:
        for tenant in QUIET:  # warm-up: first calls load code paths and connections
            warm = http.post("/v1/ask", json={"question": QUESTIONS[0]}, headers=as_key(tenant))
            assert warm.status_code == 200, warm.text
            time.sleep(ASK_INTERVAL_SECONDS)
        alone = {tenant: quiet_asks(http, tenant, "alone") for tenant in QUIET}

        flood = Flood(url, flood_documents(tmp_path / "bulk"), platform.settings.ingestion_addr)
        waits_before = metric(platform, "ingestion", "rag_ingestion_tenant_waits_total")
        flood.start()
        try:
            time.sleep(2.0)  # the flood is under way: the bulk import is parsing
            flooded: dict[str, list[float]] = {}
            uploads: dict[str, list[int]] = {}

            def quiet(tenant: str) -> None:
                with httpx.Client(base_url=url, timeout=60) as own:
                    flooded[tenant] = quiet_asks(own, tenant, "flooded")
                    uploads[tenant] = [
                        own.post(
                            "/v1/documents",
                            files={"file": (f"{tenant}-{n}.md", f"# Note {n}\n\n{tenant} {n}.")},
                            headers=as_key(tenant),
                        ).status_code
                        for n in range(2)
                    ]

            workers = [threading.Thread(target=quiet, args=(t,)) for t in QUIET]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=FLOOD_SECONDS_MAX)
        finally:
            flood.finish()

    assert set(flooded) == set(QUIET) and set(uploads) == set(QUIET), "a quiet tenant stalled"
    for tenant in QUIET:
        assert uploads[tenant] == [201, 201], f"{tenant}'s uploads: {uploads[tenant]}"
        assert metric(platform, "gateway", "rag_http_rate_limited_total", tenant=tenant) == 0, (
            f"{tenant} was rate-limited"
        )
    asks, uploaded = flood.statuses["ask"], flood.statuses["upload"]
    assert 429 in asks and 429 in uploaded, "the flooder was never limited"
    assert set(asks) <= {200, 429} and set(uploaded) <= {201, 429}, (asks, uploaded)
    assert metric(platform, "gateway", "rag_http_rate_limited_total", tenant=FLOODER) == (
        asks.count(429) + uploaded.count(429)
    )
    assert flood.ingested, "the bulk import made no progress"
    assert all(not r.error_code for r in flood.ingested), "bulk documents failed"
    assert metric(platform, "ingestion", "rag_ingestion_tenant_waits_total") > waits_before, (
        "the flooder's documents never waited for their tenant's slots"
    )

    report = []
    for tenant in QUIET:
        before, during = statistics.median(alone[tenant]), statistics.median(flooded[tenant])
        report.append(
            f"{tenant}: ask p50 alone {before * 1000:.0f} ms, under flood "
            f"{during * 1000:.0f} ms, ratio {during / before:.2f}"
        )
    print(
        "\nfairness: "
        + "; ".join(report)
        + f"; flooder asks {asks.count(200)} served / {asks.count(429)} refused (429), "
        f"uploads {uploaded.count(201)} / {uploaded.count(429)}, "
        f"bulk documents ingested {len(flood.ingested)} of {FLOOD_DOCUMENTS}"
    )
