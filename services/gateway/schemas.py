"""The gateway's HTTP request and response models, and their conversion from protos.

Explicit models (rather than raw MessageToDict output) so that /openapi.json
describes every request and response body. Field names are the proto field
names; tests check that they stay in step with the contract (PROTO_MODELS).
"""

from typing import Any, Literal, TypeVar

from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    query_pb2,
    retrieval_pb2,
)
from services.common.search import MAX_FILTER_VALUES
from services.gateway.protojson import to_plain

UINT32_MAX = 2**32 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Bounds of the contract's int64 fields: a larger number cannot be put into a request."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _surrogate_free(value: object, path: str) -> None:
    """Raise ValueError naming `path` if a string in `value` holds a lone UTF-16
    surrogate (JSON can escape one: "\\ud800"), which is no Unicode text and
    which protobuf cannot encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path}: not valid Unicode text (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _surrogate_free(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for item in value:
            _surrogate_free(item, path)


class _RequestModel(_Model):
    """A request body: its strings must be Unicode text to go into a protobuf."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        _surrogate_free(data, "")
        return data


class MetadataFilter(_RequestModel):
    """Restricts a search; empty lists mean no restriction on that field. Fields
    combine with AND, values inside one field with OR. It narrows the caller's
    own documents: the tenant comes from the API key, never from the filter."""

    document_ids: list[str] = Field(default_factory=list, max_length=MAX_FILTER_VALUES)
    media_types: list[str] = Field(default_factory=list, max_length=MAX_FILTER_VALUES)
    source_uris: list[str] = Field(default_factory=list, max_length=MAX_FILTER_VALUES)
    tags: list[str] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description="Documents carrying at least one of these tags.",
    )
    date_from_unix: int | None = Field(
        default=None,
        ge=INT64_MIN,
        le=INT64_MAX,
        description="Documents dated at or after this Unix time (seconds); documents "
        "without a date are excluded once either bound is set.",
    )
    date_to_unix: int | None = Field(
        default=None,
        ge=INT64_MIN,
        le=INT64_MAX,
        description="Documents dated at or before this Unix time; not before date_from_unix.",
    )


TierName = Literal["TIER_UNSPECIFIED", "TIER_SIMPLE", "TIER_COMPLEX"]
RetrievalModeName = Literal[
    "RETRIEVAL_MODE_UNSPECIFIED",
    "RETRIEVAL_MODE_DENSE",
    "RETRIEVAL_MODE_KEYWORD",
    "RETRIEVAL_MODE_HYBRID",
]


class AskBody(_RequestModel):
    """A question for QueryService.Ask / AskStream."""

    question: str = Field(description="The question (length limits are the query service's).")
    top_k: int = Field(
        default=0, ge=0, le=UINT32_MAX, description="Chunks to retrieve; 0 = server default."
    )
    filter: MetadataFilter | None = None
    debug: bool = Field(default=False, description="Include retrieved chunks and selection.")
    tier: TierName = Field(
        default="TIER_UNSPECIFIED",
        description="Force the model tier; TIER_UNSPECIFIED lets the router decide.",
    )
    routing_key: str = Field(
        default="",
        description="Key for sticky A/B assignment (a user or session id); empty: the question.",
    )
    retrieval_mode: RetrievalModeName = Field(
        default="RETRIEVAL_MODE_UNSPECIFIED",
        description="Dense, keyword (BM25) or hybrid ranking; unspecified: the server default.",
    )
    mmr_lambda: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Maximal marginal relevance re-ranking (lower: more diverse); 0 = off.",
    )
    bypass_cache: bool = Field(
        default=False,
        description="Generate a fresh answer instead of serving a cached one (it is still "
        "stored for later questions).",
    )

    def request_fields(self, caller: common_pb2.Caller) -> dict[str, Any]:
        """Keyword arguments for AskRequest / AskStreamRequest, acting for `caller`."""
        return {
            "question": self.question,
            "top_k": self.top_k,
            "filter": _filter_of(self),
            "debug": self.debug,
            "tier": self.tier,
            "routing_key": self.routing_key,
            "retrieval_mode": self.retrieval_mode,
            "mmr_lambda": self.mmr_lambda,
            "caller": caller,
            "bypass_cache": self.bypass_cache,
        }


class Chunk(_Model):
    chunk_id: str
    document_id: str
    ordinal: int
    text: str
    title: str
    section: str
    page: int = Field(description="1-based page for paginated formats; 0 when not paginated.")
    char_start: int
    char_end: int
    source_uri: str
    media_type: str
    token_count: int
    tenant: str
    access_labels: list[str] = Field(description="Who may see it; empty: the whole tenant.")
    tags: list[str]
    document_date_unix: int = Field(description="Date of the document; 0 when unknown.")


class ScoredChunk(_Model):
    chunk: Chunk | None = None
    score: float


class SelectedSentence(_Model):
    source_number: int
    text: str
    score: float


class StageTiming(_Model):
    stage: str
    seconds: float


class TokenUsage(_Model):
    input_tokens: int
    output_tokens: int


class Citation(_Model):
    number: int = Field(description="The [n] marker used in the answer text.")
    document_id: str
    title: str
    source_uri: str
    chunk_id: str
    score: float
    page: int
    section: str


class RouterFeature(_Model):
    name: str
    value: float
    contribution: float = Field(description="Log-odds added to the router score.")


class BackendAttempt(_Model):
    backend: str
    model: str
    error_code: str = Field(description="gRPC status code name of the failure.")
    message: str
    seconds: float


class Route(_Model):
    """How generation routed the question and which backends it tried."""

    tier: TierName
    score: float
    threshold: float
    reason: str
    features: list[RouterFeature]
    backend: str
    model: str
    arm: str = Field(description="A/B arm; empty when the tier has none.")
    fallbacks: list[BackendAttempt]
    overridden: bool
    escalation: str


class Grounding(_Model):
    """Support of the answer's sentences by the sources they cite."""

    score: float
    unsupported_sentences: list[str]
    checker: str
    checked: int


class AskDebug(_Model):
    retrieved: list[ScoredChunk]
    prompt: str
    selection: list[SelectedSentence]
    invalid_citations_removed: int


class CacheHit(_Model):
    """Set when the answer came from the answer cache; its citations were checked
    to point at unchanged documents."""

    kind: Literal["KIND_UNSPECIFIED", "KIND_EXACT", "KIND_SEMANTIC"] = Field(
        description="KIND_EXACT: the same question and settings; KIND_SEMANTIC: a paraphrase."
    )
    age_seconds: float
    similarity: float = Field(description="KIND_SEMANTIC: cosine to the cached question.")
    cached_question: str


class AskResponse(_Model):
    """A grounded answer with its citations."""

    answer: str
    citations: list[Citation]
    declined: bool = Field(description="True when the sources do not answer the question.")
    backend: str
    model: str
    usage: TokenUsage | None = None
    timings: list[StageTiming]
    debug: AskDebug | None = Field(default=None, description="Set only when debug was requested.")
    request_id: str
    route: Route | None = None
    cost_usd: float = Field(description="Price of the answer's tokens in US dollars.")
    grounding: Grounding | None = None
    cache: CacheHit | None = Field(
        default=None, description="Set only when the answer was served from the cache."
    )


class DocumentInfo(_Model):
    """Summary of one indexed document."""

    document_id: str
    title: str
    source_uri: str
    media_type: str
    content_sha256: str
    chunk_count: int
    size_bytes: int
    indexed_at_unix: int
    tenant: str = Field(description="Owner; document ids are unique within a tenant.")
    access_labels: list[str] = Field(description="Who may see it; empty: the whole tenant.")
    tags: list[str]
    document_date_unix: int = Field(description="Date of the document; 0 when unknown.")
    source_version: str = Field(
        description="The source's version of the indexed bytes (a Cloud Storage object's "
        "generation); empty for uploads."
    )


class IngestResult(_Model):
    """Outcome of ingesting one document."""

    status: Literal[
        "STATUS_UNSPECIFIED",
        "STATUS_CREATED",
        "STATUS_UPDATED",
        "STATUS_UNCHANGED",
        "STATUS_FAILED",
    ]
    document: DocumentInfo | None = None
    error_code: str
    message: str
    source_uri: str


class DocumentList(_Model):
    documents: list[DocumentInfo]
    next_page_token: str = Field(
        description="Pass as page_token for the next page; empty on the last."
    )


class DeleteResult(_Model):
    document_id: str
    chunks_deleted: int


class ErrorDetail(_Model):
    code: str = Field(description="gRPC status code name, e.g. INVALID_ARGUMENT.")
    message: str


class ErrorResponse(_Model):
    error: ErrorDetail


class Liveness(_Model):
    status: Literal["ok"]


class Readiness(_Model):
    status: Literal["ready", "not_ready"]
    services: dict[str, str] = Field(description="gRPC health of each service the gateway calls.")
    not_serving: list[str]


ModelT = TypeVar("ModelT", bound=BaseModel)

PROTO_MODELS: dict[type[BaseModel], type[Message]] = {
    MetadataFilter: common_pb2.MetadataFilter,
    AskBody: query_pb2.AskRequest,
    Chunk: common_pb2.Chunk,
    ScoredChunk: common_pb2.ScoredChunk,
    SelectedSentence: common_pb2.SelectedSentence,
    StageTiming: common_pb2.StageTiming,
    TokenUsage: common_pb2.TokenUsage,
    Citation: query_pb2.Citation,
    RouterFeature: common_pb2.RouterFeature,
    BackendAttempt: common_pb2.BackendAttempt,
    Route: common_pb2.Route,
    Grounding: common_pb2.Grounding,
    AskDebug: query_pb2.AskDebug,
    AskResponse: query_pb2.AskResponse,
    CacheHit: query_pb2.CacheHit,
    DocumentInfo: common_pb2.DocumentInfo,
    IngestResult: ingestion_pb2.IngestResult,
    DocumentList: retrieval_pb2.ListDocumentsResponse,
}
"""Each HTTP model and the message it mirrors field for field (except IDENTITY_FIELDS)."""

IDENTITY_FIELDS: dict[type[BaseModel], frozenset[str]] = {AskBody: frozenset({"caller"})}
"""Message fields an HTTP model leaves out because the gateway fills them from the
API key: a client can never choose whom a request acts for."""


def from_proto(message: Message, model: type[ModelT]) -> ModelT:
    """`message` as `model`, as the proto3 JSON mapping has it (`protojson`)."""
    return model.model_validate(to_plain(message))


def _filter_of(body: AskBody) -> common_pb2.MetadataFilter | None:
    if body.filter is None:
        return None
    # Unset date bounds stay unset (proto3 optional), not 0.
    return common_pb2.MetadataFilter(**body.filter.model_dump(exclude_none=True))


class ImportBody(_RequestModel):
    """A durable import into the key's tenant: the sources its configuration
    allows (RAG_INGESTION_SOURCES), e.g. gs://acme-docs/policies/."""

    uris: list[str] = Field(min_length=1, max_length=1000, description="gs:// URIs to import.")
    access_labels: list[str] = Field(
        default_factory=list, description="Given to every document; none: the whole tenant."
    )
    tags: list[str] = Field(default_factory=list, description="Given to every document.")


class ImportJob(_Model):
    """A durable import and its progress (IngestionService's Job)."""

    id: str
    tenant: str
    uris: list[str]
    state: Literal[
        "STATE_UNSPECIFIED",
        "STATE_PENDING",
        "STATE_RUNNING",
        "STATE_SUCCEEDED",
        "STATE_FAILED",
        "STATE_CANCELLED",
    ]
    total: int = Field(description="Documents found.")
    created: int
    updated: int
    unchanged: int
    failed: int
    failures: list[IngestResult] = Field(description="The first failed documents (100 at most).")
    error: str = Field(description="Why the job failed, for STATE_FAILED.")
    created_at_unix: int
    started_at_unix: int
    finished_at_unix: int
    attempts: int = Field(description="Runs started; more than 1: resumed after a restart.")


class JobList(_Model):
    jobs: list[ImportJob]
