"""Answer cache: a question answered once is answered again without a model call,
and never with an answer whose sources have changed since.

Key. An answer depends on who asks, what, and how: the tenant, the caller's
access labels (sorted), the normalised question (Unicode NFKC, casefolded,
whitespace collapsed, trailing . ? ! dropped), top_k, the filter (lists sorted),
the retrieval mode, mmr_lambda, the tier override, the routing key and the
index version (embedding model and dimension, plus RAG_INDEX_VERSION). The key
is the SHA-256 of all of that, so the store never holds a question in a key.

Value. The answer (without request id, timings or debug view), the question,
when it was made, and the version (content SHA-256, indexed-at time, access
labels) of every document it cites.

Invalidation. A hit is served only after the cited documents' current versions,
as the caller sees them, were found unchanged: one LookupDocuments call to the
retrieval service for all of them. Otherwise the entry is deleted and the
question answered afresh. Nothing has to broadcast an update, so this holds in
every deployment: any number of query replicas, the LRU or Redis, ingestion in
another process. Declined answers and answers citing nothing are not cached:
there is nothing their validity could be checked against.

Versions are pinned without a race: they are read after the search that found
the sources, and then the sources are looked up again (a dense search confined
to their documents); only if every retrieved chunk is still there (a chunk id
derives from its document, position and text) is the answer stored. A document
updated between the search and the version read would have lost those chunks,
and one updated after the read has a newer version than the one recorded, so
its entry is dropped at its first lookup. Both run while the answer is being
generated, off the request's critical path.

Semantic cache (optional). Each replica keeps, per tenant and in memory, the
normalised query vectors of the answers it stored; after an exact miss, the
nearest cached question with the same scope (everything in the key but the
question) at or above a cosine threshold lends its answer, checked as above.
"""

import base64
import hashlib
import json
import logging
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from ragplatform.v1 import common_pb2, query_pb2, retrieval_pb2
from services.common.errors import PlatformError
from services.common.search import MAX_TOP_K
from services.runtime.cache import Cache
from services.runtime.clients import PlatformClients
from services.runtime.metrics import init_cache_series, record_cache_lookup
from services.runtime.telemetry import stage_span

log = logging.getLogger(__name__)

EXACT_CACHE = "answer"
SEMANTIC_CACHE = "semantic-answer"
KEY_FORMAT = 1
"""Part of every key: a change of the key or value format orphans old entries."""
TRAILING_MARKS = ".?!。"
"""Sentence-ending marks dropped from the end of a question (after NFKC, which
maps full-width ? and ! to these). Other punctuation can change the meaning
("C#", "C++") and is kept."""
INVALIDATION_REASONS = ("changed", "deleted")

VERSION_CHECKS = Counter(
    "rag_answer_cache_version_checks",
    "Cited documents whose version a cache hit (or a stored answer) checked with the "
    "retrieval service.",
)

INVALIDATIONS = Counter(
    "rag_cache_invalidations",
    "Cached answers found stale at lookup and deleted, by cache and reason (a cited "
    "document changed or was deleted).",
    ["cache", "reason"],
)

Vector = npt.NDArray[np.float32]


def canonical_question(question: str) -> str:
    """The question as the key sees it: spelling variants that cannot change the
    answer (width, case, spacing, a final question mark) map to one form."""
    text = " ".join(unicodedata.normalize("NFKC", question).casefold().split())
    return text.rstrip(TRAILING_MARKS + " ")


def canonical_filter(search_filter: common_pb2.MetadataFilter) -> dict[str, object]:
    """Every filter field by name: lists sorted and deduplicated (order and
    repetition do not change a filter), unset optional bounds as None. Built from
    the message's descriptor so that a field added to the contract joins the key."""
    fields: dict[str, object] = {}
    present = {field.name for field, _ in search_filter.ListFields()}
    for field in search_filter.DESCRIPTOR.fields:
        value = getattr(search_filter, field.name)
        if field.is_repeated:
            fields[field.name] = sorted(set(value))
        elif field.has_presence:
            fields[field.name] = value if field.name in present else None
        else:
            fields[field.name] = value
    return fields


def _digest(parts: object) -> str:
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AnswerScope:
    """Everything besides the question that decides an answer."""

    tenant: str
    access_labels: tuple[str, ...]
    top_k: int
    filter: str
    """canonical_filter as JSON."""
    retrieval_mode: int
    mmr_lambda: float
    tier: int
    routing_key: str
    index_version: str

    @classmethod
    def of(
        cls,
        caller: common_pb2.Caller,
        top_k: int,
        search_filter: common_pb2.MetadataFilter,
        retrieval_mode: int,
        mmr_lambda: float,
        tier: int,
        routing_key: str,
        index_version: str,
    ) -> "AnswerScope":
        return cls(
            tenant=caller.tenant,
            access_labels=tuple(sorted(set(caller.access_labels))),
            top_k=top_k,
            filter=json.dumps(canonical_filter(search_filter), sort_keys=True),
            retrieval_mode=retrieval_mode,
            mmr_lambda=mmr_lambda,
            tier=tier,
            routing_key=routing_key,
            index_version=index_version,
        )

    def caller(self) -> common_pb2.Caller:
        """Whom the scope's answers are for (the caller that asked)."""
        return common_pb2.Caller(tenant=self.tenant, access_labels=self.access_labels)

    def _parts(self) -> list[object]:
        return [
            KEY_FORMAT,
            self.tenant,
            list(self.access_labels),
            self.top_k,
            self.filter,
            self.retrieval_mode,
            self.mmr_lambda,
            self.tier,
            self.routing_key,
            self.index_version,
        ]

    @property
    def scope_id(self) -> str:
        """Identifies the scope alone: semantic matches stay inside one."""
        return _digest(self._parts())

    def key(self, question: str) -> str:
        """The exact cache key of `question` in this scope."""
        return _digest([*self._parts(), canonical_question(question)])


@dataclass(frozen=True)
class DocumentVersion:
    """What identifies one indexed version of a document."""

    content_sha256: str
    indexed_at_unix: int
    access_labels: tuple[str, ...]
    """A relabelled document is another version: who may read the answer changed."""

    @classmethod
    def of(cls, info: common_pb2.DocumentInfo) -> "DocumentVersion":
        return cls(info.content_sha256, info.indexed_at_unix, tuple(sorted(info.access_labels)))


@dataclass(frozen=True)
class CachedAnswer:
    """A stored answer with what it takes to check that it still holds."""

    question: str
    created_at_unix: float
    documents: Mapping[str, DocumentVersion]
    """Version of each cited document when the answer was made."""
    response: query_pb2.AskResponse

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": KEY_FORMAT,
                "question": self.question,
                "created_at_unix": self.created_at_unix,
                "documents": {
                    document_id: [v.content_sha256, v.indexed_at_unix, list(v.access_labels)]
                    for document_id, v in self.documents.items()
                },
                "response": base64.b64encode(self.response.SerializeToString()).decode(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CachedAnswer | None":
        """The entry, or None when it cannot be read (another format, corruption)."""
        try:
            fields = json.loads(data)
            if fields["format"] != KEY_FORMAT:
                return None
            response = query_pb2.AskResponse.FromString(base64.b64decode(fields["response"]))
            documents = {
                document_id: DocumentVersion(sha, int(indexed_at), tuple(labels))
                for document_id, (sha, indexed_at, labels) in fields["documents"].items()
            }
            return cls(fields["question"], float(fields["created_at_unix"]), documents, response)
        except (ValueError, KeyError, TypeError) as error:
            log.warning("unreadable cached answer dropped", extra={"error": str(error)})
            return None


@dataclass
class _SemanticEntry:
    scope_id: str
    vector: Vector
    data: bytes
    expires_at: float


def _unit(vector: Sequence[float]) -> Vector:
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    return array / norm if norm > 0 else array


class SemanticIndex:
    """Per tenant, in this process: question vectors of stored answers, at most
    `max_per_tenant` (least recently used evicted), each with its entry's bytes
    so that a semantic hit needs no round trip to the store."""

    def __init__(
        self,
        min_similarity: float,
        max_per_tenant: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_similarity = min_similarity
        self._max_per_tenant = max_per_tenant
        self._clock = clock
        self._tenants: dict[str, OrderedDict[str, _SemanticEntry]] = {}

    def add(
        self,
        tenant: str,
        scope_id: str,
        key: str,
        vector: Sequence[float],
        data: bytes,
        ttl_seconds: float,
    ) -> None:
        entries = self._tenants.setdefault(tenant, OrderedDict())
        entries[key] = _SemanticEntry(scope_id, _unit(vector), data, self._clock() + ttl_seconds)
        entries.move_to_end(key)
        while len(entries) > self._max_per_tenant:
            entries.popitem(last=False)

    def nearest(
        self, tenant: str, scope_id: str, vector: Sequence[float]
    ) -> tuple[str, bytes, float] | None:
        """(key, entry, cosine) of the most similar live question of the same
        tenant and scope at or above the threshold, or None."""
        entries = self._tenants.get(tenant)
        if not entries:
            return None
        query = _unit(vector)
        now = self._clock()
        best: tuple[str, bytes, float] | None = None
        for key, entry in list(entries.items()):
            if entry.expires_at <= now:
                del entries[key]
                continue
            if entry.scope_id != scope_id:
                continue
            similarity = float(np.dot(query, entry.vector))
            if similarity >= self.min_similarity and (best is None or similarity > best[2]):
                best = (key, entry.data, similarity)
        if best is not None:
            entries.move_to_end(best[0])
        return best

    def remove(self, tenant: str, key: str) -> None:
        entries = self._tenants.get(tenant)
        if entries is not None:
            entries.pop(key, None)


class AnswerCache:
    """Looks up, validates and stores answers (see the module docstring)."""

    def __init__(
        self,
        store: Cache,
        clients: PlatformClients,
        *,
        ttl_seconds: float,
        index_label: str,
        semantic: SemanticIndex | None = None,
    ) -> None:
        self._store = store
        self._clients = clients
        self._ttl_seconds = ttl_seconds
        self._index_label = index_label
        self.semantic = semantic
        caches = [EXACT_CACHE]
        if semantic is not None:
            caches.append(SEMANTIC_CACHE)
            init_cache_series([SEMANTIC_CACHE])  # the store's series are its builder's
        for cache in caches:
            for reason in INVALIDATION_REASONS:
                INVALIDATIONS.labels(cache, reason)

    async def index_version(self) -> str | None:
        """The live embedding model, its dimension and RAG_INDEX_VERSION: a
        re-index to another model changes every key, so answers retrieved from
        the previous generation are never served after the switch. None while
        the model cannot be told (the request then goes without the cache)."""
        try:
            info = (await self._clients.embedders.live()).info
        except PlatformError as error:
            log.warning("answer cache skipped: no model info", extra={"error": str(error)})
            return None
        return f"{info.model}|{info.dimension}|{self._index_label}"

    async def _versions(
        self, caller: common_pb2.Caller, document_ids: Collection[str]
    ) -> dict[str, DocumentVersion | None]:
        """Current version of each document as `caller` sees it (None: not indexed,
        or not visible to the caller), from one LookupDocuments call.

        Raises grpc.RpcError when the retrieval service cannot answer.
        """
        VERSION_CHECKS.inc(len(document_ids))
        reply = await self._clients.retrieval.LookupDocuments(
            retrieval_pb2.LookupDocumentsRequest(caller=caller, document_ids=list(document_ids))
        )
        current: dict[str, DocumentVersion | None] = dict.fromkeys(document_ids)
        for document in reply.found:
            current[document.document_id] = DocumentVersion.of(document)
        return current

    async def _valid(self, cache: str, key: str, scope: AnswerScope, entry: CachedAnswer) -> bool:
        """Whether every document `entry` cites is unchanged; a stale entry is deleted.
        An entry that cannot be checked now is not served, and kept."""
        try:
            current = await self._versions(scope.caller(), entry.documents.keys())
        except grpc.RpcError:
            return False
        reason = None
        for document_id, version in entry.documents.items():
            now = current[document_id]
            if now is None:
                reason = "deleted"
                break
            if now != version:
                reason = "changed"
                break
        if reason is None:
            return True
        INVALIDATIONS.labels(cache, reason).inc()
        await self._store.delete(key)
        if self.semantic is not None:
            self.semantic.remove(scope.tenant, key)
        return False

    async def lookup(self, scope: AnswerScope, question: str) -> CachedAnswer | None:
        """The valid cached answer to `question` in `scope`, or None."""
        key = scope.key(question)
        data = await self._store.get(key)
        if data is None:
            return None
        entry = CachedAnswer.from_bytes(data)
        if entry is None:
            await self._store.delete(key)
            return None
        return entry if await self._valid(EXACT_CACHE, key, scope, entry) else None

    async def lookup_similar(
        self, scope: AnswerScope, vector: Sequence[float]
    ) -> tuple[CachedAnswer, float] | None:
        """The valid cached answer to the nearest question in `scope` within the
        similarity threshold, with its cosine; None without a semantic index."""
        if self.semantic is None:
            return None
        found = self.semantic.nearest(scope.tenant, scope.scope_id, vector)
        record_cache_lookup(SEMANTIC_CACHE, found is not None)
        if found is None:
            return None
        key, data, similarity = found
        entry = CachedAnswer.from_bytes(data)
        if entry is None or not await self._valid(SEMANTIC_CACHE, key, scope, entry):
            self.semantic.remove(scope.tenant, key)
            return None
        return entry, similarity

    async def pin_versions(
        self,
        search: retrieval_pb2.SearchRequest,
        results: Sequence[common_pb2.ScoredChunk],
    ) -> dict[str, DocumentVersion] | None:
        """Versions of the documents of `results`, exactly as `search` saw them,
        or None when they cannot be pinned (see the module docstring). Traced as
        the stage "cache_pin" (it runs beside generation, so it is no timing)."""
        if not results:
            return None
        documents = sorted({r.chunk.document_id for r in results})
        # Dense and confined to the sources' documents: whatever else was indexed
        # meanwhile, and however ranking ties fall, the chunks come back if they exist.
        recheck = retrieval_pb2.SearchRequest(
            vector=search.vector,
            top_k=MAX_TOP_K,
            filter=common_pb2.MetadataFilter(document_ids=documents),
            mode=common_pb2.RETRIEVAL_MODE_DENSE,
            caller=search.caller,
            embedding_model=search.embedding_model,
        )
        try:
            with stage_span("cache_pin"):
                versions = await self._versions(search.caller, documents)
                again = await self._clients.retrieval.Search(recheck)
        except grpc.RpcError:
            return None
        if not {r.chunk.chunk_id for r in results} <= {r.chunk.chunk_id for r in again.results}:
            return None
        pinned = {d: v for d, v in versions.items() if v is not None}
        return pinned if len(pinned) == len(versions) else None

    async def store(
        self,
        scope: AnswerScope,
        question: str,
        response: query_pb2.AskResponse,
        pinned: Mapping[str, DocumentVersion],
        vector: Sequence[float],
    ) -> None:
        """Cache `response` unless it is declined, cites nothing, or cites a
        document whose version was not pinned."""
        cited = {citation.document_id for citation in response.citations}
        if response.declined or not cited or not cited <= pinned.keys():
            return
        kept = query_pb2.AskResponse()
        kept.CopyFrom(response)
        for name in ("debug", "request_id", "timings", "cache"):
            kept.ClearField(name)
        entry = CachedAnswer(question, time.time(), {d: pinned[d] for d in cited}, kept)
        data = entry.to_bytes()
        key = scope.key(question)
        await self._store.set(key, data, self._ttl_seconds)
        if self.semantic is not None and vector:
            self.semantic.add(scope.tenant, scope.scope_id, key, vector, data, self._ttl_seconds)

    async def close(self) -> None:
        await self._store.close()
