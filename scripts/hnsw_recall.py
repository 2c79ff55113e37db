"""HNSW accuracy on real chunk vectors: recall@10 against exact search, and nDCG cost.

Usage (the platform stopped, so its index is free to open):

    python -m scripts.hnsw_recall DATA_DIR/index BEIR_DIR --split train QUERY_VECTORS.npy

QUERY_VECTORS.npy holds one embedded query per judged query of the split, in
the order `services.cli.eval_retrieval.load_beir` returns them (`--save-queries`
writes it through the running embedding service). Every chunk of one tenant
(--tenant, default "eval": where `ragctl eval retrieval` ingests the corpus) is
copied into a fresh store per HNSW setting, the index is built (thresholds
lowered so the graph covers every vector), and each query is searched exactly
and through the graph. Results are in docs/retrieval.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from qdrant_edge import EdgeShard, ScrollRequest

from ragplatform.v1 import embedding_pb2, embedding_pb2_grpc
from services.cli.eval_retrieval import corpus_id_of, dedupe, load_beir
from services.common.tenancy import Caller
from services.retrieval.edge import DENSE, EdgeVectorStore, HnswSettings
from services.retrieval.metrics import evaluate_run
from services.retrieval.store import DocumentRecord, SearchFilter, StoredChunk

SETTINGS = [
    ("defaults m=16 ef_construct=100 ef=128", HnswSettings()),
    ("m=16 ef_construct=100 ef=32", HnswSettings(ef=32)),
    ("m=16 ef_construct=100 ef=64", HnswSettings(ef=64)),
    ("m=16 ef_construct=200 ef=256", HnswSettings(ef_construct=200, ef=256)),
    ("m=32 ef_construct=200 ef=128", HnswSettings(m=32, ef_construct=200)),
]


def save_queries(beir: Path, split: str, address: str, out: Path) -> None:
    data = load_beir(beir, split)
    texts = list(data.queries.values())
    rows: list[list[float]] = []
    with grpc.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        for start in range(0, len(texts), 64):
            reply = stub.EmbedQueries(
                embedding_pb2.EmbedQueriesRequest(texts=texts[start : start + 64]), timeout=300
            )
            rows.extend(list(v.values) for v in reply.vectors)
    np.save(out, np.asarray(rows, dtype=np.float32))


def read_chunks(index: Path, tenant: str) -> dict[str, list[tuple[StoredChunk, list[float]]]]:
    """The chunks of `tenant` with their dense vectors, by document id."""
    shard = EdgeShard.load(str(index / "chunks"))
    by_document: dict[str, list[tuple[StoredChunk, list[float]]]] = defaultdict(list)
    offset: Any = None
    try:
        while True:
            records, offset = shard.scroll(
                ScrollRequest(offset=offset, limit=1024, with_payload=True, with_vector=[DENSE])
            )
            for r in records:
                chunk = StoredChunk(**(r.payload or {}))
                if chunk.tenant != tenant:
                    continue
                vector = r.vector[DENSE] if isinstance(r.vector, dict) else r.vector
                by_document[chunk.document_id].append((chunk, list(vector)))  # type: ignore[arg-type]
            if offset is None:
                return by_document
    finally:
        shard.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("beir", type=Path)
    parser.add_argument("queries", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--tenant", default="eval", help="whose chunks to copy (default eval)")
    parser.add_argument("--save-queries", metavar="EMBEDDING_ADDR", default="")
    args = parser.parse_args()
    if args.save_queries:
        save_queries(args.beir, args.split, args.save_queries, args.queries)
        return
    data = load_beir(args.beir, args.split)
    documents = read_chunks(args.index, args.tenant)
    if not documents:
        raise SystemExit(f"{args.index}: no chunk of tenant {args.tenant!r}")
    caller = Caller(args.tenant)
    first = next(iter(documents.values()))[0][0].source_uri
    cache_dir = Path(first.removeprefix("file://")).parent
    vectors = np.load(args.queries).tolist()
    report = {}
    for name, settings in SETTINGS:
        lowered = HnswSettings(
            m=settings.m,
            ef_construct=settings.ef_construct,
            ef=settings.ef,
            full_scan_threshold_kb=1,
            indexing_threshold_kb=1,
        )
        with (
            tempfile.TemporaryDirectory() as tmp,
            EdgeVectorStore.open(Path(tmp), len(vectors[0]), lowered) as store,
        ):
            for document_id, chunks in documents.items():
                first = chunks[0][0]
                record = DocumentRecord(
                    document_id,
                    "",
                    "",
                    "",
                    "",
                    len(chunks),
                    0,
                    0,
                    tenant=first.tenant,
                    access_labels=first.access_labels,
                    tags=first.tags,
                    document_date_unix=first.document_date_unix,
                )
                store.replace_document(record, [c for c, _ in chunks], [v for _, v in chunks])
            store.optimize()
            indexed = store.indexed_vector_count()
            recalls: list[float] = []
            runs: dict[str, dict[str, list[str]]] = {"exact": {}, "hnsw": {}}
            for query_id, vector in zip(data.queries, vectors, strict=True):
                exact = store.search(caller, vector, 100, SearchFilter(), exact=True)
                approx = store.search(caller, vector, 100, SearchFilter())
                top = {h.chunk.chunk_id for h in exact[:10]}
                recalls.append(len(top & {h.chunk.chunk_id for h in approx[:10]}) / 10)
                for kind, hits in (("exact", exact), ("hnsw", approx)):
                    runs[kind][query_id] = dedupe(
                        [corpus_id_of(h.chunk.source_uri, cache_dir) for h in hits]
                    )
        report[name] = {
            "indexed_vectors": indexed,
            "recall_at_10_vs_exact": round(float(np.mean(recalls)), 4),
            "ndcg_at_10_exact": evaluate_run(runs["exact"], data.qrels)["ndcg_at_10"],
            "ndcg_at_10_hnsw": evaluate_run(runs["hnsw"], data.qrels)["ndcg_at_10"],
        }
        print(name, json.dumps(report[name]), flush=True)


if __name__ == "__main__":
    main()
