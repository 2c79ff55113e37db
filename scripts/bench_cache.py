"""`make bench-cache`: what an answer-cache hit costs against a miss, and what
each retrieval mode costs, measured in one run on one machine.

1. A platform starts (every service its own process, ports 5365x, data in
   `.bench/cache/`, the default in-process caches) and indexes SciFact
   abstracts through `IngestionService.IngestUris` for the tenant the gateway
   acts for without API keys: the abstracts the SciFact claims cite as evidence,
   in claim order, topped up with others to `--docs` (read in place from
   `../shared/eval/scifact/`, written one `<id>.txt` each under `.bench/cache/`).
2. Asks, through the REST gateway (HTTP, the whole path, from a keep-alive
   standard-library client: see `GatewayClient`). Each claim is asked once with
   `bypass_cache` (a warm-up that also finds the claims the platform answers;
   declined answers are never cached). Then, for every answered claim in turn:
   a miss (`bypass_cache`: embed, retrieve, generate extractively, verify, and
   the answer stored again) and right after it a hit (the same question, served
   from the cache once its cited documents' versions were checked with one
   `RetrievalService.LookupDocuments` call), so that whatever else the machine
   does meets both alike; the same hit over gRPC (`QueryService.Ask`, no
   gateway); and, for the gateway's own cost, the simplest call behind it,
   `GET /v1/documents/{id}` of a cited document, against the `LookupDocuments`
   call it makes, over gRPC. The retrieval service's count of the
   `LookupDocuments` calls it handled during this loop must come out at exactly
   what those requests make (one per hit, one per miss to pin the versions it
   stores, one per document read), or the benchmark stops. Client-side p50 and
   p95 of each, and the hit / miss ratio at p50 through the gateway against the
   target: at most `HIT_MISS_TARGET`.
3. Searches, `RetrievalService.Search` over gRPC from an asyncio client (as the
   query service calls), for the same claims (vectors embedded once
   beforehand), the three modes interleaved per claim: dense, keyword (BM25)
   and hybrid (RRF), with the query service's default top_k, after a warm-up
   round. Every search starts after `QUIET_SECONDS` of quiet, as in a miss (the
   retrieval service idles while the question is embedded).

The figures go between the `cache-bench:` markers of the file given to `--write`.

Usage: `python -m scripts.bench_cache [--docs N] [--questions N] [--write docs/caching.md]`.
"""

import argparse
import asyncio
import datetime as dt
import http.client
import json
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from ragplatform.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from scripts.bench import SCIFACT, machine_facts, percentile, say
from services.cli.supervisor import Platform, metrics_url
from services.common.tenancy import DEFAULT_TENANT
from services.query.__main__ import QuerySettings

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / ".bench" / "cache"
BEGIN, END = "<!-- cache-bench:begin -->", "<!-- cache-bench:end -->"
HIT_MISS_TARGET = 0.5
"""Acceptance: a hit's p50 through the gateway at most this fraction of an
extractive miss's p50, measured in the same run."""
MODES = {
    "dense": common_pb2.RETRIEVAL_MODE_DENSE,
    "keyword": common_pb2.RETRIEVAL_MODE_KEYWORD,
    "hybrid": common_pb2.RETRIEVAL_MODE_HYBRID,
}
QUIET_SECONDS = 0.01
"""Idle time before each timed search: about a question's embedding time here,
during which the retrieval service waits in a miss."""
BENCH_ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:53651",
    "RAG_INGESTION_ADDR": "127.0.0.1:53652",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:53653",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:53654",
    "RAG_GENERATION_ADDR": "127.0.0.1:53655",
    "RAG_GATEWAY_PORT": "53680",
    "RAG_DRAIN_SECONDS": "2",
}


# --------------------------------------------------------------------------- inputs


def select(docs: int) -> tuple[list[dict[str, str]], list[str]]:
    """(abstracts, claims): those SciFact's claims cite, topped up to `docs`
    abstracts, and the claims whose evidence is all among them."""
    claims = []
    wanted: dict[str, None] = {}
    with (REPO / SCIFACT / "queries.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            evidence = list(record.get("metadata") or {})
            if evidence and len(wanted.keys() | set(evidence)) <= docs:
                wanted.update(dict.fromkeys(evidence))
                claims.append(record["text"])
    cited: list[dict[str, str]] = []
    others: list[dict[str, str]] = []
    with (REPO / SCIFACT / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["_id"] in wanted:
                cited.append(record)
            elif len(others) < docs - len(wanted):
                others.append(record)
    return cited + others, claims


def write_corpus(abstracts: Sequence[dict[str, str]], folder: Path) -> None:
    """One `<id>.txt` per abstract (title, blank line, text), afresh."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for record in abstracts:
        text = f"{record['title']}\n\n{record['text']}\n"
        (folder / f"{record['_id']}.txt").write_text(text, encoding="utf-8")


def ingest(platform: Platform, folder: Path) -> int:
    """Index `folder` for the default tenant; the number of documents indexed."""
    with grpc.insecure_channel(platform.settings.ingestion_addr) as channel:
        events = ingestion_pb2_grpc.IngestionServiceStub(channel).IngestUris(
            ingestion_pb2.IngestUrisRequest(uris=[folder.as_uri()], tenant=DEFAULT_TENANT),
            timeout=3600,
        )
        results = [event.result for event in events if event.HasField("result")]
    failed = [r for r in results if r.status == ingestion_pb2.IngestResult.STATUS_FAILED]
    if failed:
        raise SystemExit(f"{len(failed)} documents failed, e.g. {failed[0].message}")
    return len(results)


# --------------------------------------------------------------------------- measuring


@contextmanager
def timed(into: list[float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    into.append(time.perf_counter() - start)


class GatewayClient:
    """JSON over one keep-alive HTTP/1.1 connection, on the standard library.

    The client shares the machine's CPUs with every service it measures (a real
    client runs elsewhere), so it should cost as little as possible: this one
    costs the shared CPUs less than httpx would (docs/benchmarks.md).
    """

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self._connection = http.client.HTTPConnection(
            parsed.hostname or "127.0.0.1", parsed.port, timeout=120
        )

    def request(self, method: str, path: str, body: object = None) -> dict[str, object]:
        """The decoded JSON answer; exits the benchmark on anything but 200."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        self._connection.request(method, path, body=payload, headers=headers)
        reply = self._connection.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise SystemExit(f"{method} {path} failed: {reply.status} {data[:500]!r}")
        decoded: dict[str, object] = json.loads(data)
        return decoded

    def close(self) -> None:
        self._connection.close()


def post_ask(gateway: GatewayClient, question: str, bypass: bool) -> dict[str, object]:
    return gateway.request("POST", "/v1/ask", {"question": question, "bypass_cache": bypass})


LOOKUPS_PER_CLAIM = 5
"""LookupDocuments calls the retrieval service handles for one claim of the
measured loop: the miss pins its sources' versions (1), the hit through the
gateway and the hit over gRPC check their cited documents' versions (1 each),
and the document read through the gateway and the one over gRPC (1 each)."""


@dataclass
class Asks:
    asked: int = 0
    answered: list[str] = field(default_factory=list)
    miss: list[float] = field(default_factory=list)
    hit: list[float] = field(default_factory=list)
    cache_stage: list[float] = field(default_factory=list)
    """Server-side time of the hits' lookup and version check (their "cache" stage)."""
    hit_grpc: list[float] = field(default_factory=list)
    document_http: list[float] = field(default_factory=list)
    document_grpc: list[float] = field(default_factory=list)
    lookups: int = 0
    """LookupDocuments calls the retrieval service handled during the measured loop."""


def lookup_calls(platform: Platform) -> float:
    """LookupDocuments calls the retrieval service has handled so far."""
    url = metrics_url(platform.settings, "retrieval")
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rag_rpc_requests_total"
        and sample.labels.get("method") == "LookupDocuments"
    )


def cache_hit(body: dict[str, object]) -> list[float]:
    """The `cache` stage seconds of an exact hit; exits the benchmark on a miss."""
    cache = body.get("cache")
    if not isinstance(cache, dict) or cache.get("kind") != "KIND_EXACT":
        raise SystemExit(f"expected a cache hit, got {cache!r}")
    timings = body["timings"]
    assert isinstance(timings, list)
    return [t["seconds"] for t in timings if t["stage"] == "cache"]


def measure_asks(platform: Platform, claims: Sequence[str], limit: int) -> Asks:
    """The warm-up pass, then per answered claim a miss, at once a hit, the hit
    over gRPC, and a document read through the gateway and over gRPC."""
    asks = Asks()
    settings = platform.settings
    caller = common_pb2.Caller(tenant=DEFAULT_TENANT)
    with (
        closing(GatewayClient(platform.address("gateway"))) as gateway,
        grpc.insecure_channel(settings.query_addr) as query_channel,
        grpc.insecure_channel(settings.retrieval_addr) as retrieval_channel,
    ):
        query = query_pb2_grpc.QueryServiceStub(query_channel)
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel)
        for claim in claims:
            if len(asks.answered) == limit:
                break
            asks.asked += 1
            if not post_ask(gateway, claim, bypass=True)["declined"]:
                asks.answered.append(claim)
        say(f"{len(asks.answered)} of {asks.asked} claims answered (declines are not cached)")
        before = lookup_calls(platform)
        for claim in asks.answered:
            with timed(asks.miss):
                body = post_ask(gateway, claim, bypass=True)
            with timed(asks.hit):
                hit = post_ask(gateway, claim, bypass=False)
            asks.cache_stage += cache_hit(hit)
            with timed(asks.hit_grpc):
                reply = query.Ask(query_pb2.AskRequest(question=claim, caller=caller), timeout=60)
            if reply.cache.kind != query_pb2.CacheHit.KIND_EXACT:
                raise SystemExit(f"expected a cache hit over gRPC for {claim!r}")
            citations = body["citations"]
            assert isinstance(citations, list)
            document = citations[0]["document_id"]
            with timed(asks.document_http):
                gateway.request("GET", f"/v1/documents/{document}")
            with timed(asks.document_grpc):
                retrieval.LookupDocuments(
                    retrieval_pb2.LookupDocumentsRequest(caller=caller, document_ids=[document]),
                    timeout=30,
                )
        asks.lookups = round(lookup_calls(platform) - before)
    expected = LOOKUPS_PER_CLAIM * len(asks.answered)
    if asks.lookups != expected:
        raise SystemExit(
            f"the retrieval service handled {asks.lookups} LookupDocuments calls, not the "
            f"{expected} expected: a hit did not check its versions with exactly one call"
        )
    return asks


async def measure_search(
    platform: Platform, claims: Sequence[str], top_k: int
) -> dict[str, list[float]]:
    """Per claim, each mode through Search, from an asyncio client as the query
    service calls, each after `QUIET_SECONDS` of quiet; a warm-up round first."""
    settings = platform.settings
    caller = common_pb2.Caller(tenant=DEFAULT_TENANT)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    async with (
        aio.insecure_channel(settings.embedding_addr) as embedding_channel,
        aio.insecure_channel(settings.retrieval_addr) as retrieval_channel,
    ):
        vectors = await embedding_pb2_grpc.EmbeddingServiceStub(embedding_channel).EmbedQueries(
            embedding_pb2.EmbedQueriesRequest(texts=list(claims)), timeout=300
        )
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel)
        for round_ in ("warm-up", "measured"):
            for claim, vector in zip(claims, vectors.vectors, strict=True):
                for name, mode in MODES.items():
                    request = retrieval_pb2.SearchRequest(
                        vector=vector, top_k=top_k, query_text=claim, mode=mode, caller=caller
                    )
                    await asyncio.sleep(QUIET_SECONDS)
                    start = time.perf_counter()
                    await retrieval.Search(request, timeout=30)
                    if round_ == "measured":
                        seconds[name].append(time.perf_counter() - start)
    return seconds


# --------------------------------------------------------------------------- report


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def row(name: str, values: Sequence[float]) -> str:
    return f"| {name} | {ms(percentile(values, 50))} | {ms(percentile(values, 95))} |"


def machine() -> str:
    facts = machine_facts()
    return (
        f"{facts['CPU']}, {facts['cores (os.cpu_count)']} CPUs (os.cpu_count), "
        f"{facts['memory']}, Python {facts['Python']}"
    )


def ratio_line(asks: Asks) -> str:
    """The acceptance criterion: hit p50 / miss p50 through the gateway."""
    ratio = percentile(asks.hit, 50) / percentile(asks.miss, 50)
    met = "met" if ratio <= HIT_MISS_TARGET else "NOT met"
    return (
        f"**Hit / miss at p50 through the gateway: {ratio:.3f}** "
        f"({ms(percentile(asks.hit, 50))} / {ms(percentile(asks.miss, 50))}; "
        f"target <= {HIT_MISS_TARGET}: {met})."
    )


def report(documents: int, asks: Asks, searches: dict[str, list[float]], top_k: int) -> str:
    gateway_share = percentile(asks.document_http, 50) - percentile(asks.document_grpc, 50)
    hit_share = percentile(asks.hit, 50) - percentile(asks.hit_grpc, 50)
    return "\n".join(
        [
            f"Measured {dt.date.today():%Y-%m-%d} on {machine()}: {documents} SciFact "
            f"abstracts indexed; {len(asks.answered)} claims answered (of {asks.asked} "
            "asked; declined answers are not cached), each asked as a miss then at once "
            "as a hit, one at a time (`make bench-cache`).",
            "",
            "Ask through the REST gateway (client side), and what is behind it:",
            "",
            "| | p50 | p95 |",
            "|---|---|---|",
            row(
                "miss (`bypass_cache`: embed, retrieve, generate extractively, verify, store)",
                asks.miss,
            ),
            row("hit (cited versions checked with one `LookupDocuments`)", asks.hit),
            row("of which the hit's `cache` stage in the query service", asks.cache_stage),
            row("the same hit over gRPC, `QueryService.Ask` (no gateway)", asks.hit_grpc),
            row("`GET /v1/documents/{id}` through the gateway", asks.document_http),
            row("the `RetrievalService.LookupDocuments` behind it, over gRPC", asks.document_grpc),
            "",
            ratio_line(asks),
            "",
            f"The retrieval service handled {asks.lookups} `LookupDocuments` calls during "
            f"these asks, {LOOKUPS_PER_CLAIM} per claim as expected (one per hit, through "
            "the gateway and over gRPC; one per miss, pinning the versions it stores; one "
            "per document read, through the gateway and over gRPC). The gateway adds "
            f"{ms(hit_share)} to a hit at p50 (hit through it minus over gRPC), "
            f"{ms(gateway_share)} to a document read.",
            "",
            f"`RetrievalService.Search` over gRPC, top_k {top_k}, the same claims "
            "(vectors embedded beforehand; modes interleaved per claim, after a warm-up round; "
            f"each search after {QUIET_SECONDS * 1000:.0f} ms of quiet, as in a miss):",
            "",
            "| mode | p50 | p95 |",
            "|---|---|---|",
            *(row(name, values) for name, values in searches.items()),
        ]
    )


def write(path: Path, text: str) -> None:
    document = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(document):
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", document))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="abstracts to index (300)")
    parser.add_argument("--questions", type=int, default=100, help="answered claims (100)")
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    args = parser.parse_args(argv)
    if not (REPO / SCIFACT / "corpus.jsonl").exists():
        print(f"SciFact not found at {SCIFACT} (relative to {REPO})", file=sys.stderr)
        return 2
    abstracts, claims = select(args.docs)
    write_corpus(abstracts, BENCH_DIR / "scifact")
    data = BENCH_DIR / "platform"
    shutil.rmtree(data, ignore_errors=True)
    top_k = QuerySettings().query_default_top_k
    say(f"starting the platform; {len(abstracts)} abstracts, {len(claims)} candidate claims")
    with Platform(data, env=BENCH_ENV) as platform:
        documents = ingest(platform, BENCH_DIR / "scifact")
        say(f"{documents} documents indexed; asking through the gateway")
        asks = measure_asks(platform, claims, args.questions)
        say("searching in each mode")
        searches = asyncio.run(measure_search(platform, asks.answered, top_k))
    text = report(documents, asks, searches, top_k)
    print(text)
    if args.write:
        write(args.write, text)
        say(f"figures written to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
