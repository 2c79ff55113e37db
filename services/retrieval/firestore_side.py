"""The Vector Search store's side store in Firestore: what Vector Search cannot hold.

Vector Search keeps vectors and filter tokens only, and deletes by datapoint id
only. Firestore keeps the rest, in four collections under a prefix:

* `<prefix>_documents/<key>`: one document's registry record and its manifest:
  the live version and its datapoint and chunk ids, the versions being written
  (`pending`) and the superseded ones still to delete (`garbage`), each with
  its datapoint ids. A replacement becomes visible in one transaction on this
  record (`commit`); docs/vertex.md has the protocol.
* `<prefix>_chunks/<datapoint id>`: a chunk's payload (text, title, citation
  fields), read for the winners of a search.
* `<prefix>_terms/<term id>`: how many indexed chunks hold a BM25 term, and
  `<prefix>_meta/bm25` how many chunks have BM25 terms at all: the inverse
  document frequencies Qdrant's engine keeps itself and Vector Search does not.
* `<prefix>_meta/index`: the dimension the store was created with and the
  embedding model of its vectors.

Firestore (native mode) is what a GKE deployment on Google Cloud already has
next to Vertex AI: serverless, transactional, regional; docs/vertex.md says why
it was chosen over Memorystore or Cloud SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from services.common.errors import FailedPreconditionError, NotFoundError
from services.retrieval import schema
from services.retrieval.store import DocumentRecord, StoredChunk

WRITE_BATCH: Final = 400
"""Writes per Firestore batch (the service accepts 500)."""
IN_QUERY_VALUES: Final = 30
"""Values of one `in` filter, Firestore's limit."""
_BM25_TOTAL: Final = "bm25"
_INDEX_META: Final = "index"
_GENERATIONS: Final = "generations"
_SLOTS: Final = "generation-slots"


@dataclass
class Manifest:
    """A document's entry in the registry: its record, when indexed, and every
    version of its chunks that exists in Vector Search."""

    tenant: str
    document_id: str
    record: DocumentRecord | None = None
    """The live record; None while no version is live (first write, removed)."""
    version: str = ""
    """The live version ("" for none)."""
    datapoints: list[str] = field(default_factory=list)
    """Datapoint ids of the live version."""
    chunk_ids: list[str] = field(default_factory=list)
    """Chunk ids of the live version, in the same order."""
    pending: dict[str, list[str]] = field(default_factory=dict)
    """Versions being written: their datapoint ids."""
    started: dict[str, float] = field(default_factory=dict)
    """When each pending version's writer registered it (Unix seconds)."""
    garbage: dict[str, list[str]] = field(default_factory=dict)
    """Superseded or abandoned versions still to delete: their datapoint ids."""
    counted: list[str] = field(default_factory=list)
    """Versions (pending or garbage) whose BM25 terms are in the counts."""

    def to_firestore(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "document_id": self.document_id,
            "indexed": self.record is not None,
            "record": schema.record_payload(self.record) if self.record else None,
            "version": self.version,
            "datapoints": self.datapoints,
            "chunk_ids": self.chunk_ids,
            "pending": self.pending,
            "started": self.started,
            "garbage": self.garbage,
            "counted": self.counted,
        }

    @classmethod
    def from_firestore(cls, data: Mapping[str, Any]) -> Manifest:
        record = data.get("record")
        return cls(
            tenant=str(data["tenant"]),
            document_id=str(data["document_id"]),
            record=schema.record_from_payload(record) if record else None,
            version=str(data.get("version", "")),
            datapoints=list(data.get("datapoints", [])),
            chunk_ids=list(data.get("chunk_ids", [])),
            pending={k: list(v) for k, v in dict(data.get("pending", {})).items()},
            started={k: float(v) for k, v in dict(data.get("started", {})).items()},
            garbage={k: list(v) for k, v in dict(data.get("garbage", {})).items()},
            counted=list(data.get("counted", [])),
        )

    def abandon(self, version: str) -> None:
        """Make a pending version garbage."""
        if version in self.pending:
            self.garbage[version] = self.pending.pop(version)
        self.started.pop(version, None)

    def abandon_stale(self, before: float) -> None:
        """Make garbage of the pending versions registered before `before`: their
        writers died (a writer that outlives it finds its version gone at the flip)."""
        for version in [v for v in self.pending if self.started.get(v, 0.0) < before]:
            self.abandon(version)

    @property
    def empty(self) -> bool:
        """Nothing of the document exists: the entry itself can go."""
        return self.record is None and not self.pending and not self.garbage


class FirestoreSideStore:
    """The side store's reads and writes; the protocol is the caller's (`vertex.py`)."""

    def __init__(self, client: firestore.Client, prefix: str) -> None:
        self._client = client
        self._documents = client.collection(f"{prefix}_documents")
        self._chunks = client.collection(f"{prefix}_chunks")
        self._terms = client.collection(f"{prefix}_terms")
        self._meta = client.collection(f"{prefix}_meta")

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    # -- the index's own description ------------------------------------------------

    def claim_dimension(self, dimension: int, where: str) -> None:
        """Record `dimension` on first use; refuse another one later."""
        reference = self._meta.document(_INDEX_META)

        @firestore.transactional
        def claim(transaction: firestore.Transaction) -> None:
            snapshot = reference.get(transaction=transaction)
            if not snapshot.exists:
                transaction.set(reference, {"dimension": dimension})
                return
            stored = int((snapshot.to_dict() or {})["dimension"])
            if stored != dimension:
                raise FailedPreconditionError(
                    f"{where} holds vectors of dimension {stored}, but dimension {dimension} "
                    "was requested; re-index into a new index and side store"
                )

        claim(self._client.transaction())

    def embedder(self) -> str:
        """The recorded embedding model, "" when none is."""
        snapshot = self._meta.document(_INDEX_META).get()
        return str((snapshot.to_dict() or {}).get("embedding_model", "")) if snapshot.exists else ""

    def claim_embedder(self, model: str) -> str:
        """Record `model` unless a model is recorded; return the recorded one."""
        reference = self._meta.document(_INDEX_META)

        @firestore.transactional
        def claim(transaction: firestore.Transaction) -> str:
            snapshot = reference.get(transaction=transaction)
            data = snapshot.to_dict() or {}
            recorded = str(data.get("embedding_model", ""))
            if recorded:
                return recorded
            transaction.set(reference, {**data, "embedding_model": model})
            return model

        result: str = claim(self._client.transaction())
        return result

    def generations(self) -> str:
        """The stored generation table, "" when none is."""
        snapshot = self._meta.document(_GENERATIONS).get()
        return str((snapshot.to_dict() or {}).get("table", "")) if snapshot.exists else ""

    def write_generations(self, table: str) -> None:
        self._meta.document(_GENERATIONS).set({"table": table})

    def claim_slot(self, name: str, candidates: Sequence[str], what: str) -> str:
        """The candidate held by `name`: the one recorded, else the first no
        other name holds, recorded in one transaction (replicas agree)."""
        reference = self._meta.document(_SLOTS)

        @firestore.transactional
        def claim(transaction: firestore.Transaction) -> str:
            snapshot = reference.get(transaction=transaction)
            held = {str(k): str(v) for k, v in (snapshot.to_dict() or {}).items()}
            if name in held:
                return held[name]
            free = [c for c in candidates if c not in held.values()]
            if not free:
                raise FailedPreconditionError(
                    f"no {what} is free for generation {name}: each of the "
                    f"{len(candidates)} configured is held by another generation; drop one "
                    "or add another"
                )
            transaction.set(reference, {**held, name: free[0]})
            return free[0]

        result: str = claim(self._client.transaction())
        return result

    def release_slot(self, name: str) -> None:
        """Forget what `name` held: another generation may take it."""
        self._meta.document(_SLOTS).set({name: firestore.DELETE_FIELD}, merge=True)

    # -- manifests ------------------------------------------------------------------

    def manifests(self, keys: Sequence[str]) -> dict[str, Manifest]:
        """The existing manifests among `keys` (one batched read)."""
        if not keys:
            return {}
        references = [self._documents.document(key) for key in dict.fromkeys(keys)]
        return {
            snapshot.id: Manifest.from_firestore(snapshot.to_dict() or {})
            for snapshot in self._client.get_all(references)
            if snapshot.exists
        }

    def indexed(self, tenant: str) -> Iterator[DocumentRecord]:
        """Every live record of the tenant."""
        query = self._documents.where(filter=FieldFilter("tenant", "==", tenant)).where(
            filter=FieldFilter("indexed", "==", True)
        )
        for snapshot in query.stream():
            manifest = Manifest.from_firestore(snapshot.to_dict() or {})
            if manifest.record is not None:
                yield manifest.record

    def tenants(self) -> Iterator[str]:
        """The tenant of every live record."""
        query = self._documents.where(filter=FieldFilter("indexed", "==", True)).select(["tenant"])
        for snapshot in query.stream():
            yield str((snapshot.to_dict() or {})["tenant"])

    def update(
        self,
        key: str,
        tenant: str,
        document_id: str,
        change: Any,
    ) -> Manifest:
        """Apply `change(manifest)` to the document's manifest in one transaction
        and return the result; `change` may raise to leave it untouched. A
        manifest that ends up `empty` is deleted."""
        reference = self._documents.document(key)

        @firestore.transactional
        def apply(transaction: firestore.Transaction) -> Manifest:
            snapshot = reference.get(transaction=transaction)
            manifest = (
                Manifest.from_firestore(snapshot.to_dict() or {})
                if snapshot.exists
                else Manifest(tenant, document_id)
            )
            change(manifest)
            if manifest.empty:
                if snapshot.exists:
                    transaction.delete(reference)
            else:
                transaction.set(reference, manifest.to_firestore())
            return manifest

        result: Manifest = apply(self._client.transaction())
        return result

    def not_found(self, tenant: str, document_id: str) -> NotFoundError:
        return NotFoundError(f"document '{document_id}' not found in tenant '{tenant}'")

    def stats(self) -> tuple[int, int]:
        """(documents, chunks) of every tenant's live records."""
        indexed = self._documents.where(filter=FieldFilter("indexed", "==", True))
        documents = _aggregate(indexed.count(alias="n"))
        chunks = _aggregate(indexed.sum("record.chunk_count", alias="n"))
        return int(documents), int(chunks)

    # -- chunks ---------------------------------------------------------------------

    def write_chunks(self, rows: Iterable[tuple[str, StoredChunk, str]]) -> None:
        """Store (datapoint id, chunk, version) rows."""
        self._write(
            (self._chunks.document(datapoint), {**schema.chunk_payload(chunk), "version": version})
            for datapoint, chunk, version in rows
        )

    def chunks(self, datapoints: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The payloads of `datapoints` that exist, by datapoint id."""
        if not datapoints:
            return {}
        references = [self._chunks.document(d) for d in dict.fromkeys(datapoints)]
        return {
            snapshot.id: snapshot.to_dict() or {}
            for snapshot in self._client.get_all(references)
            if snapshot.exists
        }

    def delete_chunks(self, datapoints: Sequence[str]) -> None:
        self._write((self._chunks.document(d), None) for d in datapoints)

    def owners(self, chunk_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored chunks with these chunk ids (any version): chunk id → payload."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(chunk_ids), IN_QUERY_VALUES):
            batch = list(chunk_ids[start : start + IN_QUERY_VALUES])
            query = self._chunks.where(filter=FieldFilter("chunk_id", "in", batch))
            for snapshot in query.stream():
                payload = snapshot.to_dict() or {}
                found.setdefault(str(payload["chunk_id"]), payload)
        return found

    # -- BM25 statistics --------------------------------------------------------------

    def count_terms(self, term_sets: Sequence[Sequence[int]], sign: int) -> None:
        """Add (`sign` 1) or take away (-1) chunks holding each term set."""
        counts: dict[int, int] = {}
        for terms in term_sets:
            for term in terms:
                counts[term] = counts.get(term, 0) + sign
        with_terms = sum(1 for terms in term_sets if terms) * sign
        updates: list[tuple[Any, dict[str, Any] | None]] = [
            (self._terms.document(str(term)), {"chunks": firestore.Increment(n)})
            for term, n in counts.items()
        ]
        if with_terms:
            updates.append(
                (self._meta.document(_BM25_TOTAL), {"chunks": firestore.Increment(with_terms)})
            )
        self._write(updates, merge=True)

    def term_counts(self, terms: Sequence[int]) -> tuple[int, dict[int, int]]:
        """(chunks with BM25 terms, chunks holding each of `terms`) in one read."""
        references = [self._meta.document(_BM25_TOTAL)] + [
            self._terms.document(str(term)) for term in dict.fromkeys(terms)
        ]
        total, found = 0, {}
        for snapshot in self._client.get_all(references):
            chunks = int((snapshot.to_dict() or {}).get("chunks", 0)) if snapshot.exists else 0
            if snapshot.reference.parent.id == self._meta.id:
                total = chunks
            else:
                found[int(snapshot.id)] = chunks
        return total, found

    # -- helpers ----------------------------------------------------------------------

    def _write(
        self, writes: Iterable[tuple[Any, dict[str, Any] | None]], *, merge: bool = False
    ) -> None:
        """Set (or delete, for None) documents, `WRITE_BATCH` per commit."""
        batch = self._client.batch()
        pending = 0
        for reference, data in writes:
            if data is None:
                batch.delete(reference)
            else:
                batch.set(reference, data, merge=merge)
            pending += 1
            if pending == WRITE_BATCH:
                batch.commit()
                batch, pending = self._client.batch(), 0
        if pending:
            batch.commit()


def _aggregate(query: Any) -> float:
    """The single value of an aggregation query (0 when there is nothing)."""
    for results in query.get():
        for result in results:
            return float(result.value or 0)
    return 0.0
