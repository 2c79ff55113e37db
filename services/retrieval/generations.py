"""Generations of the index: re-indexing to another embedding model, blue/green.

Vectors of two embedding models share no geometry, so a store serves one model
for life (`EngineStore.claim_embedder`). Changing the model therefore means a
new store, a *generation*, filled beside the live one while the live one keeps
answering (`ragctl reindex`), then made live in one step:

* `building`: writes of its model go to it, searches never read it;
* `live`: exactly one; writes and searches of its model;
* `retired`: the previous live one, kept until dropped, so that questions
  embedded with its model just before the switch are still answered from it,
  and so that a bad switch can be undone by promoting it back. Writes of its
  model are ABORTED: the writer embeds again with the live model.

Deletions go to every generation, so a document deleted during a re-index does
not come back with the switch. The table of generations is one small JSON value
kept by the first store (g0), which every replica re-reads: at each write (a
replica must not write to a generation another replica has just retired) and
at most every `refresh_seconds` for searches.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from services.common.errors import (
    AbortedError,
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    UnimplementedError,
)
from services.retrieval.store import StoreStats, VectorStore

log = logging.getLogger(__name__)

FIRST: str = "g0"
"""The name of the store that existed before any re-index."""


class GenerationState(StrEnum):
    BUILDING = "building"
    LIVE = "live"
    RETIRED = "retired"


@dataclass(frozen=True)
class Generation:
    """One row of the generation table."""

    name: str
    embedding_model: str
    dimension: int
    state: GenerationState
    created_at_unix: int
    promoted_at_unix: int = 0


class GenerationStores(Protocol):
    """Where a backend keeps generations other than the first (the first is the
    store the service opened)."""

    def open(self, name: str, dimension: int) -> VectorStore:
        """Open (creating on first use) the store of generation `name`."""
        ...

    def destroy(self, name: str, store: VectorStore) -> None:
        """Delete the data of generation `name` and close `store`, its store."""
        ...


class IndexGenerations:
    """Sends each call to the store of its generation. Thread-safe."""

    def __init__(
        self,
        first: VectorStore,
        stores: GenerationStores | None = None,
        *,
        refresh_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._first = first
        self._stores = stores
        self._open: dict[str, VectorStore] = {FIRST: first}
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.RLock()
        self._table: list[Generation] = []
        self._numbered = 0
        """The highest generation number ever given: names are never reused, so a
        dropped generation's leftovers (logs, a backend's metadata) never meet a new one."""
        self._read_at = -float("inf")

    # -- routing ------------------------------------------------------------------

    def live(self) -> VectorStore:
        """The live generation's store (reads that name no generation)."""
        return self._store_of(self._live_row(self._cached()))

    def named(self, name: str) -> VectorStore:
        """The store of generation `name` (empty: the live one)."""
        if not name:
            return self.live()
        return self._store_of(self._row(self._cached(refresh=True), name))

    def for_search(self, model: str) -> tuple[VectorStore, str]:
        """(the store a search with a vector of `model` reads, the live model).

        Questions embedded with a retired generation's model are answered from
        it: a query service learns of the switch from the live model returned
        and embeds its next questions with it."""
        table = self._cached()
        live = self._live_row(table)
        row = next((g for g in table if model and g.embedding_model == model), None)
        if row is None or row.state is GenerationState.LIVE:
            return self._store_of(live), live.embedding_model
        if row.state is GenerationState.BUILDING:
            raise FailedPreconditionError(
                f"generation {row.name} of embedding model '{model}' is still being built; "
                f"search with the live model '{live.embedding_model}'"
            )
        return self._store_of(row), live.embedding_model

    def for_write(self, model: str) -> VectorStore:
        """The store a write of vectors of `model` goes to (the table is read
        afresh: a write must never land in a generation already retired)."""
        table = self._cached(refresh=True)
        live = self._live_row(table)
        row = next((g for g in table if model and g.embedding_model == model), live)
        if row.state is GenerationState.RETIRED:
            raise AbortedError(
                f"the index switched from embedding model '{model}' to "
                f"'{live.embedding_model}' (generation {live.name}); embed with "
                f"'{live.embedding_model}' and write again"
            )
        return self._store_of(row)

    def remove(self, tenant: str, document_id: str, generation: str = "") -> int:
        """Remove the document from `generation`, or from every one; the chunks
        deleted from the live one (or the named one). NotFoundError when no
        generation had it."""
        if generation:
            return self.named(generation).remove_document(tenant, document_id)
        table = self._cached(refresh=True)
        live = self._live_row(table)
        deleted, found = 0, False
        for row in [live, *(g for g in table if g is not live)]:
            try:
                removed = self._store_of(row).remove_document(tenant, document_id)
            except NotFoundError:
                continue
            if not found:
                deleted, found = removed, True
        if not found:
            raise NotFoundError(f"document '{document_id}' not found in tenant '{tenant}'")
        return deleted

    # -- administration -----------------------------------------------------------

    def generations(self) -> list[tuple[Generation, StoreStats]]:
        """Every generation with its counts, the live one first."""
        table = self._materialised(self._cached(refresh=True))
        ordered = sorted(table, key=lambda g: (g.state is not GenerationState.LIVE, g.name))
        return [(row, self._store_of(row).stats()) for row in ordered]

    def create(self, model: str, dimension: int) -> Generation:
        """A new building generation for `model`, or the one already building
        for it (a re-index that resumes)."""
        if not model:
            raise InvalidInputError("embedding_model is empty: name the new generation's model")
        if dimension < 1:
            raise InvalidInputError(f"dimension must be at least 1, got {dimension}")
        if self._stores is None:
            raise UnimplementedError(
                "this retrieval backend cannot hold a second generation of the index "
                '(docs/embedding.md, "Changing the embedder")'
            )
        with self._lock:
            table = self._materialised(self._cached(refresh=True))
            live = self._live_row(table)
            if not live.embedding_model:
                raise FailedPreconditionError(
                    "the index is empty: start the services with the new embedder instead"
                )
            for row in table:
                if row.embedding_model != model and row.state is GenerationState.BUILDING:
                    raise FailedPreconditionError(
                        f"generation {row.name} is being built for '{row.embedding_model}'; "
                        f"finish or drop it before building another"
                    )
                if row.embedding_model != model:
                    continue
                if row.state is GenerationState.BUILDING and row.dimension == dimension:
                    return row
                raise FailedPreconditionError(
                    f"generation {row.name} of '{model}' is {row.state} "
                    f"({row.dimension} dimensions): promote or drop it instead"
                )
            name = f"g{self._numbered + 1}"
            store = self._stores.open(name, dimension)
            try:
                store.claim_embedder(model)
            except BaseException:
                store.close()
                raise
            self._open[name] = store
            row = Generation(name, model, dimension, GenerationState.BUILDING, int(self._clock()))
            self._save([*table, row])
            log.info("index generation created", extra={"generation": name, "model": model})
            return row

    def promote(self, name: str) -> Generation:
        """Make generation `name` live; the live one retires. Readers switch at
        once: the table is one value, written in one step."""
        with self._lock:
            table = self._materialised(self._cached(refresh=True))
            row = self._row(table, name)
            if row.state is GenerationState.LIVE:
                return row
            promoted = replace(row, state=GenerationState.LIVE, promoted_at_unix=int(self._clock()))
            self._save(
                [
                    promoted
                    if g.name == name
                    else replace(g, state=GenerationState.RETIRED)
                    if g.state is GenerationState.LIVE
                    else g
                    for g in table
                ]
            )
            log.info("index generation promoted", extra={"generation": name})
            return promoted

    def drop(self, name: str) -> None:
        """Delete a building or retired generation and its data. The first
        generation's store keeps the table, so it is emptied, not deleted."""
        with self._lock:
            table = self._cached(refresh=True)
            row = self._row(table, name)
            if row.state is GenerationState.LIVE:
                raise FailedPreconditionError(
                    f"generation {name} is live; promote another before dropping it"
                )
            store = self._store_of(row)
            self._save([g for g in table if g.name != name])
            if name == FIRST:
                empty_store(store)
                return
            del self._open[name]
            assert self._stores is not None  # a second generation exists
            self._stores.destroy(name, store)
            log.info("index generation dropped", extra={"generation": name})

    def close(self) -> None:
        """Close every open store."""
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()

    # -- the table ----------------------------------------------------------------

    def _cached(self, refresh: bool = False) -> list[Generation]:
        """The table, read again when `refresh` or older than `refresh_seconds`;
        [] while there has never been a re-index."""
        with self._lock:
            now = time.monotonic()
            if refresh or now - self._read_at >= self._refresh_seconds:
                text = self._first.read_generations()
                stored: dict[str, Any] = (
                    json.loads(text) if text else {"generations": [], "numbered": 0}
                )
                self._table = [_row_of(item) for item in stored["generations"]]
                self._numbered = int(stored["numbered"])
                self._read_at = now
            return self._table

    def _materialised(self, table: list[Generation]) -> list[Generation]:
        """The table, with its implicit first row written out on first use."""
        if table:
            return table
        stats = self._first.stats()
        first = Generation(FIRST, stats.embedding_model, stats.dimension, GenerationState.LIVE, 0)
        return [first]

    def _save(self, table: list[Generation]) -> None:
        numbered = max([self._numbered, *(int(row.name[1:]) for row in table)])
        stored = {"generations": [asdict(row) for row in table], "numbered": numbered}
        self._first.write_generations(json.dumps(stored))
        self._table, self._numbered, self._read_at = table, numbered, time.monotonic()

    def _live_row(self, table: list[Generation]) -> Generation:
        live = next((g for g in table if g.state is GenerationState.LIVE), None)
        return live or Generation(FIRST, "", self._first.dimension, GenerationState.LIVE, 0)

    @staticmethod
    def _row(table: list[Generation], name: str) -> Generation:
        row = next((g for g in table if g.name == name), None)
        if row is None:
            known = ", ".join(g.name for g in table) or FIRST
            raise NotFoundError(f"no index generation {name!r}; the index has {known}")
        return row

    def _store_of(self, row: Generation) -> VectorStore:
        """The open store of `row`, opened on first use (another replica made it)."""
        with self._lock:
            store = self._open.get(row.name)
            if store is None:
                if self._stores is None:
                    raise UnimplementedError(f"generation {row.name} cannot be opened here")
                store = self._stores.open(row.name, row.dimension)
                self._open[row.name] = store
            return store


def _row_of(item: dict[str, object]) -> Generation:
    return Generation(
        name=str(item["name"]),
        embedding_model=str(item["embedding_model"]),
        dimension=int(str(item["dimension"])),
        state=GenerationState(str(item["state"])),
        created_at_unix=int(str(item["created_at_unix"])),
        promoted_at_unix=int(str(item.get("promoted_at_unix", 0))),
    )


def empty_store(store: VectorStore) -> None:
    """Remove every document of `store`, a page at a time (for storage that
    outlives its generation: the first store, a spare Vector Search index)."""
    for tenant in store.tenants():
        while page := store.list_documents(tenant, 1000):
            for record in page:
                store.remove_document(tenant, record.document_id)
