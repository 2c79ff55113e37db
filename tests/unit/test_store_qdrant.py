"""QdrantServerStore: what only the server backend has. Atomic replacement
under every interleaving of a writer's and a reader's calls, concurrent
writers, failures mid-write, transport errors, old servers, foreign
collections, and the configuration that chooses the backend.

What every backend must do is the contract (tests/contract/test_vector_store.py),
and the agreement with EdgeVectorStore is tests/unit/test_store_parity.py.

No Qdrant server runs here: the store talks to qdrant-client's local mode
(`QdrantClient(":memory:")`), which serves the same client API in Python (see
the module docstring of `services/retrieval/qdrant.py` for what it does not
show: HNSW, payload indexes, the network). Transport errors are real: a gRPC
and a REST client pointed at a closed port.
"""

import math
import random
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException

from services.common.errors import (
    FailedPreconditionError,
    InvalidInputError,
    PlatformError,
    UnavailableError,
)
from services.retrieval import qdrant as qdrant_module
from services.retrieval.qdrant import BACKEND, QdrantServerStore, QdrantTuning
from services.retrieval.store import (
    DENSE_SEARCH,
    MAX_TOP_K,
    Caller,
    RetrievalMode,
    SearchHit,
    SearchOptions,
    StoreStats,
)
from tests.contract.vector_store import (
    ALL,
    DIM,
    QDRANT_LOCAL_MODE_WARNINGS,
    TENANT,
    Document,
    InMemoryQdrant,
    make_document,
    unit_vectors,
    versions_of,
)

# Private names this file relies on, by attribute (monkeypatched, so a rename
# fails only the test that needs it): QdrantServerStore._token, qdrant._pinned.
# It also reads the registry's layout (payload fields busy, writer_since).

pytestmark = [
    *QDRANT_LOCAL_MODE_WARNINGS,
    pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection"),
]
"""The client warns of an API key sent over plain HTTP (a test's closed port)."""

CALLER = Caller(TENANT)
COLLECTION = "chunks"
REGISTRY = COLLECTION + "_documents"


def open_store(client: Any = None, dimension: int = DIM, **tuning: Any) -> QdrantServerStore:
    return QdrantServerStore.open(
        client if client is not None else QdrantClient(":memory:"),
        COLLECTION,
        dimension,
        tuning=QdrantTuning(**tuning),
    )


# -- opening ------------------------------------------------------------------


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


def test_invalid_tuning() -> None:
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


def test_concurrent_writers_and_readers() -> None:
    """Four threads replace one document with versions of 2 to 5 chunks (as
    replicas would) while two threads search: the claim makes the writers take
    turns, no search sees a mix or an incomplete version, and no stale chunk
    survives. A search that raced writes on all its attempts is UNAVAILABLE:
    counted, and rare (it must not be every search)."""
    store = open_store(InMemoryQdrant(), upsert_batch=1)
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


_OF_DOC = models.Filter(
    must=[
        models.FieldCondition(key=key, match=models.MatchValue(value=value))
        for key, value in (("tenant", TENANT), ("document_id", "doc"))
    ]
)
"""The registry point of acme's "doc" (its record and the writer's claim)."""


def _registry_record(client: FaultyClient) -> dict[str, Any]:
    points, _ = client.scroll(REGISTRY, scroll_filter=_OF_DOC, limit=2, with_payload=True)
    (point,) = points
    return point.payload or {}


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
    assert _registry_record(client)["busy"]  # left behind, pinned to version A
    _assert_old_version_only(store, chunk_count=4 + 3 + 2)  # + the two B chunks written
    with pytest.raises(FailedPreconditionError, match="being changed by another writer"):
        store.replace_document(*NEW)  # the claim has not expired yet
    client.set_payload(REGISTRY, {"writer_since": 0.0}, _OF_DOC)  # the claim is long past
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
    assert not _registry_record(client).get("busy")
