"""The backends the `VectorStore` contract runs on, and its test data builders.

A backend joins the contract (`test_vector_store.py`) with one entry in
`STORE_FACTORIES`: a function that, given a fresh empty directory, returns an
`Opener` that opens, and after `close()` reopens, one store's storage with the
dimension it is given. Every test then runs on it as on the others.

The test data builders and search helpers below are shared with the
per-engine tests in tests/unit.
"""

import atexit
import hashlib
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from services.retrieval.edge import EdgeVectorStore
from services.retrieval.qdrant import QdrantServerStore
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
from services.retrieval.vertex import (
    VectorSearchTarget,
    VertexTuning,
    VertexVectorStore,
    anonymous,
)
from tests.contract.fakes.server import serve
from tests.contract.fakes.vector_search_fake import VectorSearchFake
from tests.emulators import firestore_client, fresh_project, shared_firestore_emulator

Opener = Callable[[int], VectorStore]
"""Opens the backend's storage with this dimension (again after a `close()`)."""


def edge_store(directory: Path) -> Opener:
    """The embedded engine in `directory`, with its production settings."""
    return lambda dimension: EdgeVectorStore.open(directory / "index", dimension)


class InMemoryQdrant:
    """qdrant-client's local mode as a server: one call at a time (local mode is
    plain Python without locks; a server applies concurrent requests safely), and
    the data outlives a store's `close()`, which closes only its client."""

    def __init__(self) -> None:
        self._local = QdrantClient(":memory:")
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._local, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return call

    def close(self) -> None:
        """A client closes; the server keeps the data."""


def qdrant_store(directory: Path) -> Opener:
    """The server backend on an in-memory Qdrant (`directory` is not used)."""
    server = InMemoryQdrant()
    return lambda dimension: QdrantServerStore.open(server, "chunks", dimension)  # type: ignore[arg-type]


class VectorSearchWorld:
    """The Vector Search fake, served once per test process (stopped at exit),
    next to the shared Firestore emulator: every vertex store gets an index,
    an endpoint and a Firestore project of its own on them."""

    _instance: "VectorSearchWorld | None" = None

    def __init__(self) -> None:
        self.fake = VectorSearchFake()
        self._stack = ExitStack()
        self.url = self._stack.enter_context(serve(self.fake.app))
        self.firestore = shared_firestore_emulator()
        atexit.register(self._stack.close)

    @classmethod
    def get(cls) -> "VectorSearchWorld":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def target(self, dimension: int) -> VectorSearchTarget:
        """A new empty index of `dimension`, deployed on a new endpoint."""
        name = uuid.uuid4().hex[:12]
        index = f"projects/test/locations/us-central1/indexes/{name}"
        endpoint = f"projects/test/locations/us-central1/indexEndpoints/{name}"
        self.fake.create_index(index, dimension)
        self.fake.deploy_index(endpoint, "deployed", index)
        return VectorSearchTarget(index, endpoint, "deployed", self.url)

    def open(
        self, target: VectorSearchTarget, project: str, dimension: int, **tuning: Any
    ) -> VertexVectorStore:
        """A store on `target` with its side store in the emulator's `project`."""
        return VertexVectorStore.connect(
            target,
            firestore_client(self.firestore, project),
            "rag",
            dimension,
            credentials=anonymous(),
            tuning=VertexTuning(exact=True, **tuning),
        )


def vertex_store(directory: Path) -> Opener:
    """Vertex AI Vector Search through the real aiplatform REST clients on the
    fake, with its side store in the Firestore emulator (`directory` is not used)."""
    world = VectorSearchWorld.get()
    project = fresh_project()
    targets: dict[str, VectorSearchTarget] = {}

    def opener(dimension: int) -> VectorStore:
        if "target" not in targets:
            targets["target"] = world.target(max(dimension, 1))
        return world.open(targets["target"], project, dimension)

    return opener


STORE_FACTORIES: dict[str, Callable[[Path], Opener]] = {
    "edge": edge_store,
    "qdrant": qdrant_store,
    "vertex": vertex_store,
}
"""Every backend of the contract, by the name its tests carry ([edge], [qdrant], [vertex])."""

RAM_DISK = Path("/dev/shm")


@contextmanager
def scratch_directory() -> Iterator[Path]:
    """A fresh directory, removed afterwards; in memory where the platform has
    one. The contract is about behaviour, not disks: on a busy disk the embedded
    engine's fsyncs make opening a store take up to a second instead of 20 ms
    (its durability is tested on disk, in tests/unit/test_store_edge.py)."""
    path = Path(
        tempfile.mkdtemp(prefix="vector-store-", dir=RAM_DISK if RAM_DISK.is_dir() else None)
    )
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


QDRANT_LOCAL_MODE_WARNINGS = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),
]
"""Local mode says it ignores payload indexes and HNSW parameters, which the
store sends for a real server (see the module docstring of qdrant.py)."""

# -- test data ------------------------------------------------------------------

DIM = 8
TENANT = "acme"

Document = tuple[DocumentRecord, list[StoredChunk], list[list[float]]]
"""What `replace_document` takes: a record, its chunks and their vectors."""


def unit_vectors(seed: int, count: int, dim: int = DIM) -> list[list[float]]:
    """`count` random unit vectors, the same for the same seed."""
    rows = np.random.default_rng(seed).normal(size=(count, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return [[float(x) for x in row] for row in rows]


def near(vector: list[float], seed: int, spread: float = 0.05) -> list[float]:
    """A unit vector close to `vector` (cosine ~0.99 at the default spread)."""
    row = np.asarray(vector) + spread * np.random.default_rng(seed).normal(size=len(vector))
    return [float(x) for x in row / np.linalg.norm(row)]


def make_document(
    document_id: str,
    count: int,
    *,
    media_type: str = "text/plain",
    source_uri: str = "",
    version: str = "",
    seed: int | None = None,
    tenant: str = TENANT,
    access_labels: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    document_date_unix: int = 0,
    text: str = "",
    vectors: list[list[float]] | None = None,
    texts: Sequence[str] = (),
    title: str = "",
) -> Document:
    """A document of `count` chunks; `version` changes chunk ids and text. `text`
    (with the document id and part added) replaces the default chunk texts,
    `texts` gives them verbatim (one chunk each), and `vectors` the seeded
    random ones."""
    count = len(texts) or count
    uri = source_uri or f"file:///corpus/{document_id}.txt"
    chunks = [
        StoredChunk(
            chunk_id=str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{document_id}/{version}/{ordinal}")
            ),
            document_id=document_id,
            ordinal=ordinal,
            text=texts[ordinal]
            if texts
            else f"{text} ({document_id} part {ordinal})"
            if text
            else f"{document_id} chunk {ordinal} version {version}".strip(),
            title=title or f"Title of {document_id}",
            section="Intro",
            page=ordinal + 1,
            char_start=ordinal * 100,
            char_end=ordinal * 100 + 99,
            source_uri=uri,
            media_type=media_type,
            token_count=20 + ordinal,
            tenant=tenant,
            access_labels=access_labels,
            tags=tags,
            document_date_unix=document_date_unix,
        )
        for ordinal in range(count)
    ]
    record = DocumentRecord(
        document_id=document_id,
        title=title or f"Title of {document_id}",
        source_uri=uri,
        media_type=media_type,
        content_sha256=hashlib.sha256(f"{document_id}/{version}".encode()).hexdigest(),
        chunk_count=count,
        size_bytes=1000 * count,
        indexed_at_unix=1_700_000_000,
        tenant=tenant,
        access_labels=access_labels,
        tags=tags,
        document_date_unix=document_date_unix,
    )
    if vectors is None:
        vectors = unit_vectors(
            seed if seed is not None else sum(map(ord, document_id + version)), count
        )
    return record, chunks, vectors


def versions_of(hits: list[SearchHit], document_id: str = "doc") -> list[str]:
    """The versions ("A", "B") of `make_document` chunks among the hits."""
    return [h.chunk.text.rsplit(" ", 1)[-1] for h in hits if h.chunk.document_id == document_id]


# -- searching in every mode ----------------------------------------------------------

ALL = SearchFilter()
QUERY = unit_vectors(0, 1)[0]
QUERY_TEXT = "parental leave policy"
TEXT = "Parental leave policy: twelve weeks of paid leave."
"""Every chunk of `document` matches QUERY_TEXT, so every mode finds it."""

MODES = {
    "dense": SearchOptions(),
    "keyword": SearchOptions(mode=RetrievalMode.KEYWORD, text=QUERY_TEXT),
    "hybrid": SearchOptions(mode=RetrievalMode.HYBRID, text=QUERY_TEXT),
    "dense+mmr": SearchOptions(mmr_lambda=0.5),
    "keyword+mmr": SearchOptions(mode=RetrievalMode.KEYWORD, text=QUERY_TEXT, mmr_lambda=0.5),
    "hybrid+mmr": SearchOptions(mode=RetrievalMode.HYBRID, text=QUERY_TEXT, mmr_lambda=0.5),
}


def document(
    tenant: str,
    document_id: str,
    count: int = 1,
    *,
    text: str = TEXT,
    vectors: list[list[float]] | None = None,
    **fields: Any,
) -> Document:
    """A document of `count` chunks of `text` whose vectors are near QUERY unless given."""
    seed = sum(map(ord, tenant + document_id))
    return make_document(
        document_id,
        count,
        tenant=tenant,
        text=text,
        vectors=vectors or [near(QUERY, seed + i) for i in range(count)],
        **fields,
    )


def search_all_modes(
    store: VectorStore,
    caller: Caller,
    search_filter: SearchFilter = ALL,
    top_k: int = MAX_TOP_K,
    query: list[float] = QUERY,
    text: str = QUERY_TEXT,
) -> dict[str, list[SearchHit]]:
    """The caller's results in every mode of MODES, with and without MMR."""
    return {
        name: store.search(caller, query, top_k, search_filter, replace(options, text=text))
        for name, options in MODES.items()
    }
