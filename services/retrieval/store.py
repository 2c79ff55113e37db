"""Domain types and the storage interface of the retrieval service.

The servicer and the tests talk to a `VectorStore`, never to an engine API, so
a backend (the embedded engine in `edge.py`, a Qdrant server in `qdrant.py`) is
chosen by configuration without touching callers, and proves itself by passing
the contract suite (tests/contract/test_vector_store.py). The validation
helpers live here, not in a backend, so every backend rejects the same inputs
with the same messages.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

from services.common.errors import InvalidInputError
from services.common.search import MAX_TOP_K as MAX_TOP_K
from services.common.search import SearchFilter as SearchFilter
from services.common.search import validate_filter as validate_filter
from services.common.tenancy import Caller as Caller
from services.common.tenancy import may_see, validate_labels, validate_tenant
from services.common.tenancy import validate_caller as validate_caller

MAX_LIST_LIMIT = 10_000
"""Upper bound on `list_documents(limit=...)`: callers page with `after`."""

MAX_LOOKUP_IDS = 1000
"""Upper bound on the document ids of one `lookup_documents` call."""

MAX_QUERY_TEXT_CHARS = 10_000
"""Upper bound on a keyword query: longer text is a document, not a query."""


class RetrievalMode(StrEnum):
    """How a search ranks chunks."""

    DENSE = "dense"
    """Cosine similarity of embeddings: paraphrases and meaning."""
    KEYWORD = "keyword"
    """BM25 over chunk text: exact terms (names, codes, rare words) embeddings blur."""
    HYBRID = "hybrid"
    """Both legs fused by reciprocal rank (the order; scores stay cosines)."""


@dataclass(frozen=True)
class SearchOptions:
    """What a search ranks by, beyond the query vector and filter.

    The defaults reproduce the original dense-only search, so callers that pass
    nothing keep their behaviour.
    """

    mode: RetrievalMode = RetrievalMode.DENSE
    text: str = ""
    """The query's text; the keyword and hybrid modes need it."""
    mmr_lambda: float = 0.0
    """Maximal marginal relevance weight in (0, 1]; 0 is off (see `mmr.py`)."""


DENSE_SEARCH = SearchOptions()
"""The default options: dense search, no MMR."""


@dataclass(frozen=True)
class StoredChunk:
    """One chunk as indexed: everything needed to cite it without another lookup."""

    chunk_id: str  # canonical UUID string (str(uuid.UUID(...)))
    document_id: str
    ordinal: int
    text: str
    title: str
    section: str
    page: int
    char_start: int
    char_end: int
    source_uri: str
    media_type: str
    token_count: int
    tenant: str
    """Owner of the document; every search filters on it inside the engine."""
    access_labels: tuple[str, ...] = ()
    """Only callers holding one of these see the chunk; empty: the whole tenant."""
    tags: tuple[str, ...] = ()
    document_date_unix: int = 0
    """Date of the document (Unix seconds), 0 when unknown."""


@dataclass(frozen=True)
class DocumentRecord:
    """What the registry knows about one indexed document."""

    document_id: str
    title: str
    source_uri: str
    media_type: str
    content_sha256: str
    chunk_count: int
    size_bytes: int
    indexed_at_unix: int
    tenant: str
    """Document ids are unique within a tenant, not across tenants."""
    access_labels: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    document_date_unix: int = 0
    source_version: str = ""
    """The source's version of the indexed bytes (a Cloud Storage generation), "" if none."""


@dataclass(frozen=True)
class SearchHit:
    """A chunk and its score for the query (higher is closer).

    Whenever the query has a vector the score is the chunk's cosine similarity
    to it, in every mode (the mode decides the order only), so thresholds tuned
    on cosine keep working; a keyword search without a vector scores by BM25.
    """

    chunk: StoredChunk
    score: float


@dataclass(frozen=True)
class StoreStats:
    """Counts a health or admin endpoint reports."""

    document_count: int
    chunk_count: int
    dimension: int
    backend: str
    embedding_model: str = ""
    """The model of the indexed vectors; "" until the first write."""


class VectorStore(Protocol):
    """Small typed interface: the embedded engine (`edge.py`) or a Qdrant server.

    Every read takes the tenant (a search, the whole `Caller`) and every record
    carries one: a document id names a document of one tenant only.
    """

    @property
    def dimension(self) -> int:
        """Length every stored and query vector must have."""
        ...

    def replace_document(
        self,
        document: DocumentRecord,
        chunks: Sequence[StoredChunk],
        vectors: Sequence[Sequence[float]],
    ) -> tuple[int, int]:
        """Make `chunks` the only chunks of the document; return (upserted, deleted).

        Readers see either the old or the new set of chunks, never a mix.
        """
        ...

    def search(
        self,
        caller: Caller,
        vector: Sequence[float],
        top_k: int,
        filter: SearchFilter,
        options: SearchOptions = DENSE_SEARCH,
    ) -> list[SearchHit]:
        """Return up to `top_k` of the chunks `caller` may see, ranked as
        `options` says, best first.

        The tenant and access-label restriction is part of the engine query
        (never a post-filter), so it also bounds every candidate list.
        `vector` may be empty in keyword mode (it is not used there).
        """
        ...

    def get_document(self, tenant: str, document_id: str) -> DocumentRecord | None:
        """Return the tenant's record, or None when the tenant has no such document."""
        ...

    def lookup_documents(self, caller: Caller, document_ids: Sequence[str]) -> list[DocumentRecord]:
        """Return the records of `document_ids` that exist in the caller's tenant
        and that the caller may see (`may_see`), in request order, each once.

        One read for a set of documents: the answer cache checks the versions
        of every document an answer cites at each hit.
        """
        ...

    def list_documents(
        self,
        tenant: str,
        limit: int,
        after: str = "",
        visible_to: Sequence[str] | None = None,
    ) -> list[DocumentRecord]:
        """Return up to `limit` of the tenant's records with document_id > `after`,
        ordered by document_id; with `visible_to` (a caller's access labels),
        only those the labels may see, so a page is never short of them."""
        ...

    def remove_document(self, tenant: str, document_id: str) -> int:
        """Delete the tenant's document and its chunks; return the chunks deleted.

        Raises NotFoundError when the tenant has no such document.
        """
        ...

    def document_chunks(self, tenant: str, document_id: str) -> list[StoredChunk]:
        """The live chunks of the tenant's document, by ordinal (what a re-index
        embeds again); NotFoundError when the tenant has no such document."""
        ...

    def tenants(self) -> list[str]:
        """The tenants with at least one indexed document, sorted."""
        ...

    def read_generations(self) -> str:
        """The index's generation table (`generations.py`), "" when none was written."""
        ...

    def write_generations(self, table: str) -> None:
        """Replace the generation table, durably, for every replica to read."""
        ...

    def stats(self) -> StoreStats:
        """Return document and chunk counts."""
        ...

    def claim_embedder(self, model: str) -> None:
        """Record `model` as the embedding model of the store's vectors if none
        is recorded yet; FailedPreconditionError naming both if another is."""
        ...

    def check_embedder(self, model: str) -> None:
        """FailedPreconditionError naming both if the store's vectors come from
        another model than `model` (nothing is recorded: nothing to check)."""
        ...

    def close(self) -> None:
        """Persist everything and release the storage; later calls fail."""
        ...


def validate_vector(vector: Sequence[float], dimension: int, what: str) -> list[float]:
    """Return `vector` as a list of floats, or raise InvalidInputError naming `what`.

    A wrong length is the usual symptom of a store opened with one embedding model
    and queried with another, so the message states both lengths.
    """
    return validate_vectors([vector], dimension, [what])[0]


def validate_vectors(
    vectors: Sequence[Sequence[float]], dimension: int, names: Sequence[str]
) -> list[list[float]]:
    """Return `vectors` as lists of floats, or raise InvalidInputError naming the culprit.

    NaN, infinities and the zero vector are rejected because cosine similarity is
    undefined for them and the engine would rank them arbitrarily instead of
    failing. The checks run on one numpy matrix: checking a 1,000 x 384 batch
    element by element in Python costs tens of milliseconds per ingest.
    """
    for name, vector in zip(names, vectors, strict=True):
        if len(vector) != dimension:
            raise InvalidInputError(f"{name} has dimension {len(vector)}, expected {dimension}")
    if not vectors:
        return []
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf, rejected below
            matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), dimension)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"vectors must contain only numbers: {exc}") from None
    unusable = np.flatnonzero(~(np.isfinite(matrix).all(axis=1) & matrix.any(axis=1)))
    if unusable.size:
        first = int(unusable[0])
        if not np.isfinite(matrix[first]).all():
            raise InvalidInputError(f"{names[first]} contains NaN or infinite values")
        raise InvalidInputError(f"{names[first]} is the zero vector; cosine is undefined for it")
    rows: list[list[float]] = matrix.tolist()
    return rows


def validate_top_k(top_k: int) -> None:
    """Reject a result size outside 1..MAX_TOP_K."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInputError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")


def validate_search_options(options: SearchOptions) -> None:
    """Reject options a search cannot honour, naming the request field."""
    if not 0.0 <= options.mmr_lambda <= 1.0:
        raise InvalidInputError(f"mmr_lambda must be between 0 and 1, got {options.mmr_lambda}")
    if options.mode is not RetrievalMode.DENSE and not options.text.strip():
        raise InvalidInputError(f"query_text is empty; the {options.mode} mode needs it")
    if len(options.text) > MAX_QUERY_TEXT_CHARS:
        raise InvalidInputError(
            f"query_text is {len(options.text)} characters; the limit is {MAX_QUERY_TEXT_CHARS}"
        )


def validate_lookup(caller: Caller, document_ids: Sequence[str]) -> list[str]:
    """The ids of a `lookup_documents` call, deduplicated in order; raises
    InvalidInputError for a bad caller, no id, an empty id or too many."""
    validate_caller(caller)
    if not document_ids:
        raise InvalidInputError("document_ids is empty; give 1 to 1000 document ids")
    if len(document_ids) > MAX_LOOKUP_IDS:
        raise InvalidInputError(
            f"document_ids holds {len(document_ids)} ids; the limit is {MAX_LOOKUP_IDS}"
        )
    if not all(document_ids):
        raise InvalidInputError("document_ids contains an empty document id")
    return list(dict.fromkeys(document_ids))


def visible_records(
    caller: Caller, document_ids: Sequence[str], records: Sequence[DocumentRecord]
) -> list[DocumentRecord]:
    """`records` of the caller's tenant that it may see, in the order of `document_ids`."""
    by_id = {
        record.document_id: record
        for record in records
        if record.tenant == caller.tenant and may_see(caller.access_labels, record.access_labels)
    }
    return [by_id[document_id] for document_id in document_ids if document_id in by_id]


def listing_page(
    records: Iterable[DocumentRecord],
    limit: int,
    after: str,
    visible_to: Sequence[str] | None,
) -> list[DocumentRecord]:
    """The `limit` records with the smallest ids above `after` among `records`
    (in any order), those `visible_to` may see when given: engines order scrolls
    by numeric payload only, so a page is a bounded heap over a scan (memory
    O(limit))."""
    candidates = (
        record
        for record in records
        if record.document_id > after
        and (visible_to is None or may_see(visible_to, record.access_labels))
    )
    return heapq.nsmallest(limit, candidates, key=lambda record: record.document_id)


def validate_list_limit(limit: int) -> None:
    """Reject a page size outside 1..MAX_LIST_LIMIT."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")


def validate_replacement(
    document: DocumentRecord,
    chunks: Sequence[StoredChunk],
    vectors: Sequence[Sequence[float]],
    dimension: int,
) -> list[list[float]]:
    """Check a `replace_document` call before anything is written; return the vectors.

    Everything is checked up front so a bad request never leaves a document half
    replaced: the counts must agree (a mismatch means the caller lost or
    duplicated chunks between chunking and embedding), every chunk must belong to
    the document, and chunk ids must be canonical, unique UUID strings because
    they become engine point ids and are handed back verbatim in citations.
    """
    document_id = document.document_id
    if not document_id:
        raise InvalidInputError("document_id must not be empty")
    validate_tenant(document.tenant)
    validate_labels(document.access_labels, "access label")
    validate_labels(document.tags, "tag")
    if not len(chunks) == len(vectors) == document.chunk_count:
        raise InvalidInputError(
            f"document '{document_id}': chunk_count is {document.chunk_count} but "
            f"{len(chunks)} chunks and {len(vectors)} vectors were given; all three must match"
        )
    seen: set[str] = set()
    for chunk in chunks:
        if chunk.document_id != document_id:
            raise InvalidInputError(
                f"chunk '{chunk.chunk_id}' belongs to document '{chunk.document_id}', "
                f"not '{document_id}'"
            )
        visibility = (chunk.tenant, set(chunk.access_labels), set(chunk.tags))
        if visibility != (document.tenant, set(document.access_labels), set(document.tags)) or (
            chunk.document_date_unix != document.document_date_unix
        ):
            raise InvalidInputError(
                f"chunk '{chunk.chunk_id}' has a tenant, access labels, tags or date "
                f"different from its document '{document_id}'"
            )
        try:
            canonical = str(uuid.UUID(chunk.chunk_id))
        except ValueError:
            raise InvalidInputError(f"chunk_id '{chunk.chunk_id}' is not a UUID") from None
        if canonical != chunk.chunk_id:
            raise InvalidInputError(
                f"chunk_id '{chunk.chunk_id}' is not in canonical form; use '{canonical}'"
            )
        if chunk.chunk_id in seen:
            raise InvalidInputError(
                f"chunk_id '{chunk.chunk_id}' appears twice in document '{document_id}'"
            )
        seen.add(chunk.chunk_id)
    names = [f"vector {i} (chunk '{chunk.chunk_id}')" for i, chunk in enumerate(chunks)]
    return validate_vectors(vectors, dimension, names)
