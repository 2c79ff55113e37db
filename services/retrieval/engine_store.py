"""What every engine-backed `VectorStore` does the same way.

`EngineStore` implements the interface once: it validates every call, plans
and finishes searches (`ranking.py`), and pages and filters registry reads, so
that a backend only says how its engine writes a document, ranks a plan and
reads records. Every backend thereby refuses the same inputs with the same
messages, and the contract suite in tests/contract holds them to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Self

from services.common.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from services.common.tenancy import validate_tenant
from services.retrieval.ranking import Candidate, SearchPlan, hits, plan_search
from services.retrieval.store import (
    DENSE_SEARCH,
    Caller,
    DocumentRecord,
    SearchFilter,
    SearchHit,
    SearchOptions,
    StoredChunk,
    StoreStats,
    listing_page,
    validate_list_limit,
    validate_lookup,
    validate_replacement,
    visible_records,
)


class EngineStore(ABC):
    """A `VectorStore` whose engine-specific steps are the abstract methods."""

    backend: str
    """The backend's name, as `stats` reports it."""

    def __init__(self, dimension: int) -> None:
        self._dimension = dimension
        self._embedder = ""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def dimension(self) -> int:
        """Length every stored and query vector must have."""
        return self._dimension

    def replace_document(
        self,
        document: DocumentRecord,
        chunks: Sequence[StoredChunk],
        vectors: Sequence[Sequence[float]],
    ) -> tuple[int, int]:
        """Make `chunks` the only chunks of the document; return (upserted, deleted).

        Everything is checked before anything is written; readers see either
        the old or the new set of chunks, never a mix.
        """
        rows = validate_replacement(document, chunks, vectors, self._dimension)
        return self._replace(document, chunks, rows)

    def search(
        self,
        caller: Caller,
        vector: Sequence[float],
        top_k: int,
        filter: SearchFilter,
        options: SearchOptions = DENSE_SEARCH,
        *,
        exact: bool | None = None,
    ) -> list[SearchHit]:
        """Return up to `top_k` of the chunks `caller` may see, ranked as
        `options` says, best first (see `ranking.plan_search`). `exact`
        overrides the store's exact-search setting for this call (evaluation,
        recall checks)."""
        plan = plan_search(caller, vector, top_k, filter, options, self._dimension)
        return hits(plan, self._candidates(plan, exact))

    def get_document(self, tenant: str, document_id: str) -> DocumentRecord | None:
        """Return the tenant's record, or None when the tenant has no such document."""
        validate_tenant(tenant)
        _require_document_id(document_id)
        found = self._records(tenant, [document_id])
        return next((r for r in found if (r.tenant, r.document_id) == (tenant, document_id)), None)

    def lookup_documents(self, caller: Caller, document_ids: Sequence[str]) -> list[DocumentRecord]:
        """Return the caller's visible records of `document_ids`, in request order."""
        ids = validate_lookup(caller, document_ids)
        return visible_records(caller, ids, self._records(caller.tenant, ids))

    def list_documents(
        self,
        tenant: str,
        limit: int,
        after: str = "",
        visible_to: Sequence[str] | None = None,
    ) -> list[DocumentRecord]:
        """Return up to `limit` of the tenant's records with document_id > `after`,
        by document_id; with `visible_to` (a caller's access labels), only those
        the labels may see. Each page scans the tenant's registry
        (`listing_page`): fine for an admin listing, docs/qdrant.md has the cost."""
        validate_tenant(tenant)
        validate_list_limit(limit)
        return listing_page(self._scan_records(tenant), limit, after, visible_to)

    def remove_document(self, tenant: str, document_id: str) -> int:
        """Delete the tenant's document and its chunks; return the chunks deleted.

        Chunks are deleted even without a record (left by a crash in the middle
        of a first replacement); NotFoundError when the tenant has neither.
        """
        validate_tenant(tenant)
        _require_document_id(document_id)
        return self._remove(tenant, document_id)

    def document_chunks(self, tenant: str, document_id: str) -> list[StoredChunk]:
        """The live chunks of the tenant's document, by ordinal: what a re-index
        embeds again. NotFoundError when the tenant has no such document."""
        validate_tenant(tenant)
        _require_document_id(document_id)
        chunks = self._document_chunks(tenant, document_id)
        if not chunks:
            raise NotFoundError(f"document '{document_id}' not found in tenant '{tenant}'")
        return sorted(chunks, key=lambda chunk: chunk.ordinal)

    def tenants(self) -> list[str]:
        """The tenants with at least one indexed document, sorted."""
        return sorted(set(self._tenants()))

    def read_generations(self) -> str:
        """The index's generation table as its owner (`generations.py`) wrote
        it; "" when none was written."""
        return self._read_generations()

    def write_generations(self, table: str) -> None:
        """Replace the generation table, durably, for every replica to read."""
        self._write_generations(table)

    def stats(self) -> StoreStats:
        """Return document and chunk counts, the dimension and the embedding model."""
        documents, chunks = self._counts()
        return StoreStats(
            documents, chunks, self._dimension, self.backend, self._recorded_embedder()
        )

    def claim_embedder(self, model: str) -> None:
        """Record `model` as the embedder of the store's vectors on first use (the
        first write); FailedPreconditionError naming both when another is recorded.

        Vectors of two models share no geometry: a store that mixed them would
        rank by noise without any error, so a store serves one model for life
        and another model needs another store (docs/embedding.md, "Changing the
        embedder")."""
        if not model:
            raise InvalidInputError("embedding_model is empty: name the model of the vectors")
        recorded = self._recorded_embedder() or self._record_embedder(model)
        self._embedder = recorded
        self._refuse_other(recorded, model)

    def check_embedder(self, model: str) -> None:
        """FailedPreconditionError naming both when the store's vectors come from
        another model than `model`; a store without a recorded model passes."""
        self._refuse_other(self._recorded_embedder(), model)

    def _recorded_embedder(self) -> str:
        """The recorded model, read from the engine until there is one: it never
        changes once recorded, another replica may record it first."""
        if not self._embedder:
            self._embedder = self._read_embedder()
        return self._embedder

    def _refuse_other(self, recorded: str, model: str) -> None:
        if recorded and model and recorded != model:
            raise FailedPreconditionError(
                f"the index holds vectors of embedding model '{recorded}' ({self._dimension} "
                f"dimensions), not of '{model}': serve it with '{recorded}', or build a new "
                f"index with '{model}' (docs/embedding.md, \"Changing the embedder\")"
            )

    @abstractmethod
    def _replace(
        self, document: DocumentRecord, chunks: Sequence[StoredChunk], vectors: list[list[float]]
    ) -> tuple[int, int]:
        """Write a validated replacement, atomically for readers."""

    @abstractmethod
    def _candidates(self, plan: SearchPlan, exact: bool | None) -> list[Candidate]:
        """The plan's best `plan.limit` chunks (`best_first`), from one snapshot."""

    @abstractmethod
    def _records(self, tenant: str, document_ids: Sequence[str]) -> list[DocumentRecord]:
        """The tenant's indexed records among `document_ids`, in any order."""

    @abstractmethod
    def _scan_records(self, tenant: str) -> Iterator[DocumentRecord]:
        """Every indexed record of the tenant, in any order."""

    @abstractmethod
    def _remove(self, tenant: str, document_id: str) -> int:
        """Delete a document's chunks and record; NotFoundError if neither exists."""

    @abstractmethod
    def _document_chunks(self, tenant: str, document_id: str) -> list[StoredChunk]:
        """The chunks of the document's live version, in any order; [] if none."""

    @abstractmethod
    def _tenants(self) -> Iterator[str]:
        """The tenant of every indexed record (repeats allowed)."""

    @abstractmethod
    def _read_generations(self) -> str:
        """The stored generation table, "" when none is."""

    @abstractmethod
    def _write_generations(self, table: str) -> None:
        """Store the generation table (one small value)."""

    @abstractmethod
    def _counts(self) -> tuple[int, int]:
        """(documents, chunks) of every tenant."""

    @abstractmethod
    def _read_embedder(self) -> str:
        """The recorded embedding model, "" when none is."""

    @abstractmethod
    def _record_embedder(self, model: str) -> str:
        """Record `model` unless a model is recorded already; return the one
        recorded now (another's when a concurrent claim won)."""

    @abstractmethod
    def close(self) -> None:
        """Release the engine; later calls raise FailedPreconditionError. Idempotent."""


def _require_document_id(document_id: str) -> None:
    if not document_id:
        raise InvalidInputError("document_id must not be empty")
