"""`ragctl eval retrieval DIR --split NAME`: retrieval quality per mode on a BEIR set.

The directory is laid out as BEIR publishes its sets (``corpus.jsonl`` with
``_id``, ``title``, ``text``; ``queries.jsonl`` with ``_id``, ``text``;
``qrels/NAME.tsv`` with a header, then query id, corpus id, relevance), e.g.
``shared/eval/scifact`` with split ``train``. The command

1. writes every corpus entry to ``CACHE/<_id>.txt`` as "title, blank line,
   text" (files whose content is unchanged are not rewritten) and ingests the
   folder through IngestionService.IngestUris, so the corpus goes through the
   same parse, chunk and embed path as any document; unchanged documents are
   skipped by hash, so a re-run only searches. Ingestion reads the files by
   path: the cache must be on a file system the ingestion service sees. It
   goes into tenant ``eval`` (unless --tenant or RAG_TENANT names another),
   so other documents neither crowd the rankings nor see the corpus.
2. embeds the judged queries once (EmbeddingService) and searches each one in
   every requested mode with top_k 100 (RetrievalService.Search, no MMR),
3. maps chunk hits to corpus ids by the file name stem of their source URI
   (chunks of one document count once, at their best rank; hits outside the
   cache folder are dropped), and reports nDCG@10, recall@10, recall@100 and
   MRR@10 per mode, for all queries and for two halves split by a hash of the
   query id ("tune" and "held_out"), plus Search latency p50/p95 per mode as
   the client saw it (queries one at a time; the embedding is not included).
4. sweeps reciprocal-rank fusion of the dense and keyword runs in Python
   (`services.retrieval.fusion.rrf`, the engine's formula) over RRF k and leg
   size, picks the best setting on the tune half by nDCG@10 and reports it on
   the held-out half, so the fusion defaults are chosen on queries they are
   then not judged on.

Results on SciFact are in docs/retrieval.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from rich.console import Console
from rich.table import Table

from ragplatform.v1 import common_pb2, embedding_pb2, ingestion_pb2, retrieval_pb2
from services.retrieval.fusion import rrf
from services.retrieval.metrics import Qrels, evaluate_run
from services.runtime.clients import PlatformClients
from services.runtime.settings import PlatformSettings

SEARCH_TOP_K = 100
"""Hits per query and mode: recall@100 needs 100, and the fusion sweep reuses them."""
EMBED_BATCH = 64
EVAL_TIMEOUT_SECONDS = 3600.0
"""Deadline of each call; ingesting a 5,000-document corpus on 2 cores takes minutes."""
MODES: Mapping[str, common_pb2.RetrievalMode.ValueType] = {
    "dense": common_pb2.RETRIEVAL_MODE_DENSE,
    "keyword": common_pb2.RETRIEVAL_MODE_KEYWORD,
    "hybrid": common_pb2.RETRIEVAL_MODE_HYBRID,
}
RRF_KS = (1, 2, 5, 10, 20, 40, 60, 100)
LEG_SIZES = (20, 40, 100)
HALVES = ("tune", "held_out")


@dataclass(frozen=True)
class BeirSet:
    """A BEIR directory read into memory."""

    corpus: dict[str, tuple[str, str]]  # _id -> (title, text)
    queries: dict[str, str]  # _id -> text, judged queries only
    qrels: dict[str, dict[str, int]]


def add_command(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    tenant: str,
) -> None:
    """Register `eval retrieval` on the `eval` command's subparsers; it acts for
    `tenant` unless --tenant or RAG_TENANT says otherwise."""
    parser = actions.add_parser(
        "retrieval", parents=[common], help="nDCG/recall/MRR per retrieval mode on a BEIR set"
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="BEIR layout directory")
    parser.add_argument("--split", default="test", help="qrels/SPLIT.tsv (default test)")
    parser.add_argument(
        "--modes",
        default="dense,keyword,hybrid",
        help="comma-separated modes to measure (default dense,keyword,hybrid)",
    )
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="first N queries")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where corpus .txt files are written (default DATA_DIR/eval/<DIR name>)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=cmd_eval_retrieval, service="retrieval", tenant_fallback=tenant)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or "_id" not in row or "text" not in row:
                raise ValueError(f"{path}:{number}: expected an object with _id and text")
            rows.append(row)
    return rows


def load_beir(directory: Path, split: str, limit: int = 0) -> BeirSet:
    """Read corpus, judged queries (first `limit` if set) and qrels of `split`."""
    corpus = {
        str(row["_id"]): (str(row.get("title", "")), str(row["text"]))
        for row in _read_jsonl(directory / "corpus.jsonl")
    }
    qrels_path = directory / "qrels" / f"{split}.tsv"
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as lines:
        next(lines, None)  # header
        for number, line in enumerate(lines, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise ValueError(f"{qrels_path}:{number}: expected query-id, corpus-id, score")
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    texts = {str(row["_id"]): str(row["text"]) for row in _read_jsonl(directory / "queries.jsonl")}
    judged = [q for q in texts if q in qrels]
    if limit:
        judged = judged[:limit]
    if not judged:
        raise ValueError(f"{directory}: no query of queries.jsonl has qrels in {qrels_path}")
    return BeirSet(corpus, {q: texts[q] for q in judged}, {q: qrels[q] for q in judged})


def write_corpus(corpus: Mapping[str, tuple[str, str]], cache: Path) -> int:
    """Write `<_id>.txt` files (title, blank line, text); return how many changed."""
    cache.mkdir(parents=True, exist_ok=True)
    changed = 0
    for corpus_id, (title, text) in corpus.items():
        if "/" in corpus_id or corpus_id in ("", ".", ".."):
            raise ValueError(f"corpus _id {corpus_id!r} cannot be a file name")
        path = cache / f"{corpus_id}.txt"
        content = f"{title}\n\n{text}" if title else text
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            changed += 1
    return changed


def corpus_id_of(source_uri: str, cache: Path) -> str | None:
    """The corpus id of a chunk from `cache` (absolute; its file name stem), else None."""
    parsed = urlparse(source_uri)
    if parsed.scheme != "file":
        return None
    path = Path(unquote(parsed.path))
    return path.stem if path.parent == cache and path.suffix == ".txt" else None


def dedupe(ids: Sequence[str | None]) -> list[str]:
    """Corpus ids in first-seen order (a document ranks at its best chunk), Nones dropped."""
    return list(dict.fromkeys(i for i in ids if i is not None))


def query_half(query_id: str) -> str:
    """Stable assignment of a query to the tune or held-out half."""
    return HALVES[hashlib.sha256(query_id.encode()).digest()[0] % 2]


def split_report(run: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, dict[str, float]]:
    """Metrics for all queries and for each half."""
    report = {"all": evaluate_run(run, qrels)}
    for half in HALVES:
        part = {q: rel for q, rel in qrels.items() if query_half(q) == half}
        report[half] = evaluate_run(run, part)
    return report


def sweep_fusion(
    dense: Mapping[str, Sequence[str]],
    keyword: Mapping[str, Sequence[str]],
    to_corpus: Mapping[str, str | None],
    qrels: Qrels,
) -> dict[str, Any]:
    """RRF of chunk-level dense and keyword runs over (k, leg size); best on the tune half.

    Runs are chunk ids best first; each leg is cut to the leg size before
    fusing, as the engine's prefetches are.
    """
    tune = {q: rel for q, rel in qrels.items() if query_half(q) == "tune"}
    held = {q: rel for q, rel in qrels.items() if query_half(q) == "held_out"}
    grid = []
    for k in RRF_KS:
        for leg in LEG_SIZES:
            run = {
                q: dedupe(
                    [to_corpus[c] for c, _ in rrf([dense[q][:leg], keyword.get(q, [])[:leg]], k)]
                )
                for q in dense
            }
            grid.append((k, leg, evaluate_run(run, tune), evaluate_run(run, held)))
    best = max(grid, key=lambda row: row[2]["ndcg_at_10"])
    return {
        "best_on_tune": {"rrf_k": best[0], "leg_size": best[1]},
        "tune": best[2],
        "held_out": best[3],
        "grid_ndcg_at_10": [
            {"rrf_k": k, "leg_size": leg, "tune": t["ndcg_at_10"], "held_out": h["ndcg_at_10"]}
            for k, leg, t, h in grid
        ],
    }


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else 0.0


async def _ingest(clients: PlatformClients, cache: Path, tenant: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    call = clients.ingestion.IngestUris(
        ingestion_pb2.IngestUrisRequest(uris=[cache.as_uri()], tenant=tenant)
    )
    async for event in call:
        if event.WhichOneof("event") == "result":
            counts[ingestion_pb2.IngestResult.Status.Name(event.result.status)] += 1
    return counts


async def _embed(clients: PlatformClients, texts: Sequence[str]) -> list[embedding_pb2.Vector]:
    vectors: list[embedding_pb2.Vector] = []
    for start in range(0, len(texts), EMBED_BATCH):
        reply = await clients.embedding.EmbedQueries(
            embedding_pb2.EmbedQueriesRequest(texts=texts[start : start + EMBED_BATCH])
        )
        vectors.extend(reply.vectors)
    return vectors


async def evaluate_retrieval(
    clients: PlatformClients, data: BeirSet, cache: Path, modes: Sequence[str], tenant: str
) -> dict[str, Any]:
    """Search every query in every mode as `tenant`; metrics, latency and the fusion sweep."""
    caller = common_pb2.Caller(tenant=tenant)
    query_ids = list(data.queries)
    vectors = await _embed(clients, [data.queries[q] for q in query_ids])
    chunk_runs: dict[str, dict[str, list[str]]] = {mode: {} for mode in modes}
    to_corpus: dict[str, str | None] = {}
    report: dict[str, Any] = {"modes": {}}
    for mode in modes:
        latencies = []
        for query_id, vector in zip(query_ids, vectors, strict=True):
            started = time.perf_counter()
            found = await clients.retrieval.Search(
                retrieval_pb2.SearchRequest(
                    vector=vector,
                    top_k=SEARCH_TOP_K,
                    query_text=data.queries[query_id],
                    mode=MODES[mode],
                    caller=caller,
                )
            )
            latencies.append(time.perf_counter() - started)
            for hit in found.results:
                to_corpus[hit.chunk.chunk_id] = corpus_id_of(hit.chunk.source_uri, cache)
            chunk_runs[mode][query_id] = [hit.chunk.chunk_id for hit in found.results]
        run = {q: dedupe([to_corpus[c] for c in chunks]) for q, chunks in chunk_runs[mode].items()}
        report["modes"][mode] = {
            **split_report(run, data.qrels),
            "latency_p50_seconds": round(statistics.median(latencies), 4),
            "latency_p95_seconds": round(_percentile(latencies, 0.95), 4),
        }
    if "dense" in modes and "keyword" in modes:
        report["fusion_sweep"] = sweep_fusion(
            chunk_runs["dense"], chunk_runs["keyword"], to_corpus, data.qrels
        )
    return report


def cmd_eval_retrieval(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Ingest the corpus (unchanged documents are skipped), search, print the metrics."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        err.print(f"--modes: unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
        return 2
    directory: Path = args.directory
    data = load_beir(directory, args.split, args.limit)
    settings = PlatformSettings()
    timeout = args.timeout or EVAL_TIMEOUT_SECONDS
    settings = settings.model_copy(update={"rpc_timeout_seconds": timeout})
    default_cache = settings.data_dir / "eval" / directory.resolve().name
    cache: Path = (args.cache_dir or default_cache).resolve()
    rewritten = write_corpus(data.corpus, cache)

    async def work() -> dict[str, Any]:
        clients = PlatformClients(settings)
        try:
            ingested = await _ingest(clients, cache, args.tenant)
            report = await evaluate_retrieval(clients, data, cache, modes, args.tenant)
        finally:
            await clients.close()
        return {
            "dataset": str(directory),
            "split": args.split,
            "tenant": args.tenant,
            "queries": len(data.queries),
            "corpus": len(data.corpus),
            "files_rewritten": rewritten,
            "ingested": dict(ingested),
            **report,
        }

    report = asyncio.run(work())
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
        return 0
    table = Table(title=f"retrieval on {directory} ({args.split}, {len(data.queries)} queries)")
    for column in ("mode", "half", "nDCG@10", "recall@10", "recall@100", "MRR@10"):
        table.add_column(column, justify="left" if column in ("mode", "half") else "right")
    for mode, figures in report["modes"].items():
        for half in ("all", *HALVES):
            row = figures[half]
            table.add_row(
                mode,
                half,
                *(
                    str(row[m])
                    for m in ("ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10")
                ),
            )
    out.print(table)
    if "fusion_sweep" in report:
        sweep = report["fusion_sweep"]
        out.print(f"fusion sweep, best on tune: {sweep['best_on_tune']}")
        out.print(f"  tune {sweep['tune']}\n  held out {sweep['held_out']}")
    return 0
