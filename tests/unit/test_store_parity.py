"""Parity of the backends on the same data: the Qdrant server store (qdrant.py,
on qdrant-client's local mode) and the Vector Search store (vertex.py, on the
fake and the Firestore emulator, exact) each rank like the embedded engine
(edge.py) in every mode, show every caller the same chunks under every filter,
keep the same registry and raise the same errors.

What each backend must do on its own is the contract, tests/contract/test_vector_store.py.
"""

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.common.errors import PlatformError
from services.retrieval.store import (
    MAX_TOP_K,
    Caller,
    DocumentRecord,
    RetrievalMode,
    SearchFilter,
    SearchHit,
    SearchOptions,
    StoredChunk,
    VectorStore,
)
from tests.contract.vector_store import (
    ALL,
    QDRANT_LOCAL_MODE_WARNINGS,
    STORE_FACTORIES,
    Document,
    scratch_directory,
)

pytestmark = QDRANT_LOCAL_MODE_WARNINGS

PARITY_DIM = 32
DAY_ZERO = 1_600_000_000
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "pe", "du", "gar", "fin")
WORDS = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES[:6]]
"""864 made-up words: no stop words, and stemming cannot merge two of them."""
CALLERS = (
    Caller("acme"),
    Caller("acme", ("hr",)),
    Caller("acme", ("legal", "finance")),
    Caller("globex"),
    Caller("globex", ("hr",)),
)


def _zipf_text(rng: np.random.Generator, count: int) -> str:
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    picks = rng.choice(len(WORDS), size=count, p=weights / weights.sum())
    return " ".join(WORDS[i] for i in picks)


def synthetic_corpus() -> list[Document]:
    """80 documents of 4 chunks in two tenants (ten ids in both), with access
    labels, tags, dates (some undated), two media types, Zipf-distributed text
    and clustered vectors: deterministic, and shaped like real data."""
    rng = np.random.default_rng(2024)
    documents = []
    for i in range(80):
        # Documents 70-79 reuse the ids of 0-9 in the other tenant.
        tenant = "globex" if (i % 70 % 3 == 0) != (i >= 70) else "acme"
        document_id = f"doc-{i % 70:02d}"
        labels = {1: ("hr",), 2: ("hr", "legal")}.get(i % 5, ())
        tags = {0: ("policy",), 1: ("faq", "policy")}.get(i % 4, ())
        date = 0 if i % 6 == 0 else DAY_ZERO + i * 86_400
        media_type = "application/pdf" if i % 2 else "text/plain"
        title = _zipf_text(rng, 3)
        center = rng.normal(size=PARITY_DIM)
        chunks, vectors = [], []
        for ordinal in range(4):
            chunk_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{document_id}/{ordinal}"))
            chunks.append(
                StoredChunk(
                    chunk_id=chunk_id,
                    document_id=document_id,
                    ordinal=ordinal,
                    text=_zipf_text(rng, int(rng.integers(20, 60))),
                    title=title,
                    section="",
                    page=1,
                    char_start=ordinal * 500,
                    char_end=ordinal * 500 + 499,
                    source_uri=f"s3://bucket/{tenant}/{document_id}",
                    media_type=media_type,
                    token_count=50,
                    tenant=tenant,
                    access_labels=labels,
                    tags=tags,
                    document_date_unix=date,
                )
            )
            row = center + 0.4 * rng.normal(size=PARITY_DIM)
            vectors.append([float(x) for x in row / np.linalg.norm(row)])
        record = DocumentRecord(
            document_id=document_id,
            title=title,
            source_uri=f"s3://bucket/{tenant}/{document_id}",
            media_type=media_type,
            content_sha256=f"{i:064x}",
            chunk_count=4,
            size_bytes=2000,
            indexed_at_unix=1_700_000_000 + i,
            tenant=tenant,
            access_labels=labels,
            tags=tags,
            document_date_unix=date,
        )
        documents.append((record, chunks, vectors))
    return documents


def parity_queries(corpus: list[Document], count: int) -> list[tuple[list[float], str]]:
    """Queries near a random chunk: its vector plus noise, and three of its words."""
    rng = np.random.default_rng(7)
    queries = []
    for _ in range(count):
        _, chunks, vectors = corpus[int(rng.integers(len(corpus)))]
        index = int(rng.integers(len(chunks)))
        row = np.asarray(vectors[index]) + 0.3 * rng.normal(size=PARITY_DIM)
        words = chunks[index].text.split()
        text = " ".join(words[int(i)] for i in rng.integers(len(words), size=3))
        queries.append(([float(x) for x in row / np.linalg.norm(row)], text))
    return queries


OTHERS = ("qdrant", "vertex")
"""The backends compared with the embedded engine."""


@contextmanager
def both_backends(dimension: int, other: str) -> Iterator[tuple[VectorStore, VectorStore]]:
    """An empty embedded store and an empty `other` store of `dimension`."""
    with (
        scratch_directory() as directory,
        closing(STORE_FACTORIES["edge"](directory)(dimension)) as edge,
        closing(STORE_FACTORIES[other](directory)(dimension)) as server,
    ):
        yield edge, server


@pytest.fixture(scope="module", params=OTHERS)
def other(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def parity_stores(other: str) -> Iterator[tuple[VectorStore, VectorStore]]:
    with both_backends(PARITY_DIM, other) as (edge, server):
        for document in synthetic_corpus():
            assert edge.replace_document(*document) == server.replace_document(*document)
        yield edge, server


def _ids(hits: list[SearchHit]) -> list[str]:
    return [f"{h.chunk.tenant}/{h.chunk.chunk_id}" for h in hits]


def _overlap(left: list[SearchHit], right: list[SearchHit]) -> float:
    """Share of the longer result found in the other (1.0 for two empty results)."""
    if not left and not right:
        return 1.0
    return len(set(_ids(left)) & set(_ids(right))) / max(len(left), len(right))


def test_parity_of_dense_keyword_and_hybrid_rankings(
    parity_stores: tuple[VectorStore, VectorStore],
) -> None:
    """Dense: identical top 10 and cosines (both scan exactly). Keyword and
    hybrid: both compute the same BM25 vectors and the same IDF (the BM25 score
    lists are equal), so the top 10 differ only where equal scores or fused
    ranks tie at the cut-off. Measured over these 150 searches: keyword overlap
    0.997 (135 identical lists, the lowest 0.9), hybrid 0.990 (lowest 0.9)."""
    edge, server = parity_stores
    overlaps: dict[RetrievalMode, list[float]] = {mode: [] for mode in RetrievalMode}
    for vector, text in parity_queries(synthetic_corpus(), 30):
        for caller in CALLERS:
            for mode in RetrievalMode:
                options = SearchOptions(mode=mode, text=text)
                ours = server.search(caller, vector, 10, ALL, options)
                theirs = edge.search(caller, vector, 10, ALL, options)
                assert len(ours) == len(theirs) == 10
                overlaps[mode].append(_overlap(ours, theirs))
                if mode is RetrievalMode.DENSE:
                    assert _ids(ours) == _ids(theirs)
                    assert [h.score for h in ours] == pytest.approx(
                        [h.score for h in theirs], abs=1e-5
                    )
                    assert [h.chunk for h in ours] == [h.chunk for h in theirs]
            keyword = SearchOptions(mode=RetrievalMode.KEYWORD, text=text)
            ours = server.search(caller, [], 10, ALL, keyword)
            theirs = edge.search(caller, [], 10, ALL, keyword)
            assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], rel=1e-4)
    assert min(overlaps[RetrievalMode.DENSE]) == 1.0
    assert np.mean(overlaps[RetrievalMode.KEYWORD]) >= 0.98
    assert np.mean(overlaps[RetrievalMode.HYBRID]) >= 0.98


def test_parity_with_mmr(parity_stores: tuple[VectorStore, VectorStore]) -> None:
    edge, server = parity_stores
    for vector, text in parity_queries(synthetic_corpus(), 10):
        options = SearchOptions(mode=RetrievalMode.DENSE, text=text, mmr_lambda=0.5)
        assert _ids(server.search(CALLERS[1], vector, 5, ALL, options)) == _ids(
            edge.search(CALLERS[1], vector, 5, ALL, options)
        )


PARITY_FILTERS = [
    SearchFilter(),
    SearchFilter(tags=("faq",)),
    SearchFilter(tags=("policy", "faq")),
    SearchFilter(media_types=("application/pdf",)),
    SearchFilter(document_ids=("doc-01", "doc-02", "doc-33", "missing")),
    SearchFilter(source_uris=("s3://bucket/acme/doc-04", "s3://bucket/globex/doc-03")),
    SearchFilter(date_from_unix=DAY_ZERO + 20 * 86_400),
    SearchFilter(date_to_unix=DAY_ZERO + 30 * 86_400),
    SearchFilter(
        date_from_unix=1_600_000_000 + 10 * 86_400, date_to_unix=1_600_000_000 + 50 * 86_400
    ),
    SearchFilter(date_from_unix=-1, tags=("policy",), media_types=("text/plain",)),
]


def visible(chunk: StoredChunk, caller: Caller, search_filter: SearchFilter) -> bool:
    """The tenancy and filter rules of the contract, as a test oracle."""
    f = search_filter
    dated = chunk.document_date_unix != 0 and (
        (f.date_from_unix is None or chunk.document_date_unix >= f.date_from_unix)
        and (f.date_to_unix is None or chunk.document_date_unix <= f.date_to_unix)
    )
    return (
        chunk.tenant == caller.tenant
        and (not chunk.access_labels or bool(set(chunk.access_labels) & set(caller.access_labels)))
        and (not f.document_ids or chunk.document_id in f.document_ids)
        and (not f.media_types or chunk.media_type in f.media_types)
        and (not f.source_uris or chunk.source_uri in f.source_uris)
        and (not f.tags or bool(set(chunk.tags) & set(f.tags)))
        and (dated or (f.date_from_unix is None and f.date_to_unix is None))
    )


@pytest.mark.parametrize("search_filter", PARITY_FILTERS)
def test_parity_of_tenancy_and_filters(
    parity_stores: tuple[VectorStore, VectorStore], search_filter: SearchFilter
) -> None:
    """Both backends show every caller the same chunks under every filter, and
    only chunks the rules allow: dense results are identical (cosines do not
    tie); keyword results have identical BM25 scores, and keyword and hybrid
    results the same chunks but where equal scores (or fused ranks) tie at
    the cut-off."""
    edge, server = parity_stores
    corpus = synthetic_corpus()
    expected = {
        caller: sum(visible(c, caller, search_filter) for _, chunks, _ in corpus for c in chunks)
        for caller in CALLERS
    }
    assert sum(expected.values()) > 0  # the filter matches something
    vector, text = parity_queries(corpus, 1)[0]
    for caller in CALLERS:
        dense = server.search(caller, vector, MAX_TOP_K, search_filter)
        assert _ids(dense) == _ids(edge.search(caller, vector, MAX_TOP_K, search_filter))
        assert len(dense) == min(MAX_TOP_K, expected[caller])
        keyword = SearchOptions(mode=RetrievalMode.KEYWORD, text=text)
        ours = server.search(caller, [], MAX_TOP_K, search_filter, keyword)
        theirs = edge.search(caller, [], MAX_TOP_K, search_filter, keyword)
        assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], rel=1e-4)
        for options in (keyword, replace(keyword, mode=RetrievalMode.HYBRID)):
            ours = server.search(caller, vector, MAX_TOP_K, search_filter, options)
            theirs = edge.search(caller, vector, MAX_TOP_K, search_filter, options)
            assert len(ours) == len(theirs)
            assert _overlap(ours, theirs) >= 0.95
        for hits in (dense, ours):
            assert all(visible(h.chunk, caller, search_filter) for h in hits)


def test_parity_of_registry_and_stats(parity_stores: tuple[VectorStore, VectorStore]) -> None:
    edge, server = parity_stores
    assert replace(server.stats(), backend="") == replace(edge.stats(), backend="")
    for tenant in ("acme", "globex", "initech"):
        assert server.list_documents(tenant, 1000) == edge.list_documents(tenant, 1000)
        assert server.list_documents(tenant, 7, after="doc-10") == edge.list_documents(
            tenant, 7, after="doc-10"
        )
        for document_id in ("doc-01", "doc-03", "doc-33", "missing"):
            assert server.get_document(tenant, document_id) == edge.get_document(
                tenant, document_id
            )
        wanted = [f"doc-{i:02d}" for i in range(0, 80, 3)] + ["missing", "doc-00"]
        for labels in ((), ("hr",), ("legal", "finance")):
            assert server.list_documents(tenant, 1000, "", labels) == edge.list_documents(
                tenant, 1000, "", labels
            )
            caller = Caller(tenant, labels)
            looked_up = server.lookup_documents(caller, wanted)
            assert looked_up == edge.lookup_documents(caller, wanted)
            if tenant != "initech":
                assert looked_up, (tenant, labels)  # the comparison is not vacuous


def test_parity_of_removal(other: str) -> None:
    """Removal on a store of its own (the shared parity stores stay intact)."""
    corpus = synthetic_corpus()[:12]
    with both_backends(PARITY_DIM, other) as (edge, server):
        for document in corpus:
            edge.replace_document(*document)
            server.replace_document(*document)
        for tenant, document_id in (("acme", "doc-01"), ("globex", "doc-03")):
            assert server.remove_document(tenant, document_id) == edge.remove_document(
                tenant, document_id
            )
        assert replace(server.stats(), backend="") == replace(edge.stats(), backend="")
        assert server.list_documents("acme", 100) == edge.list_documents("acme", 100)


BAD_CALLS: list[tuple[str, Callable[[Any], object]]] = [
    ("no tenant", lambda s: s.search(Caller(""), [1.0] * PARITY_DIM, 5, ALL)),
    ("bad tenant", lambda s: s.search(Caller("a/b"), [1.0] * PARITY_DIM, 5, ALL)),
    ("bad label", lambda s: s.search(Caller("acme", (" hr",)), [1.0] * PARITY_DIM, 5, ALL)),
    ("top_k 0", lambda s: s.search(CALLERS[0], [1.0] * PARITY_DIM, 0, ALL)),
    ("top_k", lambda s: s.search(CALLERS[0], [1.0] * PARITY_DIM, MAX_TOP_K + 1, ALL)),
    ("short vector", lambda s: s.search(CALLERS[0], [1.0] * 3, 5, ALL)),
    ("zero vector", lambda s: s.search(CALLERS[0], [0.0] * PARITY_DIM, 5, ALL)),
    ("nan", lambda s: s.search(CALLERS[0], [float("nan")] * PARITY_DIM, 5, ALL)),
    (
        "dates",
        lambda s: s.search(
            CALLERS[0], [1.0] * PARITY_DIM, 5, SearchFilter(date_from_unix=5, date_to_unix=4)
        ),
    ),
    ("bad tag", lambda s: s.search(CALLERS[0], [1.0] * PARITY_DIM, 5, SearchFilter(tags=("",)))),
    (
        "no text",
        lambda s: s.search(CALLERS[0], [], 5, ALL, SearchOptions(mode=RetrievalMode.KEYWORD)),
    ),
    (
        "mmr",
        lambda s: s.search(CALLERS[0], [1.0] * PARITY_DIM, 5, ALL, SearchOptions(mmr_lambda=2)),
    ),
    ("get no id", lambda s: s.get_document("acme", "")),
    ("get no tenant", lambda s: s.get_document("", "doc-01")),
    ("list limit", lambda s: s.list_documents("acme", 0)),
    ("list tenant", lambda s: s.list_documents("", 10)),
    ("remove no id", lambda s: s.remove_document("acme", "")),
    ("remove unknown", lambda s: s.remove_document("acme", "missing")),
    ("remove other tenant's", lambda s: s.remove_document("initech", "doc-01")),
    (
        "replace count",
        lambda s: s.replace_document(
            replace(synthetic_corpus()[1][0], chunk_count=5), *synthetic_corpus()[1][1:]
        ),
    ),
    (
        "replace no tenant",
        lambda s: s.replace_document(replace(synthetic_corpus()[1][0], tenant=""), [], []),
    ),
    (
        "steal a chunk id",
        lambda s: s.replace_document(*_thief()),
    ),
]


def _thief() -> Document:
    """acme's document "thief", whose third chunk has the id of doc-01's third chunk."""
    record, chunks, vectors = synthetic_corpus()[1]
    assert record.document_id == "doc-01"
    stolen = [
        replace(c, document_id="thief", chunk_id=str(uuid.uuid4()) if i != 2 else c.chunk_id)
        for i, c in enumerate(chunks)
    ]
    return replace(record, document_id="thief"), stolen, vectors


@pytest.mark.parametrize(("name", "call"), BAD_CALLS, ids=[name for name, _ in BAD_CALLS])
def test_parity_of_errors(
    parity_stores: tuple[VectorStore, VectorStore], name: str, call: Callable[[Any], object]
) -> None:
    edge, server = parity_stores
    with pytest.raises(PlatformError) as ours:
        call(server)
    with pytest.raises(PlatformError) as theirs:
        call(edge)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"


@pytest.mark.slow
def test_parity_on_scifact_with_real_embeddings(other: str) -> None:
    """300 SciFact abstracts and 100 claims embedded by all-MiniLM-L6-v2: the
    same rankings from both backends (dense identical; measured top-10 overlap
    keyword 1.0, hybrid 0.996, asserted >= 0.98). About a minute on 2 cores."""
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"SciFact is not in {SCIFACT}: clone the repository next to ../shared")
    # Here, not at the top: the model stack takes seconds to import, which only
    # this slow test needs.
    from services.embedding.backends import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder.packaged_minilm()
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as lines:
        abstracts = [json.loads(line) for _, line in zip(range(300), lines, strict=False)]
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as lines:
        claims = [json.loads(line)["text"] for _, line in zip(range(100), lines, strict=False)]
    vectors = embedder.embed([f"{a['title']}\n\n{a['text']}" for a in abstracts], "document")
    queries = embedder.embed(claims, "query")
    dimension = int(vectors.shape[1])
    with both_backends(dimension, other) as (edge, server):
        for abstract, vector in zip(abstracts, vectors, strict=True):
            document_id = f"{abstract['_id']}.txt"
            chunk = StoredChunk(
                chunk_id=str(uuid.uuid5(uuid.NAMESPACE_URL, document_id)),
                document_id=document_id,
                ordinal=0,
                text=abstract["text"],
                title=abstract["title"],
                section="",
                page=1,
                char_start=0,
                char_end=len(abstract["text"]),
                source_uri=f"file:///scifact/{document_id}",
                media_type="text/plain",
                token_count=256,
                tenant="default",
            )
            record = DocumentRecord(
                document_id=document_id,
                title=abstract["title"],
                source_uri=chunk.source_uri,
                media_type="text/plain",
                content_sha256="0" * 64,
                chunk_count=1,
                size_bytes=len(abstract["text"]),
                indexed_at_unix=1_700_000_000,
                tenant="default",
            )
            for store in (server, edge):
                store.replace_document(record, [chunk], [vector.tolist()])
        caller = Caller("default")
        overlaps: dict[RetrievalMode, list[float]] = {mode: [] for mode in RetrievalMode}
        for claim, query in zip(claims, queries, strict=True):
            for mode in RetrievalMode:
                options = SearchOptions(mode=mode, text=claim)
                ours = server.search(caller, query.tolist(), 10, ALL, options)
                theirs = edge.search(caller, query.tolist(), 10, ALL, options)
                overlaps[mode].append(_overlap(ours, theirs))
                if mode is RetrievalMode.DENSE:
                    assert _ids(ours) == _ids(theirs)
        assert min(overlaps[RetrievalMode.DENSE]) == 1.0
        assert np.mean(overlaps[RetrievalMode.KEYWORD]) >= 0.98
        assert np.mean(overlaps[RetrievalMode.HYBRID]) >= 0.98
