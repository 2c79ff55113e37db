"""`VectorStore` on Vertex AI Vector Search, with its side store in Firestore.

Vector Search holds one datapoint per chunk version: the dense vector, the
chunk's BM25 terms as a sparse embedding, and its filter fields as token and
numeric restricts (`restricts_of`). Firestore (`firestore_side.py`) holds the
chunk text, the registry and each document's manifest of datapoint ids, since
Vector Search deletes only by id and stores no payload.

A replacement writes a new version beside the live one, waits until the index
serves it, then flips the manifest in one transaction; searches drop every hit
whose version is not its document's live one, and retry when a dropped hit
shows that a flip raced them. Readers thus see the old or the new version of a
document, never a mix. docs/vertex.md gives the protocol and its costs.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Self

import numpy as np
from google.api_core import exceptions as google_errors
from google.api_core.retry import Retry, if_exception_type
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import aiplatform_v1
from google.cloud.aiplatform_v1.types import IndexDatapoint

from services.common.errors import (
    FailedPreconditionError,
    InvalidInputError,
    PlatformError,
    RateLimitedError,
    UnavailableError,
)
from services.retrieval import filters, schema
from services.retrieval.engine_store import EngineStore
from services.retrieval.firestore_side import FirestoreSideStore, Manifest
from services.retrieval.fusion import RRF_K, rrf
from services.retrieval.generations import empty_store
from services.retrieval.ranking import Candidate, SearchPlan, best_first
from services.retrieval.store import DocumentRecord, StoredChunk, VectorStore

log = logging.getLogger(__name__)

BACKEND: Final = "vertex-vector-search"
UNRESTRICTED: Final = "\x00unrestricted"
"""The access token of a chunk without access labels: a label cannot contain a
control character (`validate_labels`), so no caller's label equals it."""
_DATAPOINT_NAMESPACE: Final = uuid.UUID("6c1f8e52-0b7d-5c4e-9a31-7d2b5f0e8a16")
_DOCUMENT_NAMESPACE: Final = uuid.UUID("0e9b3a47-6f2c-5d81-b4e5-1a8c7d9f3b20")
_VERSION: Final = "version"
_CHUNK: Final = "chunk_id"
_TOKEN_FIELDS: Final = ("tenant", "document_id", "media_type", "source_uri")
"""Chunk fields stored as single-token restricts (access labels and tags are lists)."""
_NUMERIC_OPS: Final = IndexDatapoint.NumericRestriction.Operator


@dataclass(frozen=True)
class VectorSearchTarget:
    """Where the store's index lives and how it is queried."""

    index: str
    """Index resource name (projects/P/locations/L/indexes/I): upserts and removals."""
    index_endpoint: str
    """Index endpoint resource name (projects/P/locations/L/indexEndpoints/E): queries."""
    deployed_index_id: str
    """Id of the index's deployment on that endpoint."""
    api_endpoint: str
    """Host of the Vertex AI API ({location}-aiplatform.googleapis.com), or a URL."""
    query_endpoint: str = ""
    """Public endpoint domain of the index endpoint; "" queries through `api_endpoint`."""

    def __post_init__(self) -> None:
        for name in ("index", "index_endpoint", "deployed_index_id", "api_endpoint"):
            if not getattr(self, name):
                raise InvalidInputError(f"Vector Search needs {name}; it is empty")


@dataclass(frozen=True)
class VertexTuning:
    """Operational parameters."""

    upsert_batch: int = 500
    """Datapoints per upsert or remove request."""
    exact: bool = False
    """Search every leaf of the index (`fraction_leaf_nodes_to_search_override=1`)."""
    search_attempts: int = 5
    """Searches that raced a replacement before UNAVAILABLE."""
    visibility_timeout_seconds: float = 30.0
    """How long a replacement waits for the index to serve its new datapoints."""
    writer_timeout_seconds: float = 3600.0
    """A version pending for longer lost its writer (a crashed process): the
    document's next flip makes it garbage. Far above any replacement's duration."""
    max_neighbors: int = 1000
    """Most neighbours one query asks for when stale hits make it look further."""
    retry_seconds: float = 10.0
    """How long a call retries 429, 500 and 503 answers, with exponential backoff
    and jitter (every call the store makes is idempotent); 0: no retries. The
    SDK retries none of these methods by default."""

    def __post_init__(self) -> None:
        for name in ("upsert_batch", "search_attempts", "max_neighbors"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.retry_seconds < 0:
            raise InvalidInputError(f"retry_seconds must be >= 0, got {self.retry_seconds}")

    @property
    def retry(self) -> Retry | None:
        """The retry policy of every Vector Search call."""
        if not self.retry_seconds:
            return None
        return Retry(
            predicate=if_exception_type(
                google_errors.TooManyRequests,
                google_errors.InternalServerError,
                google_errors.ServiceUnavailable,
            ),
            initial=0.1,
            maximum=2.0,
            multiplier=2.0,
            timeout=self.retry_seconds,
        )


@dataclass(frozen=True)
class _Hit:
    """A neighbour as the index returned it: enough to check it is live."""

    datapoint: str
    chunk_id: str
    key: str
    version: str
    score: float
    dense: list[float]


class _Raced(Exception):
    """A search saw a version that a concurrent flip superseded: run it again."""


class VertexVectorStore(EngineStore):
    """`VectorStore` on a Vector Search index and a Firestore side store.

    Thread-safe: the SDK clients are, and the store keeps no other mutable state.
    """

    backend = BACKEND

    def __init__(
        self,
        index_client: aiplatform_v1.IndexServiceClient,
        match_client: aiplatform_v1.MatchServiceClient,
        side: FirestoreSideStore,
        target: VectorSearchTarget,
        dimension: int,
        tuning: VertexTuning,
    ) -> None:
        """Use `connect` or `open`; this only wires prepared clients."""
        super().__init__(dimension)
        self._index_client = index_client
        self._match_client = match_client
        self._side: FirestoreSideStore | None = side
        self._target = target
        self._tuning = tuning

    @classmethod
    def connect(
        cls,
        target: VectorSearchTarget,
        firestore_client: Any,
        collection_prefix: str,
        dimension: int,
        *,
        credentials: Credentials | None = None,
        tuning: VertexTuning | None = None,
    ) -> Self:
        """Open the store with REST clients of the Vertex AI API (Application
        Default Credentials unless `credentials` are given)."""
        index_client = aiplatform_v1.IndexServiceClient(
            transport="rest",
            credentials=credentials,
            client_options={"api_endpoint": target.api_endpoint},
        )
        match_client = aiplatform_v1.MatchServiceClient(
            transport="rest",
            credentials=credentials,
            client_options={"api_endpoint": target.query_endpoint or target.api_endpoint},
        )
        side = FirestoreSideStore(firestore_client, collection_prefix)
        try:
            return cls.open(index_client, match_client, side, target, dimension, tuning=tuning)
        except BaseException:
            index_client.transport.close()  # type: ignore[no-untyped-call]
            match_client.transport.close()  # type: ignore[no-untyped-call]
            side.close()
            raise

    @classmethod
    def open(
        cls,
        index_client: aiplatform_v1.IndexServiceClient,
        match_client: aiplatform_v1.MatchServiceClient,
        side: FirestoreSideStore,
        target: VectorSearchTarget,
        dimension: int,
        *,
        tuning: VertexTuning | None = None,
    ) -> Self:
        """Open the store on prepared clients, recording its dimension on first
        use; FailedPreconditionError when the side store was built with another.
        The store owns the clients once this returns."""
        if dimension < 1:
            raise InvalidInputError(f"dimension must be at least 1, got {dimension}")
        side.claim_dimension(dimension, f"Vector Search index '{target.index}'")
        return cls(index_client, match_client, side, target, dimension, tuning or VertexTuning())

    # -- writes -----------------------------------------------------------------------

    def _replace(
        self, document: DocumentRecord, chunks: Sequence[StoredChunk], vectors: list[list[float]]
    ) -> tuple[int, int]:
        """Register the version as pending, write its chunks and datapoints, wait
        until the index serves them, flip the manifest, then delete what the
        flip superseded. A failure before the flip leaves the old version live;
        what this writer wrote is deleted then or by the document's next write."""
        side = self._require_open()
        tenant, document_id = document.tenant, document.document_id
        key = _document_key(tenant, document_id)
        chunk_ids = [chunk.chunk_id for chunk in chunks]
        schema.refuse_foreign_chunks(
            chunk_ids,
            {
                chunk_id: owner
                for chunk_id, owner in side.owners(chunk_ids).items()
                if (owner.get("tenant"), owner.get("document_id")) != (tenant, document_id)
            },
            tenant,
            document_id,
        )
        version = uuid.uuid4().hex
        datapoints = [_datapoint_id(tenant, chunk_id, version) for chunk_id in chunk_ids]

        def register(manifest: Manifest) -> None:
            manifest.pending[version] = datapoints
            manifest.started[version] = time.time()

        side.update(key, tenant, document_id, register)
        try:
            side.write_chunks(zip(datapoints, chunks, [version] * len(chunks), strict=True))
            self._upsert(
                [
                    _datapoint(point, chunk, row, version)
                    for point, chunk, row in zip(datapoints, chunks, vectors, strict=True)
                ]
            )
            side.count_terms([_terms(chunk) for chunk in chunks], +1)
            side.update(key, tenant, document_id, lambda m: m.counted.append(version))
            self._await_visible(document, version, datapoints, vectors)

            previous: set[str] = set()

            def flip(manifest: Manifest) -> None:
                previous.clear()  # a transaction may run its function again
                if version not in manifest.pending:
                    raise FailedPreconditionError(
                        f"document '{document_id}' of tenant '{tenant}' was removed, or this "
                        "replacement outlived its writer timeout, while it was written; "
                        "nothing was changed"
                    )
                manifest.pending.pop(version)
                manifest.started.pop(version, None)
                manifest.abandon_stale(time.time() - self._tuning.writer_timeout_seconds)
                if manifest.version:
                    manifest.garbage[manifest.version] = manifest.datapoints
                    previous.update(manifest.chunk_ids)
                manifest.record = document
                manifest.version = version
                manifest.datapoints = datapoints
                manifest.chunk_ids = chunk_ids

            flipped = side.update(key, tenant, document_id, flip)
        except BaseException:
            self._abandon(key, tenant, document_id, version)
            raise
        self._collect(flipped)
        return len(chunks), len(previous - set(chunk_ids))

    def _remove(self, tenant: str, document_id: str) -> int:
        """Readers see the document until its manifest names no live version,
        then nothing of it; its datapoints are deleted after that."""
        side = self._require_open()
        key = _document_key(tenant, document_id)
        removed: list[int] = []

        def retire(manifest: Manifest) -> None:
            removed.clear()  # a transaction may run its function again
            count = len(manifest.datapoints) + sum(map(len, manifest.pending.values()))
            if manifest.record is None and not count:
                raise side.not_found(tenant, document_id)
            if manifest.version:
                manifest.garbage[manifest.version] = manifest.datapoints
            for version in list(manifest.pending):
                manifest.abandon(version)
            manifest.record, manifest.version = None, ""
            manifest.datapoints, manifest.chunk_ids = [], []
            removed.append(count)

        self._collect(side.update(key, tenant, document_id, retire))
        return removed[0]

    def _abandon(self, key: str, tenant: str, document_id: str, version: str) -> None:
        """After a failed write: its version is garbage, deleted now if the index
        lets us, else by the document's next write or removal."""
        try:

            def drop(manifest: Manifest) -> None:
                manifest.abandon(version)

            self._collect(self._require_open().update(key, tenant, document_id, drop))
        except Exception:
            log.exception(
                "could not clean up a failed write of document %r (tenant %r); its next "
                "write or removal deletes what was written",
                document_id,
                tenant,
            )

    def _collect(self, manifest: Manifest) -> None:
        """Delete the garbage versions' datapoints, chunks and term counts, then
        forget them. A failure leaves them listed for the next attempt; searches
        never return them meanwhile (they are not the live version)."""
        side = self._require_open()
        key = _document_key(manifest.tenant, manifest.document_id)
        for version, datapoints in list(manifest.garbage.items()):
            try:
                self._remove_datapoints(datapoints)
                if version in manifest.counted:
                    stored = side.chunks(datapoints)
                    side.count_terms(
                        [_terms(schema.chunk_from_payload(p)) for p in stored.values()], -1
                    )
                side.delete_chunks(datapoints)

                def forget(current: Manifest, version: str = version) -> None:
                    current.garbage.pop(version, None)
                    if version in current.counted:
                        current.counted.remove(version)

                side.update(key, manifest.tenant, manifest.document_id, forget)
            except (PlatformError, google_errors.GoogleAPIError):
                log.warning(
                    "deleting superseded chunks of document %r (tenant %r) failed; the next "
                    "write or removal retries",
                    manifest.document_id,
                    manifest.tenant,
                    exc_info=True,
                )
                return

    def _await_visible(
        self,
        document: DocumentRecord,
        version: str,
        datapoints: list[str],
        vectors: list[list[float]],
    ) -> None:
        """Wait until a query restricted to the new version returns all of its
        datapoints: streaming updates reach queries after a delay, and the flip
        must not make a version live before searches can find it."""
        if not datapoints:
            return
        restricts = [
            _token("tenant", [document.tenant]),
            _token("document_id", [document.document_id]),
            _token(_VERSION, [version]),
        ]
        probe = IndexDatapoint(
            datapoint_id="probe", feature_vector=_unit(vectors[0]), restricts=restricts
        )
        deadline = time.monotonic() + self._tuning.visibility_timeout_seconds
        pause = 0.05
        while True:
            (found,) = self._find([probe], len(datapoints), exact=True)
            if len(found) >= len(datapoints):
                return
            if time.monotonic() >= deadline:
                raise UnavailableError(
                    f"Vector Search served {len(found)} of the {len(datapoints)} new chunks of "
                    f"document '{document.document_id}' after "
                    f"{self._tuning.visibility_timeout_seconds:g} s; nothing was changed, retry"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    # -- reads ------------------------------------------------------------------------

    def _candidates(self, plan: SearchPlan, exact: bool | None) -> list[Candidate]:
        """The plan's legs in one `find_neighbors` request (fused here by RRF,
        the formula of the other engines), keeping only live versions; a leg cut
        short by stale hits asks again for more, and a raced flip runs it again."""
        neighbors = plan.leg_size
        known: dict[str, str] = {}
        for attempt in range(self._tuning.search_attempts):
            if attempt:
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
            try:
                candidates, short = self._attempt(plan, neighbors, exact, known)
            except _Raced:
                continue
            if not short or neighbors >= self._tuning.max_neighbors:
                return candidates
            neighbors = min(neighbors * 4, self._tuning.max_neighbors)
        raise UnavailableError(
            f"Vector Search: every search of tenant '{plan.tenant}' raced a document "
            f"replacement ({self._tuning.search_attempts} attempts); retry"
        )

    def _attempt(
        self, plan: SearchPlan, neighbors: int, exact: bool | None, known: dict[str, str]
    ) -> tuple[list[Candidate], bool]:
        """One search: (candidates, whether a leg lost hits it might miss).

        A hit of a superseded version means its document flipped, maybe after
        the query ran and so with the live version unseen: `_Raced`, unless an
        earlier attempt (in `known`) already saw that same live version. The
        next query then starts after the flip, which came after the index
        served the live version, so a lingering superseded datapoint (its
        deletion failed) costs one attempt, not the search."""
        side = self._require_open()
        restricts, numeric = restricts_of(plan.filter)
        queries = []
        if plan.dense is not None:
            queries.append(
                IndexDatapoint(
                    datapoint_id="query",
                    feature_vector=_unit(plan.dense),
                    restricts=restricts,
                    numeric_restricts=numeric,
                )
            )
        if plan.terms is not None:
            weights = self._idf(list(plan.terms.indices))
            if weights:
                queries.append(
                    IndexDatapoint(
                        datapoint_id="query",
                        sparse_embedding=IndexDatapoint.SparseEmbedding(
                            dimensions=list(weights), values=list(weights.values())
                        ),
                        restricts=restricts,
                        numeric_restricts=numeric,
                    )
                )
        if not queries:
            return [], False
        legs = self._find(queries, neighbors, exact=exact)
        manifests = side.manifests([hit.key for leg in legs for hit in leg])
        live_legs, short, raced = [], False, False
        for leg in legs:
            live = []
            for hit in leg:
                manifest = manifests.get(hit.key)
                current = manifest.version if manifest is not None else ""
                if hit.version == current:
                    live.append(hit)
                elif manifest is None or hit.version not in manifest.pending:
                    raced = raced or known.get(hit.key) != current
                    known[hit.key] = current
            live_legs.append(_by_score_then_id(live)[: plan.leg_size])
            short = short or (len(leg) == neighbors and len(live) < plan.leg_size)
        if raced:
            raise _Raced
        by_id = {hit.chunk_id: hit for leg in live_legs for hit in leg}
        if len(live_legs) == 2:
            fused = rrf([[hit.chunk_id for hit in leg] for leg in live_legs], k=RRF_K)
            ranked = [Candidate(chunk_id, score, {}) for chunk_id, score in fused]
        else:
            ranked = [Candidate(hit.chunk_id, hit.score, {}) for hit in live_legs[0]]
        winners = [by_id[c.id] for c in best_first(ranked, plan.limit)]
        scores = {c.id: c.score for c in ranked}
        payloads = side.chunks([hit.datapoint for hit in winners])
        if len(payloads) < len(winners):
            raise _Raced  # a winner's version was superseded and deleted meanwhile
        return [
            Candidate(hit.chunk_id, scores[hit.chunk_id], payloads[hit.datapoint], hit.dense)
            for hit in winners
        ], short

    def _records(self, tenant: str, document_ids: Sequence[str]) -> list[DocumentRecord]:
        manifests = self._require_open().manifests([_document_key(tenant, d) for d in document_ids])
        return [m.record for m in manifests.values() if m.record is not None]

    def _scan_records(self, tenant: str) -> Iterator[DocumentRecord]:
        return self._require_open().indexed(tenant)

    def _counts(self) -> tuple[int, int]:
        """(documents, chunks) of every tenant's live records."""
        return self._require_open().stats()

    def _document_chunks(self, tenant: str, document_id: str) -> list[StoredChunk]:
        """The chunks the manifest's live version names: a replacement writes
        new datapoint ids, so the ones read never change meaning."""
        side = self._require_open()
        manifest = side.manifests([_document_key(tenant, document_id)]).get(
            _document_key(tenant, document_id)
        )
        if manifest is None or manifest.record is None:
            return []
        payloads = side.chunks(manifest.datapoints)
        return [
            schema.chunk_from_payload(payloads[d]) for d in manifest.datapoints if d in payloads
        ]

    def _tenants(self) -> Iterator[str]:
        return self._require_open().tenants()

    def _read_generations(self) -> str:
        return self._require_open().generations()

    def _write_generations(self, table: str) -> None:
        self._require_open().write_generations(table)

    def _read_embedder(self) -> str:
        return self._require_open().embedder()

    def _record_embedder(self, model: str) -> str:
        return self._require_open().claim_embedder(model)

    def close(self) -> None:
        """Close the clients; later calls raise FailedPreconditionError. Idempotent."""
        side, self._side = self._side, None
        if side is not None:
            self._index_client.transport.close()  # type: ignore[no-untyped-call]
            self._match_client.transport.close()  # type: ignore[no-untyped-call]
            side.close()

    # -- Vector Search calls ------------------------------------------------------------

    def _upsert(self, datapoints: list[IndexDatapoint]) -> None:
        for start in range(0, len(datapoints), self._tuning.upsert_batch):
            request = aiplatform_v1.UpsertDatapointsRequest(
                index=self._target.index,
                datapoints=datapoints[start : start + self._tuning.upsert_batch],
            )
            with self._calls():
                self._index_client.upsert_datapoints(request=request, retry=self._tuning.retry)

    def _remove_datapoints(self, datapoints: Sequence[str]) -> None:
        for start in range(0, len(datapoints), self._tuning.upsert_batch):
            request = aiplatform_v1.RemoveDatapointsRequest(
                index=self._target.index,
                datapoint_ids=list(datapoints[start : start + self._tuning.upsert_batch]),
            )
            with self._calls():
                self._index_client.remove_datapoints(request=request, retry=self._tuning.retry)

    def _find(
        self, queries: list[IndexDatapoint], neighbors: int, *, exact: bool | None
    ) -> list[list[_Hit]]:
        """One `find_neighbors` request: each query's neighbours, best first."""
        leaves = 1.0 if (self._tuning.exact if exact is None else exact) else 0.0
        request = aiplatform_v1.FindNeighborsRequest(
            index_endpoint=self._target.index_endpoint,
            deployed_index_id=self._target.deployed_index_id,
            queries=[
                aiplatform_v1.FindNeighborsRequest.Query(
                    datapoint=query,
                    neighbor_count=neighbors,
                    fraction_leaf_nodes_to_search_override=leaves,
                )
                for query in queries
            ],
            return_full_datapoint=True,
        )
        with self._calls():
            response = self._match_client.find_neighbors(request=request, retry=self._tuning.retry)
        return [
            [_hit(neighbor, sparse=not query.feature_vector) for neighbor in found.neighbors]
            for query, found in zip(queries, response.nearest_neighbors, strict=True)
        ]

    def _idf(self, terms: list[int]) -> dict[int, float]:
        """The query's BM25 weights: each term's inverse document frequency, by
        the formula of Qdrant's IDF modifier, over every indexed chunk; terms no
        chunk holds are left out (they match nothing)."""
        with self._calls():
            total, counts = self._require_open().term_counts(terms)
        return {
            term: math.log((total - n + 0.5) / (n + 0.5) + 1.0)
            for term in dict.fromkeys(terms)
            if (n := counts.get(term, 0)) > 0
        }

    @contextmanager
    def _calls(self) -> Iterator[None]:
        """Google API errors as the platform's, naming Vector Search."""
        try:
            yield
        except google_errors.TooManyRequests as exc:
            raise RateLimitedError(f"Vector Search: quota exhausted ({exc.message})") from exc
        except (
            google_errors.ServiceUnavailable,
            google_errors.DeadlineExceeded,
            google_errors.InternalServerError,
        ) as exc:
            raise UnavailableError(f"Vector Search is unavailable ({exc.message})") from exc

    def _require_open(self) -> FirestoreSideStore:
        if self._side is None:
            raise FailedPreconditionError("vector store is closed")
        return self._side


class VertexGenerationStores:
    """Generations of the index beyond the first, on spare Vector Search indexes.

    An index has one dimension for life and is created by Terraform, not by the
    service, so a re-index needs an index made for it: generation gN takes the
    first spare that no other generation holds (recorded in Firestore, so
    replicas agree) and keeps its chunk text in the collections "<prefix>_gN_*".
    Dropping it empties the index, which stays for a later generation."""

    def __init__(
        self,
        spares: Sequence[VectorSearchTarget],
        slots: FirestoreSideStore,
        prefix: str,
        connect: Callable[[VectorSearchTarget, str, int], VertexVectorStore],
    ) -> None:
        self._spares = {target.index: target for target in spares}
        self._slots = slots
        self._prefix = prefix
        self._connect = connect

    def open(self, name: str, dimension: int) -> VertexVectorStore:
        index = self._slots.claim_slot(
            name, list(self._spares), "spare Vector Search index (RAG_VECTOR_SEARCH_SPARE_INDEXES)"
        )
        if index not in self._spares:
            raise FailedPreconditionError(
                f"generation {name} is on Vector Search index '{index}', which "
                "RAG_VECTOR_SEARCH_SPARE_INDEXES no longer lists"
            )
        return self._connect(self._spares[index], f"{self._prefix}_{name}", dimension)

    def destroy(self, name: str, store: VectorStore) -> None:
        empty_store(store)
        store.close()
        self._slots.release_slot(name)


def restricts_of(
    spec: filters.AllOf,
) -> tuple[list[IndexDatapoint.Restriction], list[IndexDatapoint.NumericRestriction]]:
    """The token and numeric restricts of a search filter (`filters.search_filter`).

    Raises TypeError for a filter without its tenant condition, so that no
    query can be built without it, and for shapes searches never build.
    """
    tokens: list[IndexDatapoint.Restriction] = []
    numeric: list[IndexDatapoint.NumericRestriction] = []
    for condition in spec.must:
        match condition:
            case filters.Match(field, value) if isinstance(value, str):
                tokens.append(_token(field, [value]))
            case filters.MatchAny(field, values):
                tokens.append(_token(field, list(values)))
            case filters.IsEmpty("access_labels"):
                tokens.append(_token("access_labels", [UNRESTRICTED]))
            case filters.AnyOf(
                (filters.IsEmpty("access_labels"), filters.MatchAny("access_labels", labels))
            ):
                tokens.append(_token("access_labels", [UNRESTRICTED, *labels]))
            case filters.Range(field, gte, lte):
                if gte is not None:
                    numeric.append(_number(field, gte, _NUMERIC_OPS.GREATER_EQUAL))
                if lte is not None:
                    numeric.append(_number(field, lte, _NUMERIC_OPS.LESS_EQUAL))
            case _:
                raise TypeError(f"Vector Search has no restrict for {condition!r}")
    for condition in spec.must_not:
        match condition:
            case filters.Match(field, int(value)):
                numeric.append(_number(field, value, _NUMERIC_OPS.NOT_EQUAL))
            case _:
                raise TypeError(f"Vector Search has no restrict for not {condition!r}")
    if not any(r.namespace == "tenant" for r in tokens):
        raise TypeError("a Vector Search query must restrict the tenant")
    return tokens, numeric


def _datapoint(
    datapoint_id: str, chunk: StoredChunk, vector: list[float], version: str
) -> IndexDatapoint:
    """A chunk version's datapoint: vectors and every field a search filters on."""
    tokens = [_token(name, [str(getattr(chunk, name))]) for name in _TOKEN_FIELDS]
    tokens.append(_token("access_labels", list(chunk.access_labels) or [UNRESTRICTED]))
    if chunk.tags:
        tokens.append(_token("tags", list(chunk.tags)))
    tokens.append(_token(_VERSION, [version]))
    tokens.append(_token(_CHUNK, [chunk.chunk_id]))
    terms = schema.chunk_vectors([], chunk.title, chunk.text, lambda t: t).get(schema.KEYWORD)
    sparse = (
        IndexDatapoint.SparseEmbedding(dimensions=list(terms.indices), values=list(terms.values))
        if terms is not None
        else None
    )
    return IndexDatapoint(
        datapoint_id=datapoint_id,
        feature_vector=_unit(vector),
        sparse_embedding=sparse,
        restricts=tokens,
        numeric_restricts=[
            IndexDatapoint.NumericRestriction(
                namespace="document_date_unix", value_int=chunk.document_date_unix
            )
        ],
    )


def _by_score_then_id(hits: list[_Hit]) -> list[_Hit]:
    """A leg's hits best first, ties broken by chunk id as `best_first` does:
    the index breaks them by datapoint id, which changes with every version,
    so the same request would fuse differently after each rewrite."""
    scores = np.asarray([hit.score for hit in hits], dtype=np.float32).tolist()
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], hits[i].chunk_id))
    return [hits[i] for i in order]


def _terms(chunk: StoredChunk) -> list[int]:
    """The BM25 term ids of a chunk, as counted for inverse document frequencies."""
    terms = schema.chunk_vectors([], chunk.title, chunk.text, lambda t: t).get(schema.KEYWORD)
    return list(terms.indices) if terms is not None else []


def _hit(neighbor: Any, *, sparse: bool) -> _Hit:
    """A neighbour, named by the chunk id and version in its restricts."""
    datapoint = neighbor.datapoint
    tokens = {r.namespace: list(r.allow_list) for r in datapoint.restricts}
    tenant, document_id = tokens["tenant"][0], tokens["document_id"][0]
    return _Hit(
        datapoint=datapoint.datapoint_id,
        chunk_id=tokens[_CHUNK][0],
        key=_document_key(tenant, document_id),
        version=tokens[_VERSION][0],
        score=float(neighbor.sparse_distance if sparse else neighbor.distance),
        dense=list(datapoint.feature_vector),
    )


def _token(namespace: str, values: list[str]) -> IndexDatapoint.Restriction:
    return IndexDatapoint.Restriction(namespace=namespace, allow_list=values)


def _number(namespace: str, value: int, op: Any) -> IndexDatapoint.NumericRestriction:
    return IndexDatapoint.NumericRestriction(namespace=namespace, value_int=value, op=op)


def _unit(vector: Sequence[float]) -> list[float]:
    """`vector` scaled to length 1: the index ranks by dot product, which is
    then the cosine the other engines rank by."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else list(vector)


def _datapoint_id(tenant: str, chunk_id: str, version: str) -> str:
    """Two versions of a chunk coexist while a replacement is under way."""
    return schema.scoped_id(_DATAPOINT_NAMESPACE, tenant, chunk_id, version)


def _document_key(tenant: str, document_id: str) -> str:
    return schema.scoped_id(_DOCUMENT_NAMESPACE, tenant, document_id)


def anonymous() -> Credentials:
    """Credentials for an emulator or fake, which checks none."""
    return AnonymousCredentials()  # type: ignore[no-untyped-call]
