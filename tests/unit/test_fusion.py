"""RRF in Python, and hybrid/keyword search in EdgeVectorStore (legs, filters, migration)."""

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from qdrant_edge import (
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    Point,
    UpdateOperation,
)

from services.common.errors import InvalidInputError
from services.common.tenancy import DEFAULT_TENANT, Caller
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.fusion import rrf
from services.retrieval.ranking import best_first, candidate_count
from services.retrieval.schema import DENSE
from services.retrieval.store import (
    DocumentRecord,
    RetrievalMode,
    SearchFilter,
    SearchOptions,
    StoredChunk,
)

TENANT = DEFAULT_TENANT  # the migration test writes points as a pre-tenancy store did
CALLER = Caller(TENANT)

DIM = 8
ALL = SearchFilter()
HYBRID = RetrievalMode.HYBRID
KEYWORD = RetrievalMode.KEYWORD

# ----------------------------------------------------------------------- rrf (pure)


def test_rrf_matches_hand_computed_scores() -> None:
    # k=60, 0-based ranks: a = 1/60 + 1/62, b = 1/61 + 1/60, c = 1/62, d = 1/61.
    fused = rrf([["a", "b", "c"], ["b", "d", "a"]], k=60)
    assert [item for item, _ in fused] == ["b", "a", "d", "c"]
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 60 + 1 / 62)
    assert scores["b"] == pytest.approx(1 / 61 + 1 / 60)
    assert scores["c"] == pytest.approx(1 / 62)
    assert scores["d"] == pytest.approx(1 / 61)


def test_rrf_small_k_rewards_the_top_of_one_list() -> None:
    # k=1: x = 1/1 = 1.0 (top of one list) beats y = 1/2 + 1/3 = 0.833 (second in both).
    assert rrf([["x", "y"], ["z", "y", "w"]], k=1)[0] == ("x", 1.0)
    # k=60: y = 1/61 + 1/61 = 0.0328 beats x = 1/60 = 0.0167.
    assert rrf([["x", "y"], ["z", "y", "w"]], k=60)[0][0] == "y"


def test_rrf_weights_duplicates_and_ties() -> None:
    # weights 3 and 1 at k=10: p = 3/10 = 0.3, q = 1/10 + 3/11 = 0.373.
    fused = dict(rrf([["p", "q"], ["q"]], k=10, weights=[3.0, 1.0]))
    assert fused["p"] == pytest.approx(0.3)
    assert fused["q"] == pytest.approx(3 / 11 + 1 / 10)
    # A repeated item counts once, at its best rank; equal scores keep first appearance.
    assert dict(rrf([["m", "m", "n"]], k=1)) == {"m": 1.0, "n": pytest.approx(1 / 3)}
    assert [i for i, _ in rrf([["u"], ["v"]], k=5)] == ["u", "v"]
    assert rrf([], k=60) == []


def test_rrf_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must not be negative"):
        rrf([["a"]], k=-1)
    with pytest.raises(ValueError, match="1 weights given for 2 rankings"):
        rrf([["a"], ["b"]], weights=[1.0])


def test_candidate_count_fetches_several_times_top_k() -> None:
    assert candidate_count(1) == 20
    assert candidate_count(10) == 40
    assert candidate_count(100) == 400


# ------------------------------------------------------------- hybrid in the store

TEXTS = {
    "zebra": "Zebra stripes confuse biting flies in the savanna.",
    "policy": "Employees receive twenty five days of paid annual leave.",
    "code": "Error code QX-7741 means the fuser unit overheated.",
    "garden": "Tomatoes need full sun and regular watering in summer.",
    "leave": "Parental leave policy: twelve weeks of paid leave for new parents.",
}


def unit(seed: int) -> list[float]:
    row = np.random.default_rng(seed).normal(size=DIM)
    return [float(x) for x in row / np.linalg.norm(row)]


def chunk(
    document_id: str, text: str, *, ordinal: int = 0, media_type: str = "text/plain"
) -> StoredChunk:
    return StoredChunk(
        chunk_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{ordinal}/{text}")),
        document_id=document_id,
        ordinal=ordinal,
        text=text,
        title=f"About {document_id}",
        section="",
        page=0,
        char_start=0,
        char_end=len(text),
        source_uri=f"file:///corpus/{document_id}.txt",
        media_type=media_type,
        token_count=len(text.split()),
        tenant=TENANT,
    )


def put(
    store: EdgeVectorStore,
    document_id: str,
    texts: Sequence[str],
    vectors: Sequence[list[float]],
    **kw: str,
) -> list[StoredChunk]:
    chunks = [chunk(document_id, t, ordinal=i, **kw) for i, t in enumerate(texts)]
    record = DocumentRecord(
        document_id,
        f"About {document_id}",
        chunks[0].source_uri,
        chunks[0].media_type,
        "0" * 64,
        len(chunks),
        100,
        1,
        TENANT,
    )
    store.replace_document(record, chunks, vectors)
    return chunks


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeVectorStore]:
    with EdgeVectorStore.open(tmp_path / "index", DIM) as opened:
        for seed, (document_id, text) in enumerate(TEXTS.items()):
            put(
                opened,
                document_id,
                [text],
                [unit(seed)],
                media_type="text/markdown" if document_id == "leave" else "text/plain",
            )
        yield opened


def ids(hits: Sequence[object]) -> list[str]:
    return [hit.chunk.document_id for hit in hits]  # type: ignore[attr-defined]


def test_keyword_mode_finds_exact_terms_without_a_vector(store: EdgeVectorStore) -> None:
    hits = store.search(
        CALLER, [], 3, ALL, SearchOptions(mode=KEYWORD, text="what does QX-7741 mean?")
    )
    assert ids(hits)[0] == "code"
    hits = store.search(CALLER, [], 5, ALL, SearchOptions(mode=KEYWORD, text="paid leave"))
    assert ids(hits)[:2] == ["leave", "policy"]  # "leave" twice and in its title beats once
    assert all(hit.score > 0 for hit in hits)
    assert store.search(CALLER, [], 5, ALL, SearchOptions(mode=KEYWORD, text="xylophone")) == []


def test_hybrid_equals_python_rrf_of_the_two_legs(store: EdgeVectorStore) -> None:
    query = unit(2)  # the "code" chunk's own vector: top of the dense leg
    options = SearchOptions(mode=HYBRID, text="paid leave")
    legs = candidate_count(5)
    dense = store.search(CALLER, query, min(legs, 100), ALL)
    keyword = store.search(
        CALLER, query, min(legs, 100), ALL, SearchOptions(mode=KEYWORD, text="paid leave")
    )
    expected = rrf([[h.chunk.chunk_id for h in dense], [h.chunk.chunk_id for h in keyword]])
    hybrid = store.search(CALLER, query, 5, ALL, options)
    assert [h.chunk.chunk_id for h in hybrid] == [item for item, _ in expected][:5]
    cosine = {h.chunk.chunk_id: h.score for h in dense}  # scores stay cosines
    assert [h.score for h in hybrid] == pytest.approx([cosine[h.chunk.chunk_id] for h in hybrid])
    bm25 = store.search(CALLER, [], 5, ALL, SearchOptions(mode=KEYWORD, text="paid leave"))
    assert [h.score for h in bm25] != [cosine[h.chunk.chunk_id] for h in bm25]  # no vector: BM25
    assert set(ids(hybrid[:3])) >= {"code", "leave"}  # the best of each leg rank high


def test_filters_apply_to_every_leg(store: EdgeVectorStore) -> None:
    only_plain = SearchFilter(media_types=("text/plain",))
    for mode in (KEYWORD, HYBRID):
        hits = store.search(
            CALLER, unit(4), 5, only_plain, SearchOptions(mode=mode, text="paid leave")
        )
        assert "leave" not in ids(hits)
        assert ids(hits)[0] == "policy"
    hits = store.search(
        CALLER,
        unit(0),
        5,
        SearchFilter(document_ids=("garden",)),
        SearchOptions(mode=HYBRID, text="zebra"),
    )
    assert ids(hits) == ["garden"]


def test_replacement_updates_the_keyword_index(store: EdgeVectorStore) -> None:
    put(store, "code", ["Error code ZZ-1 means the tray is empty."], [unit(2)])
    assert store.search(CALLER, [], 5, ALL, SearchOptions(mode=KEYWORD, text="QX-7741")) == []
    assert ids(store.search(CALLER, [], 5, ALL, SearchOptions(mode=KEYWORD, text="ZZ-1 tray"))) == [
        "code"
    ]
    store.remove_document(TENANT, "code")
    assert store.search(CALLER, [], 5, ALL, SearchOptions(mode=KEYWORD, text="ZZ-1 tray")) == []


def test_chunks_without_indexable_terms_are_still_searchable_densely(
    store: EdgeVectorStore,
) -> None:
    put(store, "stop", ["the of and"], [unit(99)])
    assert ids(store.search(CALLER, unit(99), 1, ALL)) == ["stop"]
    assert store.search(CALLER, [], 5, ALL, SearchOptions(mode=KEYWORD, text="the of")) == []


def test_search_options_are_validated(store: EdgeVectorStore) -> None:
    with pytest.raises(InvalidInputError, match="query_text is empty; the keyword mode needs it"):
        store.search(CALLER, [], 3, ALL, SearchOptions(mode=KEYWORD))
    with pytest.raises(InvalidInputError, match="query_text is empty; the hybrid mode needs it"):
        store.search(CALLER, unit(1), 3, ALL, SearchOptions(mode=HYBRID, text="  "))
    with pytest.raises(InvalidInputError, match="query vector has dimension 0"):
        store.search(CALLER, [], 3, ALL, SearchOptions(mode=HYBRID, text="leave"))
    with pytest.raises(InvalidInputError, match=r"mmr_lambda must be between 0 and 1, got 1\.5"):
        store.search(CALLER, unit(1), 3, ALL, SearchOptions(mmr_lambda=1.5))
    with pytest.raises(InvalidInputError, match="query_text is 10001 characters"):
        store.search(CALLER, [], 3, ALL, SearchOptions(mode=KEYWORD, text="a" * 10_001))


def test_shard_written_before_keyword_search_is_migrated_on_open(tmp_path: Path) -> None:
    """A chunk shard with only the dense vector (the previous layout) gains BM25 vectors."""
    data_dir = tmp_path / "index"
    old = EdgeShard.create(
        str(data_dir / "chunks"),
        EdgeConfig(vectors={DENSE: EdgeVectorParams(size=DIM, distance=Distance.Cosine)}),
    )
    stored = [chunk(name, text) for name, text in TEXTS.items()]
    old.update(
        UpdateOperation.upsert_points(
            [Point(c.chunk_id, {DENSE: unit(i)}, vars(c)) for i, c in enumerate(stored)]
        )
    )
    old.flush()
    old.close()

    with EdgeVectorStore.open(data_dir, DIM) as store:
        assert store.stats().chunk_count == len(TEXTS)
        assert ids(store.search(CALLER, unit(3), 1, ALL)) == ["garden"]  # dense vectors kept
        hits = store.search(CALLER, [], 2, ALL, SearchOptions(mode=KEYWORD, text="QX-7741"))
        assert [h.chunk for h in hits] == [stored[2]]  # payload kept, text indexed
    assert sorted(p.name for p in data_dir.iterdir()) == ["chunks", "documents"]
    with EdgeVectorStore.open(data_dir, DIM) as store:  # a second open does not migrate again
        assert ids(
            store.search(CALLER, [], 1, ALL, SearchOptions(mode=KEYWORD, text="tomatoes"))
        ) == ["garden"]


def test_migration_interrupted_between_renames_is_rolled_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "index"
    with EdgeVectorStore.open(data_dir, DIM) as store:
        put(store, "code", [TEXTS["code"]], [unit(2)])
    # The state after renaming the old shard away and before renaming the new one in.
    (data_dir / "chunks").rename(data_dir / "chunks.pre-bm25")
    with EdgeVectorStore.open(data_dir, DIM) as store:
        assert ids(
            store.search(CALLER, [], 1, ALL, SearchOptions(mode=KEYWORD, text="QX-7741"))
        ) == ["code"]
    assert not (data_dir / "chunks.pre-bm25").exists()


def test_best_first_breaks_score_ties_by_point_id() -> None:
    @dataclass(frozen=True)
    class Point:
        id: str
        score: float

    tied = [Point("b", 0.5), Point("c", 0.9), Point("a", 0.5), Point("d", 0.1)]
    assert [p.id for p in best_first(tied, 3)] == ["c", "a", "b"]
    assert [p.id for p in best_first(list(reversed(tied)), 3)] == ["c", "a", "b"]


def test_hybrid_ties_are_resolved_the_same_way_every_time(tmp_path: Path) -> None:
    # "near" is rank 1 dense and rank 2 keyword, "term" the other way round: equal
    # RRF scores (1/61 + 1/62). Whichever the engine lists first, top 1 is the
    # chunk with the smaller id, on every call.
    with EdgeVectorStore.open(tmp_path / "index", DIM) as tied:
        near = put(tied, "near", ["zebra grazing beside apple trees in an orchard"], [unit(1)])
        term = put(tied, "term", ["zebra zebra zebra"], [unit(2)])
        expected = min((near[0], term[0]), key=lambda c: c.chunk_id).document_id
        options = SearchOptions(mode=HYBRID, text="zebra")
        tops = {ids(tied.search(CALLER, unit(1), 1, ALL, options))[0] for _ in range(20)}
        assert tops == {expected}
        both = tied.search(CALLER, unit(1), 2, ALL, options)
        assert sorted(ids(both)) == ["near", "term"]
