"""EdgeVectorStore tenancy: isolation in every search mode and in the registry,
access labels, tag and date filters, validation, and the pre-tenancy migration.

Real engine, real files: every store is opened in a temporary directory.
"""

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_edge import (
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    PayloadSchemaType,
    Point,
    UpdateOperation,
)

from ragplatform.v1 import common_pb2, embedding_pb2, retrieval_pb2
from services.common.errors import InvalidInputError, NotFoundError
from services.retrieval.edge import (
    EdgeVectorStore,
    HnswSettings,
    _chunk_config,
    _chunk_vectors,
    _record_id,
    _registry_config,
)
from services.retrieval.edge_migrations import LEGACY_RECORD_NAMESPACE, LEGACY_TENANT
from services.retrieval.fusion import rrf
from services.retrieval.schema import DENSE
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.store import (
    MAX_TOP_K,
    Caller,
    DocumentRecord,
    RetrievalMode,
    SearchFilter,
    SearchHit,
    SearchOptions,
    StoredChunk,
    StoreStats,
)
from tests.unit.test_store_edge import Document, make_document

DIM = 8
ALL = SearchFilter()
ACME, GLOBEX = "acme", "globex"
QUERY_TEXT = "parental leave policy"


def unit(seed: int) -> list[float]:
    row = np.random.default_rng(seed).normal(size=DIM)
    return [float(x) for x in row / np.linalg.norm(row)]


def near(vector: list[float], seed: int, spread: float = 0.05) -> list[float]:
    """A unit vector close to `vector` (cosine ~0.99)."""
    row = np.asarray(vector) + spread * np.random.default_rng(seed).normal(size=DIM)
    return [float(x) for x in row / np.linalg.norm(row)]


QUERY = unit(0)


def document(
    tenant: str,
    document_id: str,
    count: int = 1,
    *,
    text: str = "Parental leave policy: twelve weeks of paid leave.",
    access_labels: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    date: int = 0,
    vectors: list[list[float]] | None = None,
) -> Document:
    """A document of `count` chunks of `text` whose vectors are near QUERY unless given."""
    return make_document(
        document_id,
        count,
        tenant=tenant,
        access_labels=access_labels,
        tags=tags,
        document_date_unix=date,
        text=text,
        vectors=vectors
        or [near(QUERY, sum(map(ord, tenant + document_id)) + i) for i in range(count)],
    )


def replace_request(
    record: DocumentRecord, chunks: list[StoredChunk], vectors: list[list[float]]
) -> retrieval_pb2.ReplaceDocumentRequest:
    """The ReplaceDocument call that indexes `document(...)`'s parts."""
    return retrieval_pb2.ReplaceDocumentRequest(
        document=common_pb2.DocumentInfo(**asdict(record)),
        chunks=[
            retrieval_pb2.IndexedChunk(
                chunk=common_pb2.Chunk(**asdict(chunk)),
                vector=embedding_pb2.Vector(values=vector),
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ],
    )


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "index"
    yield path
    shutil.rmtree(path, ignore_errors=True)  # ~130 MiB of preallocated WAL


@pytest.fixture
def store(store_dir: Path) -> Iterator[EdgeVectorStore]:
    with EdgeVectorStore.open(store_dir, DIM) as opened:
        yield opened


def docs(hits: list[SearchHit]) -> set[tuple[str, str]]:
    return {(hit.chunk.tenant, hit.chunk.document_id) for hit in hits}


def search_all_modes(
    store: EdgeVectorStore, caller: Caller, search_filter: SearchFilter = ALL, top_k: int = 50
) -> dict[str, list[SearchHit]]:
    """The caller's results in every mode: dense, keyword, hybrid, and both with MMR."""
    modes = {
        "dense": SearchOptions(),
        "keyword": SearchOptions(mode=RetrievalMode.KEYWORD, text=QUERY_TEXT),
        "hybrid": SearchOptions(mode=RetrievalMode.HYBRID, text=QUERY_TEXT),
        "dense+mmr": SearchOptions(mmr_lambda=0.5),
        "hybrid+mmr": SearchOptions(mode=RetrievalMode.HYBRID, text=QUERY_TEXT, mmr_lambda=0.5),
    }
    return {
        name: store.search(caller, QUERY, top_k, search_filter, options)
        for name, options in modes.items()
    }


# ------------------------------------------------------------------ isolation


def test_indexes_cover_every_filtered_field(store: EdgeVectorStore) -> None:
    chunks, registry = store._require_open()
    schema = {name: info.data_type for name, info in chunks.info().payload_schema.items()}
    keyword = PayloadSchemaType.Keyword
    assert schema == {
        "tenant": keyword,
        "access_labels": keyword,
        "tags": keyword,
        "document_id": keyword,
        "media_type": keyword,
        "source_uri": keyword,
        "document_date_unix": PayloadSchemaType.Integer,
    }
    assert set(registry.info().payload_schema) == {"tenant", "document_id"}


def test_a_tenant_never_sees_another_tenants_chunks_in_any_mode(store: EdgeVectorStore) -> None:
    # acme has 30 chunks closer to the query than globex's two: a post-filter
    # applied after the engine's top-k (or after fusion or MMR) would leave
    # globex with nothing; an engine filter finds its chunks at any top_k.
    store.replace_document(
        *document(ACME, "handbook", 30, vectors=[near(QUERY, i, 0.01) for i in range(30)])
    )
    store.replace_document(*document(GLOBEX, "policy", 2, vectors=[near(QUERY, 99, 0.5), unit(5)]))
    for top_k in (1, 2, MAX_TOP_K):
        for mode, hits in search_all_modes(store, Caller(GLOBEX), top_k=top_k).items():
            assert docs(hits) == {(GLOBEX, "policy")}, (mode, top_k)
            assert len(hits) == min(top_k, 2), (mode, top_k)
        for mode, hits in search_all_modes(store, Caller(ACME), top_k=top_k).items():
            assert docs(hits) == {(ACME, "handbook")}, (mode, top_k)
    assert all(hits == [] for hits in search_all_modes(store, Caller("initech")).values())


def test_hybrid_fuses_legs_that_only_hold_the_tenants_chunks(store: EdgeVectorStore) -> None:
    """Each leg is filtered before fusion: globex's hybrid order is the RRF of its own
    dense and keyword orders, although acme's chunks beat all of globex's in both."""
    acme_vectors = [near(QUERY, i, 0.01) for i in range(30)]
    store.replace_document(*document(ACME, "handbook", 30, vectors=acme_vectors))
    texts_and_vectors = {
        "close": ("Parental leave policy.", near(QUERY, 1, 0.2)),
        "middle": ("Leave.", near(QUERY, 2, 0.8)),
        "far": ("Parental leave policy. Parental leave policy for parental leave.", unit(3)),
    }
    for name, (text, vector) in texts_and_vectors.items():
        store.replace_document(*document(GLOBEX, name, text=text, vectors=[vector]))
    caller = Caller(GLOBEX)
    orders = {
        mode: [h.chunk.document_id for h in hits]
        for mode, hits in search_all_modes(store, caller, top_k=3).items()
    }
    assert orders["dense"] == ["close", "middle", "far"]
    assert orders["keyword"] == ["far", "close", "middle"]
    fused = [item for item, _ in rrf([orders["dense"], orders["keyword"]])]
    assert fused != orders["keyword"]  # so a leg that lost its chunks would show
    assert orders["hybrid"] == fused


def test_the_same_document_id_in_two_tenants_coexists(store: EdgeVectorStore) -> None:
    acme = document(ACME, "handbook", 3, text="Acme leave policy: ten days.")
    globex = document(GLOBEX, "handbook", 2, text="Globex leave policy: thirty days.")
    store.replace_document(*acme)
    store.replace_document(*globex)
    assert store.stats() == StoreStats(2, 5, DIM, "qdrant-edge")
    assert store.get_document(ACME, "handbook") == acme[0]
    assert store.get_document(GLOBEX, "handbook") == globex[0]
    assert store.list_documents(ACME, 10) == [acme[0]]
    assert store.list_documents(GLOBEX, 10) == [globex[0]]
    assert store.list_documents("initech", 10) == []

    # Replacing one tenant's version deletes only that tenant's stale chunks.
    shorter = document(ACME, "handbook", 1, text="Acme leave policy: ten days.")
    assert store.replace_document(*shorter) == (1, 2)
    assert len(store.search(Caller(GLOBEX), QUERY, 10, ALL)) == 2

    # Deleting one leaves the other.
    assert store.remove_document(GLOBEX, "handbook") == 2
    assert store.get_document(GLOBEX, "handbook") is None
    assert store.get_document(ACME, "handbook") == shorter[0]
    assert [h.chunk for h in store.search(Caller(ACME), QUERY, 10, ALL)] == shorter[1]
    assert store.search(Caller(GLOBEX), QUERY, 10, ALL) == []
    with pytest.raises(NotFoundError, match="document 'handbook' not found in tenant 'globex'"):
        store.remove_document(GLOBEX, "handbook")


def test_get_list_and_remove_are_confined_to_the_tenant(store: EdgeVectorStore) -> None:
    for name in ("a", "b", "c"):
        store.replace_document(*document(ACME, name))
    store.replace_document(*document(GLOBEX, "z"))
    assert store.get_document(GLOBEX, "a") is None
    assert [r.document_id for r in store.list_documents(ACME, 10)] == ["a", "b", "c"]
    assert [r.document_id for r in store.list_documents(ACME, 2, after="a")] == ["b", "c"]
    assert [r.document_id for r in store.list_documents(GLOBEX, 10)] == ["z"]
    with pytest.raises(NotFoundError, match="document 'a' not found"):
        store.remove_document(GLOBEX, "a")
    assert store.stats().chunk_count == 4  # the refused remove deleted nothing
    assert store.remove_document(ACME, "a") == 1
    assert [r.document_id for r in store.list_documents(ACME, 10)] == ["b", "c"]


def test_chunk_ids_of_another_tenants_document_are_refused(store: EdgeVectorStore) -> None:
    record, chunks, vectors = document(ACME, "handbook", 2)
    store.replace_document(record, chunks, vectors)
    thief_record, thief_chunks, thief_vectors = document(GLOBEX, "handbook", 2)
    stolen = [
        replace(thief_chunks[0], chunk_id=chunks[1].chunk_id),
        replace(thief_chunks[1], chunk_id=chunks[0].chunk_id),
    ]
    # The first offending chunk in the request's order is named, every time.
    message = f"chunk_id '{chunks[1].chunk_id}' already belongs to another tenant's document"
    for _ in range(3):
        with pytest.raises(InvalidInputError, match=message):
            store.replace_document(thief_record, stolen, thief_vectors)
    assert store.get_document(GLOBEX, "handbook") is None
    assert [h.chunk for h in store.search(Caller(ACME), vectors[1], 1, ALL)] == [chunks[1]]


# ------------------------------------------------------------------ access labels


@pytest.fixture
def labelled(store: EdgeVectorStore) -> EdgeVectorStore:
    store.replace_document(*document(ACME, "open"))
    store.replace_document(*document(ACME, "hr", access_labels=("hr",)))
    store.replace_document(*document(ACME, "hr-finance", access_labels=("finance", "hr")))
    store.replace_document(*document(GLOBEX, "hr", access_labels=("hr",)))
    return store


@pytest.mark.parametrize(
    ("labels", "visible"),
    [
        ((), {"open"}),
        (("hr",), {"open", "hr", "hr-finance"}),
        (("finance",), {"open", "hr-finance"}),
        (("engineering",), {"open"}),
        (("engineering", "finance"), {"open", "hr-finance"}),
    ],
)
def test_access_labels_decide_visibility_in_every_mode(
    labelled: EdgeVectorStore, labels: tuple[str, ...], visible: set[str]
) -> None:
    for mode, hits in search_all_modes(labelled, Caller(ACME, labels)).items():
        assert docs(hits) == {(ACME, name) for name in visible}, mode


def test_labels_round_trip_as_tuples(labelled: EdgeVectorStore) -> None:
    (hit,) = labelled.search(
        Caller(ACME, ("finance",)), QUERY, 1, SearchFilter(document_ids=("hr-finance",))
    )
    assert hit.chunk.access_labels == ("finance", "hr")
    record = labelled.get_document(ACME, "hr-finance")
    assert record is not None and record.access_labels == ("finance", "hr")


def test_lookup_returns_what_the_caller_may_see_in_request_order(
    labelled: EdgeVectorStore,
) -> None:
    def looked_up(caller: Caller, ids: list[str]) -> list[tuple[str, str]]:
        return [(r.tenant, r.document_id) for r in labelled.lookup_documents(caller, ids)]

    ids = ["hr-finance", "missing", "open", "hr", "open"]
    assert looked_up(Caller(ACME, ("hr",)), ids) == [
        (ACME, "hr-finance"),
        (ACME, "open"),
        (ACME, "hr"),
    ]
    assert looked_up(Caller(ACME, ("finance",)), ids) == [(ACME, "hr-finance"), (ACME, "open")]
    assert looked_up(Caller(ACME), ids) == [(ACME, "open")]
    # GLOBEX's "hr" is its own document; ACME's are never GLOBEX's.
    assert looked_up(Caller(GLOBEX, ("hr",)), ids) == [(GLOBEX, "hr")]
    (record,) = labelled.lookup_documents(Caller(ACME, ("hr",)), ["hr"])
    assert record == labelled.get_document(ACME, "hr")


def test_a_listing_for_a_caller_leaves_out_what_its_labels_hide(
    labelled: EdgeVectorStore,
) -> None:
    def listed(visible_to: tuple[str, ...] | None, limit: int = 10) -> list[str]:
        return [r.document_id for r in labelled.list_documents(ACME, limit, "", visible_to)]

    assert listed(None) == ["hr", "hr-finance", "open"]
    assert listed(()) == ["open"]
    assert listed(("finance",)) == ["hr-finance", "open"]
    assert listed(("finance",), limit=1) == ["hr-finance"], "filtered before the page is cut"
    assert [r.document_id for r in labelled.list_documents(ACME, 1, "hr-finance", ())] == ["open"]


@pytest.mark.parametrize(
    ("caller", "ids", "message"),
    [
        (Caller(""), ["a"], "tenant is missing"),
        (Caller(ACME), [], "document_ids is empty"),
        (Caller(ACME), ["a", ""], "document_ids contains an empty document id"),
        (Caller(ACME), ["a"] * 1001, "document_ids holds 1001 ids; the limit is 1000"),
    ],
)
def test_lookup_rejects_bad_requests(
    store: EdgeVectorStore, caller: Caller, ids: list[str], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        store.lookup_documents(caller, ids)


# ------------------------------------------------------------------ tags and dates


@pytest.fixture
def dated(store: EdgeVectorStore) -> EdgeVectorStore:
    store.replace_document(*document(ACME, "d100", tags=("policy",), date=100))
    store.replace_document(*document(ACME, "d200", tags=("policy", "hr"), date=200))
    store.replace_document(*document(ACME, "d300", tags=("memo",), date=300))
    store.replace_document(*document(ACME, "undated", tags=("policy",)))
    store.replace_document(*document(GLOBEX, "g200", tags=("policy",), date=200))
    return store


@pytest.mark.parametrize(
    ("search_filter", "expected"),
    [
        (SearchFilter(), {"d100", "d200", "d300", "undated"}),
        (SearchFilter(tags=("policy",)), {"d100", "d200", "undated"}),
        (SearchFilter(tags=("hr", "memo")), {"d200", "d300"}),
        (SearchFilter(tags=("unknown",)), set()),
        (SearchFilter(date_from_unix=200), {"d200", "d300"}),  # inclusive lower bound
        (SearchFilter(date_to_unix=200), {"d100", "d200"}),  # inclusive; undated excluded
        (SearchFilter(date_from_unix=200, date_to_unix=200), {"d200"}),
        (SearchFilter(date_from_unix=101, date_to_unix=299), {"d200"}),
        (SearchFilter(date_from_unix=100, date_to_unix=300), {"d100", "d200", "d300"}),
        (SearchFilter(date_from_unix=301), set()),
        (SearchFilter(date_to_unix=0), set()),  # 0 is "no date", never in a range
        (SearchFilter(tags=("policy",), date_from_unix=150), {"d200"}),
        (SearchFilter(document_ids=("d100", "d300"), date_to_unix=250), {"d100"}),
    ],
)
def test_tag_and_date_filters(
    dated: EdgeVectorStore, search_filter: SearchFilter, expected: set[str]
) -> None:
    for mode, hits in search_all_modes(dated, Caller(ACME), search_filter).items():
        assert docs(hits) == {(ACME, name) for name in expected}, mode


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("caller", "search_filter", "message"),
    [
        (Caller(""), ALL, "tenant is missing"),
        (Caller("two words"), ALL, "tenant 'two words' is invalid"),
        (Caller("a/b"), ALL, "tenant 'a/b' is invalid"),
        (Caller("x" * 65), ALL, "tenant 'x+' is invalid"),
        (Caller(ACME, ("ok", "bad\nlabel")), ALL, "access label 'bad\\\\nlabel' is invalid"),
        (Caller(ACME, (" padded",)), ALL, "access label ' padded' is invalid"),
        (Caller(ACME, tuple(f"l{i}" for i in range(65))), ALL, "access label: 65 given"),
        (Caller(ACME), SearchFilter(tags=("",)), "filter.tags '' is invalid"),
        (
            Caller(ACME),
            SearchFilter(date_from_unix=200, date_to_unix=100),
            r"filter.date_to_unix \(100\) is before filter.date_from_unix \(200\)",
        ),
    ],
)
def test_search_rejects_invalid_callers_and_filters(
    dated: EdgeVectorStore, caller: Caller, search_filter: SearchFilter, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        dated.search(caller, QUERY, 5, search_filter)


def test_registry_calls_and_writes_validate_the_tenant(store: EdgeVectorStore) -> None:
    for call in (
        lambda: store.get_document("", "doc"),
        lambda: store.list_documents("", 10),
        lambda: store.remove_document("", "doc"),
    ):
        with pytest.raises(InvalidInputError, match="tenant is missing"):
            call()
    with pytest.raises(InvalidInputError, match="tenant 'no spaces' is invalid"):
        store.get_document("no spaces", "doc")
    record, chunks, vectors = document("", "doc")
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        store.replace_document(record, chunks, vectors)
    record, chunks, vectors = document(ACME, "doc", access_labels=("hr",))
    with pytest.raises(InvalidInputError, match="different from its document"):
        store.replace_document(record, [replace(chunks[0], tenant=GLOBEX)], vectors)
    with pytest.raises(InvalidInputError, match="different from its document"):
        store.replace_document(record, [replace(chunks[0], access_labels=())], vectors)
    with pytest.raises(InvalidInputError, match="tag 'bad\\\\x00' is invalid"):
        store.replace_document(*document(ACME, "doc", tags=("bad\x00",)))
    assert store.stats() == StoreStats(0, 0, DIM, "qdrant-edge")


# ------------------------------------------------------------------ servicer


async def test_servicer_carries_tenancy_between_protobuf_and_store(
    store: EdgeVectorStore,
) -> None:
    servicer = RetrievalServicer(store)
    record, chunks, vectors = document(
        ACME, "doc", 2, access_labels=("hr",), tags=("policy",), date=200
    )
    await servicer.ReplaceDocument(replace_request(record, chunks, vectors), None)
    assert store.get_document(ACME, "doc") == record  # repeated fields arrived as tuples

    hr = common_pb2.Caller(tenant=ACME, access_labels=["hr"])
    found = await servicer.Search(
        retrieval_pb2.SearchRequest(vector=embedding_pb2.Vector(values=QUERY), top_k=5, caller=hr),
        None,
    )
    assert {r.chunk.chunk_id for r in found.results} == {c.chunk_id for c in chunks}
    assert list(found.results[0].chunk.access_labels) == ["hr"]
    assert found.results[0].chunk.document_date_unix == 200

    async def count(caller: common_pb2.Caller, **filter_fields: object) -> int:
        response = await servicer.Search(
            retrieval_pb2.SearchRequest(
                vector=embedding_pb2.Vector(values=QUERY),
                top_k=5,
                caller=caller,
                filter=common_pb2.MetadataFilter(**filter_fields),  # type: ignore[arg-type]
            ),
            None,
        )
        return len(response.results)

    assert await count(common_pb2.Caller(tenant=ACME)) == 0  # no label
    assert await count(common_pb2.Caller(tenant=GLOBEX, access_labels=["hr"])) == 0
    assert await count(hr, tags=["policy"]) == 2
    assert await count(hr, tags=["memo"]) == 0
    # An explicitly set 0 is a bound (HasField), unlike an unset date.
    assert await count(hr, date_to_unix=0) == 0
    assert await count(hr, date_from_unix=0) == 2
    assert await count(hr, date_from_unix=200, date_to_unix=200) == 2
    assert await count(hr, date_from_unix=201) == 0
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        await count(common_pb2.Caller())
    with pytest.raises(InvalidInputError, match=r"filter\.date_to_unix"):
        await count(hr, date_from_unix=5, date_to_unix=4)

    got = await servicer.GetDocument(
        retrieval_pb2.GetDocumentRequest(tenant=ACME, document_id="doc"), None
    )
    assert list(got.document.tags) == ["policy"] and got.document.tenant == ACME
    with pytest.raises(NotFoundError):
        await servicer.GetDocument(
            retrieval_pb2.GetDocumentRequest(tenant=GLOBEX, document_id="doc"), None
        )
    looked_up = await servicer.LookupDocuments(
        retrieval_pb2.LookupDocumentsRequest(caller=hr, document_ids=["nope", "doc", "nope"]),
        None,
    )
    assert [d.document_id for d in looked_up.found] == ["doc"]
    assert list(looked_up.found[0].access_labels) == ["hr"]
    assert list(looked_up.missing) == ["nope"]
    unlabelled = await servicer.LookupDocuments(
        retrieval_pb2.LookupDocumentsRequest(
            caller=common_pb2.Caller(tenant=ACME), document_ids=["doc"]
        ),
        None,
    )
    assert list(unlabelled.found) == [] and list(unlabelled.missing) == ["doc"]
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        await servicer.LookupDocuments(
            retrieval_pb2.LookupDocumentsRequest(document_ids=["doc"]), None
        )
    with pytest.raises(InvalidInputError, match="tenant is missing"):
        await servicer.ListDocuments(retrieval_pb2.ListDocumentsRequest(), None)
    listing = await servicer.ListDocuments(retrieval_pb2.ListDocumentsRequest(tenant=GLOBEX), None)
    assert list(listing.documents) == []
    for caller, expected in ((hr, ["doc"]), (common_pb2.Caller(tenant=ACME), [])):
        listing = await servicer.ListDocuments(
            retrieval_pb2.ListDocumentsRequest(caller=caller), None
        )
        assert [d.document_id for d in listing.documents] == expected
    with pytest.raises(
        InvalidInputError, match=r"tenant .globex. and caller\.tenant .acme. differ"
    ):
        await servicer.ListDocuments(
            retrieval_pb2.ListDocumentsRequest(tenant=GLOBEX, caller=hr), None
        )
    with pytest.raises(NotFoundError):
        await servicer.RemoveDocument(
            retrieval_pb2.RemoveDocumentRequest(tenant=GLOBEX, document_id="doc"), None
        )
    removed = await servicer.RemoveDocument(
        retrieval_pb2.RemoveDocumentRequest(tenant=ACME, document_id="doc"), None
    )
    assert removed.chunks_deleted == 2


# ------------------------------------------------------------------ migration


LEGACY_FIELDS = ("tenant", "access_labels", "tags", "document_date_unix")


def write_pre_tenancy_directory(data_dir: Path, *, keyword_vectors: bool = True) -> Document:
    """A data directory as the store wrote it before tenancy: payloads without the
    tenancy fields, registry ids uuid5(document_id). Without `keyword_vectors`,
    the layout before keyword search too (dense vector only)."""
    record, chunks, vectors = document(LEGACY_TENANT, "handbook", 3)
    if keyword_vectors:
        config = _chunk_config(DIM, HnswSettings())
    else:
        config = EdgeConfig(vectors={DENSE: EdgeVectorParams(size=DIM, distance=Distance.Cosine)})
    chunk_shard = EdgeShard.create(str(data_dir / "chunks"), config)
    points = []
    for chunk, vector in zip(chunks, vectors, strict=True):
        payload = {k: v for k, v in asdict(chunk).items() if k not in LEGACY_FIELDS}
        named: dict[str, Any] = (
            _chunk_vectors(vector, chunk) if keyword_vectors else {DENSE: vector}
        )
        points.append(Point(chunk.chunk_id, named, payload))
    chunk_shard.update(UpdateOperation.upsert_points(points))
    chunk_shard.flush()
    chunk_shard.close()
    registry = EdgeShard.create(str(data_dir / "documents"), _registry_config())
    legacy_id = str(uuid.uuid5(LEGACY_RECORD_NAMESPACE, record.document_id))
    payload = {k: v for k, v in asdict(record).items() if k not in LEGACY_FIELDS}
    registry.update(UpdateOperation.upsert_points([Point(legacy_id, {}, payload)]))
    registry.flush()
    registry.close()
    return record, chunks, vectors


@pytest.mark.parametrize("keyword_vectors", [True, False], ids=["tenancy-only", "with-bm25"])
def test_a_pre_tenancy_directory_becomes_tenant_default(
    store_dir: Path, keyword_vectors: bool
) -> None:
    record, chunks, vectors = write_pre_tenancy_directory(
        store_dir, keyword_vectors=keyword_vectors
    )
    default = Caller(LEGACY_TENANT)
    for _ in range(2):  # the second open finds nothing to migrate and changes nothing
        with EdgeVectorStore.open(store_dir, DIM) as store:
            assert store.stats() == StoreStats(1, 3, DIM, "qdrant-edge")
            assert store.get_document(LEGACY_TENANT, "handbook") == record
            assert store.list_documents(LEGACY_TENANT, 10) == [record]
            for mode, hits in search_all_modes(store, default).items():
                assert {h.chunk for h in hits} == set(chunks), mode
            assert store.search(default, vectors[2], 1, ALL)[0].chunk == chunks[2]
            assert search_all_modes(store, Caller(ACME))["hybrid"] == []
            assert store.get_document(ACME, "handbook") is None
            dated = SearchFilter(date_to_unix=2_000_000_000)
            assert store.search(default, QUERY, 5, dated) == []  # migrated chunks are undated
    with EdgeVectorStore.open(store_dir, DIM) as store:
        # Migrated documents are ordinary ones: replaced and removed per tenant.
        newer = document(LEGACY_TENANT, "handbook", 1, tags=("policy",))
        assert store.replace_document(*newer) == (1, 2)  # chunk 0 kept its id
        assert store.get_document(LEGACY_TENANT, "handbook") == newer[0]
        assert store.stats() == StoreStats(1, 1, DIM, "qdrant-edge")
        assert store.remove_document(LEGACY_TENANT, "handbook") == 1
        assert store.stats() == StoreStats(0, 0, DIM, "qdrant-edge")


def test_an_interrupted_registry_migration_completes(store_dir: Path) -> None:
    """Stopped after writing a record under its new id, before deleting the old one."""
    record, _, _ = write_pre_tenancy_directory(store_dir)
    registry = EdgeShard.load(str(store_dir / "documents"))
    moved = {**asdict(record), "access_labels": [], "tags": []}
    new_id = _record_id(LEGACY_TENANT, "handbook")
    registry.update(UpdateOperation.upsert_points([Point(new_id, {}, moved)]))
    registry.flush()
    registry.close()
    with EdgeVectorStore.open(store_dir, DIM) as store:
        assert store.stats().document_count == 1
        assert store.list_documents(LEGACY_TENANT, 10) == [record]
