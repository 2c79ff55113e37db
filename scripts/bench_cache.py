"""`make bench-cache`: what an answer-cache hit costs against a miss, and what
each retrieval mode costs, measured in one run on one machine.

1. A platform starts (every service its own process, ports 5365x, data in
   `.bench/cache/`, the default in-process caches) and indexes SciFact
   abstracts through `IngestionService.IngestUris` for the tenant the gateway
   acts for without API keys: the abstracts the SciFact claims cite as evidence,
   in claim order, topped up with others to `--docs` (read in place from
   `../shared/eval/scifact/`, written one `<id>.txt` each under `.bench/cache/`).
2. Asks, through the REST gateway (HTTP, the whole path, from a keep-alive
   standard-library client: see `GatewayClient`): each claim is asked once with
   `bypass_cache` (a warm-up that also finds the claims the platform answers;
   declined answers are never cached). Then, for every answered claim, a miss
   (`bypass_cache`: embed, retrieve, generate, verify, and the answer stored
   again) and right after it a hit (the same question, served from the cache
   once its cited documents' versions were checked), so that whatever else the
   machine does meets both alike. Then the retrieval service restarts, which
   ends the query service's lease session and so its leases, and every claim
   is asked again as a hit, back to back (the first hits since the restart);
   and, more than a timed lease's length later, once more. Each hit is filed
   under the path its version check took, read from the query service's
   `rag_answer_cache_version_checks_total` around it: a lease the query
   service held (its session's, from the miss or an earlier hit), or a
   `LookupDocuments` call to the retrieval service. Client-side p50/p95 of
   each. To show where a hit's time goes, each claim is also asked as a hit
   over gRPC (no gateway), and the gateway's own cost is measured on the
   simplest call behind it: `GET /v1/documents/{id}` of a cited document
   against the `RetrievalService.LookupDocuments` it makes.
3. Searches, `RetrievalService.Search` over gRPC, for the same claims (vectors
   embedded once beforehand), the three modes interleaved per claim: dense,
   keyword (BM25) and hybrid (RRF), with the query service's default top_k;
   and the hybrid search as the query service makes it, through `SearchAhead`:
   the search sent 10 ms before its vector, timed from the vector to the
   results (what a miss waits for once its query is embedded). Every search
   starts after the same 10 ms of quiet, as in a miss. The searches
   use an asyncio client, as the query service does (a synchronous client
   feeds a stream from another thread, which costs more).
4. Misses through the gateway with the query service's keyword leg run ahead
   (`RAG_QUERY_SEARCH_AHEAD=on`) and off, the query service
   restarted with each setting in turn, in alternating rounds, with the
   embedding cache off (each question embedded as a new one is).

The figures go between the `cache-bench:` markers of the file given to `--write`.

Usage: `python -m scripts.bench_cache [--docs N] [--questions N] [--write docs/caching.md]`;
`--ahead-only` runs step 4 alone (after the indexing) and prints its table.
"""

import argparse
import asyncio
import datetime as dt
import http.client
import json
import platform as pyplatform
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
from scripts.bench import SCIFACT, percentile, say
from services.cli.supervisor import Platform, metrics_url
from services.common.tenancy import DEFAULT_TENANT
from services.query.__main__ import QuerySettings
from services.runtime.settings import usable_cpus

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / ".bench" / "cache"
BEGIN, END = "<!-- cache-bench:begin -->", "<!-- cache-bench:end -->"
HIT_TARGET_SECONDS = 0.005
"""Target for the p50 of a cache hit at the gateway."""
MODES = {
    "dense": common_pb2.RETRIEVAL_MODE_DENSE,
    "keyword": common_pb2.RETRIEVAL_MODE_KEYWORD,
    "hybrid": common_pb2.RETRIEVAL_MODE_HYBRID,
}
BENCH_ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:53651",
    "RAG_INGESTION_ADDR": "127.0.0.1:53652",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:53653",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:53654",
    "RAG_GENERATION_ADDR": "127.0.0.1:53655",
    "RAG_GATEWAY_PORT": "53680",
    "RAG_DRAIN_SECONDS": "2",
}
TIMED_LEASE_SECONDS = 2.0
"""RAG_RETRIEVAL_LEASE_SECONDS's default: the last pass of hits comes later than
that after the lookups, so only the lease session can vouch for the versions."""


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
    spends about 0.5 ms of CPU a request here, httpx about 1.2 ms.
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


SETTLE_SECONDS = 0.005
PATHS = ("lease", "retrieval")
"""Where a hit found its cited documents' versions: a read lease the query
service held, or a LookupDocuments call to the retrieval service."""


@dataclass
class Asks:
    asked: int = 0
    answered: list[str] = field(default_factory=list)
    miss: list[float] = field(default_factory=list)
    hit: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    """Hits through the gateway, by the path their version check took."""
    cache_stage: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    """Server-side time of those hits' lookup and version check (their "cache" stage)."""
    hit_grpc: list[float] = field(default_factory=list)
    document_http: list[float] = field(default_factory=list)
    document_grpc: list[float] = field(default_factory=list)


def version_checks(platform: Platform) -> dict[str, float]:
    """The query service's version checks so far, by source (lease, retrieval)."""
    url = metrics_url(platform.settings, "query")
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        sample.labels["source"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rag_answer_cache_version_checks_total"
    }


def timed_hit(platform: Platform, gateway: GatewayClient, claim: str, asks: Asks) -> None:
    """Ask `claim` as a hit; file its latency and cache stage under the path its
    version check took (from the query service's metrics around it, untimed).
    The query service renders /metrics in a thread of its own: the hit waits
    SETTLE_SECONDS after that scrape, so as not to time the scrape's tail."""
    before = version_checks(platform)
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    body = post_ask(gateway, claim, bypass=False)
    seconds = time.perf_counter() - start
    after = version_checks(platform)
    cache = body.get("cache")
    if not isinstance(cache, dict) or cache.get("kind") != "KIND_EXACT":
        raise SystemExit(f"expected a cache hit, got {cache!r}")
    path = "retrieval" if after["retrieval"] > before.get("retrieval", 0.0) else "lease"
    timings = body["timings"]
    assert isinstance(timings, list)
    asks.hit[path].append(seconds)
    asks.cache_stage[path] += [t["seconds"] for t in timings if t["stage"] == "cache"]


def wait_for_lease_session(platform: Platform) -> None:
    """Until the query service's lease session with the retrieval service is open."""
    url = metrics_url(platform.settings, "retrieval")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        if re.search(r"^rag_retrieval_lease_sessions [1-9]", text, re.M):
            return
        time.sleep(0.05)
    raise SystemExit("the query service opened no lease session with the retrieval service")


def measure_asks(platform: Platform, claims: Sequence[str], limit: int) -> Asks:
    """Three passes over the answered claims. First, each as a miss, then at once
    as a hit (the miss leased its versions to the query service's lease session).
    Then the retrieval service restarts, which ends that session: each claim
    again as a hit, the first since the restart (it checks its versions with the
    retrieval service, unless an earlier claim's check just leased them). Last,
    more than a timed lease later, each claim again as a hit (leased: the
    session keeps leases until a write revokes them)."""
    asks = Asks()
    settings = platform.settings
    caller = common_pb2.Caller(tenant=DEFAULT_TENANT)
    wait_for_lease_session(platform)
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
        for claim in asks.answered:
            with timed(asks.miss):
                body = post_ask(gateway, claim, bypass=True)
            timed_hit(platform, gateway, claim, asks)
            with timed(asks.hit_grpc):
                query.Ask(query_pb2.AskRequest(question=claim, caller=caller), timeout=60)
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
        say("restarting the retrieval service (the lease session ends with it)")
        platform.restart("retrieval")
        wait_for_lease_session(platform)
        for claim in asks.answered:
            timed_hit(platform, gateway, claim, asks)
        time.sleep(TIMED_LEASE_SECONDS + 0.5)
        for claim in asks.answered:
            timed_hit(platform, gateway, claim, asks)
    return asks


AHEAD_ROUNDS = 4


def measure_misses_ahead(platform: Platform, claims: Sequence[str]) -> dict[bool, list[float]]:
    """Misses (`bypass_cache`) through the gateway with the query service's
    `RAG_QUERY_SEARCH_AHEAD` on and off: the query service restarted with each
    setting in turn, AHEAD_ROUNDS rounds alternating which goes first, each
    round every claim once after a short warm-up. The embedding service runs
    without its cache, so that every question is embedded as a new one is (the
    time the keyword leg can overlap)."""
    misses: dict[bool, list[float]] = {True: [], False: []}
    platform.env["RAG_EMBEDDING_CACHE_ENABLED"] = "false"
    platform.restart("embedding")
    for round_number in range(AHEAD_ROUNDS):
        order = (True, False) if round_number % 2 == 0 else (False, True)
        for ahead in order:
            platform.env["RAG_QUERY_SEARCH_AHEAD"] = "on" if ahead else "off"
            platform.restart("query")
            with closing(GatewayClient(platform.address("gateway"))) as gateway:
                for claim in claims[:10]:
                    post_ask(gateway, claim, bypass=True)
                for claim in claims:
                    with timed(misses[ahead]):
                        post_ask(gateway, claim, bypass=True)
    return misses


EMBED_STAND_IN_SECONDS = 0.01
"""How long before its vector a SearchAhead search is sent: about the query's
embedding time on this machine (the miss's `embed` stage)."""
AHEAD = "hybrid, keyword leg run ahead (`SearchAhead`), from the vector to the results"


async def search_ahead(
    retrieval: retrieval_pb2_grpc.RetrievalServiceStub,
    request: retrieval_pb2.SearchRequest,
    vector: embedding_pb2.Vector,
) -> float:
    """Seconds from sending the vector to the results of a SearchAhead call whose
    search went out `EMBED_STAND_IN_SECONDS` before, as the query service does."""
    call = retrieval.SearchAhead()
    await call.write(retrieval_pb2.SearchAheadRequest(search=request))
    await asyncio.sleep(EMBED_STAND_IN_SECONDS)
    start = time.perf_counter()
    await call.write(retrieval_pb2.SearchAheadRequest(vector=vector))
    await call.done_writing()
    await call
    return time.perf_counter() - start


async def measure_search(
    platform: Platform, claims: Sequence[str], top_k: int
) -> dict[str, list[float]]:
    """Per claim, each mode through Search, then the hybrid search through
    SearchAhead; from an asyncio client, as the query service calls. Every
    search starts after `EMBED_STAND_IN_SECONDS` of quiet, as in a miss (the
    retrieval service idles while the question is embedded), so that the
    modes and SearchAhead are timed alike."""
    settings = platform.settings
    caller = common_pb2.Caller(tenant=DEFAULT_TENANT)
    seconds: dict[str, list[float]] = {mode: [] for mode in [*MODES, AHEAD]}
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
                spent: dict[str, float] = {}
                for name, mode in MODES.items():
                    request = retrieval_pb2.SearchRequest(
                        vector=vector, top_k=top_k, query_text=claim, mode=mode, caller=caller
                    )
                    await asyncio.sleep(EMBED_STAND_IN_SECONDS)  # idle, as during a miss's embed
                    start = time.perf_counter()
                    await retrieval.Search(request, timeout=30)
                    spent[name] = time.perf_counter() - start
                request = retrieval_pb2.SearchRequest(
                    top_k=top_k, query_text=claim, mode=MODES["hybrid"], caller=caller
                )
                spent[AHEAD] = await search_ahead(retrieval, request, vector)
                if round_ == "measured":
                    for name, value in spent.items():
                        seconds[name].append(value)
    return seconds


# --------------------------------------------------------------------------- report


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def row(name: str, values: Sequence[float]) -> str:
    return f"| {name} | {ms(percentile(values, 50))} | {ms(percentile(values, 95))} |"


def verdict(values: Sequence[float]) -> str:
    p50 = percentile(values, 50)
    return f"{ms(p50)}, target {'met' if p50 < HIT_TARGET_SECONDS else 'NOT met'}"


def report(
    documents: int,
    asks: Asks,
    searches: dict[str, list[float]],
    ahead: dict[bool, list[float]],
    top_k: int,
) -> str:
    return "\n".join(
        [
            f"Measured {dt.date.today():%Y-%m-%d} on {pyplatform.machine()}, "
            f"{usable_cpus()} CPUs, Python {pyplatform.python_version()}: {documents} "
            f"SciFact abstracts indexed; {len(asks.answered)} claims answered (of "
            f"{asks.asked} asked; declined answers are not cached), each asked as a miss "
            "then at once as a hit, one at a time; then, after a restart of the retrieval "
            "service (which ends the query service's lease session), each again as a hit; "
            f"then, more than {TIMED_LEASE_SECONDS:.0f} s later (a timed lease's length), "
            "each again as a hit (`make bench-cache`).",
            "",
            "Ask through the REST gateway (client side):",
            "",
            "| | p50 | p95 |",
            "|---|---|---|",
            row("miss (`bypass_cache`: embed, retrieve, generate, verify, store)", asks.miss),
            row(
                "hit, cited versions from the lease session's leases "
                f"({len(asks.hit['lease'])} hits)",
                asks.hit["lease"],
            ),
            row("of which the hit's `cache` stage in the query service", asks.cache_stage["lease"]),
            row(
                "hit, cited versions checked with the retrieval service: first hits after "
                f"its restart ({len(asks.hit['retrieval'])} hits)",
                asks.hit["retrieval"],
            ),
            row("of which the hit's `cache` stage", asks.cache_stage["retrieval"]),
            row("leased hit over gRPC, `QueryService.Ask` (no gateway)", asks.hit_grpc),
            row("`GET /v1/documents/{id}` through the gateway", asks.document_http),
            row("the `RetrievalService.LookupDocuments` behind it, over gRPC", asks.document_grpc),
            "",
            f"Hit p50 against the 5 ms target: leased {verdict(asks.hit['lease'])}; checked "
            f"{verdict(asks.hit['retrieval'])}. Hit / miss at p50: "
            f"{percentile(asks.hit['lease'], 50) / percentile(asks.miss, 50):.3f} (leased), "
            f"{percentile(asks.hit['retrieval'], 50) / percentile(asks.miss, 50):.3f} "
            "(checked). The gateway's own share "
            "(document read through it minus the same read over gRPC) is "
            f"{ms(percentile(asks.document_http, 50) - percentile(asks.document_grpc, 50))} "
            "at p50.",
            "",
            f"`RetrievalService.Search` over gRPC, top_k {top_k}, the same claims "
            "(vectors embedded beforehand; modes interleaved per claim, after a warm-up round; "
            f"each search after {EMBED_STAND_IN_SECONDS * 1000:.0f} ms of quiet, as in a miss); "
            "last row: the hybrid search through `SearchAhead`, its search sent "
            f"{EMBED_STAND_IN_SECONDS * 1000:.0f} ms before its vector (a stand-in for the "
            "query's embedding), timed from the vector on:",
            "",
            "| mode | p50 | p95 |",
            "|---|---|---|",
            *(row(name, values) for name, values in searches.items()),
            "",
            *ahead_section(ahead),
        ]
    )


def ahead_section(ahead: dict[bool, list[float]]) -> list[str]:
    """The A/B of misses with the keyword leg run ahead and without."""
    on_by_default = QuerySettings().search_ahead()  # auto, as resolved on this machine
    default = {
        setting: " (default)" if setting == on_by_default else "" for setting in (True, False)
    }
    return [
        "Misses through the gateway with the keyword leg run ahead "
        "(`RAG_QUERY_SEARCH_AHEAD`) and without, the query service restarted with "
        f"each in turn, {AHEAD_ROUNDS} alternating rounds of every claim, every "
        "question embedded afresh (the embedding cache off, as for a new question):",
        "",
        "| miss | p50 | p95 |",
        "|---|---|---|",
        row(f"keyword leg run ahead, while the question is embedded{default[True]}", ahead[True]),
        row(f"one `Search` once the question is embedded{default[False]}", ahead[False]),
        "",
        "Ahead / one call at p50: "
        f"{percentile(ahead[True], 50) / percentile(ahead[False], 50):.3f}.",
    ]


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
    parser.add_argument(
        "--ahead-only",
        action="store_true",
        help="only the misses with the keyword leg run ahead and without (printed, not written)",
    )
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
        if args.ahead_only:
            with closing(GatewayClient(platform.address("gateway"))) as gateway:
                answered = [c for c in claims if not post_ask(gateway, c, bypass=True)["declined"]]
            ahead = measure_misses_ahead(platform, answered[: args.questions])
            print(f"{usable_cpus()} CPUs", *ahead_section(ahead), sep="\n")
            return 0
        say(f"{documents} documents indexed; asking through the gateway")
        asks = measure_asks(platform, claims, args.questions)
        say("searching in each mode")
        searches = asyncio.run(measure_search(platform, asks.answered, top_k))
        say("misses with the keyword leg run ahead, and without")
        ahead = measure_misses_ahead(platform, asks.answered)
    text = report(documents, asks, searches, ahead, top_k)
    print(text)
    if args.write:
        write(args.write, text)
        say(f"figures written to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
