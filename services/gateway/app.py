"""REST gateway: the platform's HTTP/JSON face for external applications.

Every endpoint converts an HTTP request into one call of the gRPC contract
(``ragplatform.v1``) and the reply back into JSON; no domain logic lives here, so
the services stay the single source of behaviour and the gateway can be scaled
or replaced without touching them. Reads of documents go to RetrievalService,
writes to IngestionService, questions to QueryService.

HTTP status mapping of gRPC status codes (``GRPC_TO_HTTP``) follows Google's
API mapping (AIP-193), with two decisions of ours:

* RESOURCE_EXHAUSTED is 413 Content Too Large on ``POST /v1/documents`` (the
  ingestion service raises it for a file over the size limit) and 429 elsewhere
  (a request holding more than a limit allows, a quota).
* FAILED_PRECONDITION is 409 Conflict rather than 400: in this platform it means
  the *system's* state forbids the call (e.g. an index built for another vector
  dimension), so repeating the same request cannot help until an operator acts,
  which is what 409 tells a client and 400 would hide among input errors.

Errors always come out as ``{"error": {"code": "<gRPC code name>", "message": ...}}``,
FastAPI's own validation errors (422) and authentication failures (401) included,
and never carry a traceback.

Tenancy: every /v1 call acts for the caller (tenant and access labels) that its
API key maps to in ``RAG_GATEWAY_API_KEYS``; without keys (the embedded default,
authentication off) every call acts for ``RAG_GATEWAY_DEFAULT_TENANT``. No
request body, form field or header can name a tenant, so a client never reaches
another tenant's documents. See docs/tenancy.md.
"""

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import quote

import grpc
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    File,
    Form,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import SettingsConfigDict
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    query_pb2,
    retrieval_pb2,
)
from services.common.errors import InvalidInputError
from services.common.tenancy import (
    DEFAULT_TENANT,
    Caller,
    validate_caller,
    validate_labels,
    validate_tenant,
)
from services.gateway.protojson import to_plain
from services.runtime.clients import PlatformClients
from services.runtime.convert import to_proto
from services.runtime.observability import HttpTelemetryMiddleware
from services.runtime.settings import PlatformSettings

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
UPLOAD_CHUNK_BYTES = 256 * 1024
"""Bytes per UploadDocument data message: small enough to keep the gateway's
memory flat for any file size, large enough that per-message overhead is noise."""
READINESS_TIMEOUT_SECONDS = 2.0
"""Deadline of each health check behind /readyz: a probe must answer quickly."""
READINESS_SERVICES = ("query", "ingestion", "retrieval")
"""The services the gateway calls directly; it is ready only when they serve."""
UINT32_MAX = 2**32 - 1

GRPC_TO_HTTP: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 500,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
"""gRPC status code name → HTTP status; codes not listed map to 500."""

_HTTP_TO_CODE: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""For errors raised by the HTTP layer itself (unknown route, wrong method), so that
clients switch on one vocabulary of codes whichever layer answered."""


def http_status_for(code_name: str, *, upload: bool = False) -> int:
    """The HTTP status for a gRPC status code name; `upload` selects 413 for
    RESOURCE_EXHAUSTED (see the module docstring)."""
    if upload and code_name == "RESOURCE_EXHAUSTED":
        return 413
    return GRPC_TO_HTTP.get(code_name, 500)


API_KEYS_FORMAT = '{"<key>": {"tenant": "<tenant>", "access_labels": ["<label>", ...]}}'
"""The shape of RAG_GATEWAY_API_KEYS (access_labels may be left out)."""


class _Grant(BaseModel):
    """What one API key acts as: one entry of RAG_GATEWAY_API_KEYS."""

    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)

    tenant: str
    access_labels: list[str] = Field(default_factory=list)


def _problems(errors: Sequence[Any]) -> str:
    """Pydantic errors as `field: message; ...` (no input values: they may be secrets)."""
    parts = []
    for error in errors:
        field = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{field}: {error.get('msg', 'invalid')}" if field else error.get("msg", ""))
    return "; ".join(parts) or "invalid"


def parse_api_keys(text: str) -> dict[str, Caller]:
    """The caller each API key acts as, from RAG_GATEWAY_API_KEYS; {} when it is blank.

    Raises ValueError naming the problem. Entries are named by position, never
    by key: the message ends up in startup logs, and the keys are secrets.
    """
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"RAG_GATEWAY_API_KEYS is not JSON ({error.msg} at character {error.pos}); "
            f"expected {API_KEYS_FORMAT}"
        ) from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"RAG_GATEWAY_API_KEYS must be a non-empty JSON object {API_KEYS_FORMAT}")
    grants: dict[str, Caller] = {}
    for position, (key, value) in enumerate(data.items(), start=1):
        where = f"RAG_GATEWAY_API_KEYS entry {position}"
        if not key or key != key.strip():
            raise ValueError(f"{where}: the key is empty or starts or ends with a space")
        try:
            grant = _Grant.model_validate(value)
            labels = validate_labels(grant.access_labels, "access label")
            grants[key] = validate_caller(Caller(grant.tenant, labels))
        except ValidationError as error:
            raise ValueError(f"{where}: {_problems(error.errors())}") from None
        except InvalidInputError as error:
            raise ValueError(f"{where}: {error}") from None
    return grants


class GatewaySettings(PlatformSettings):
    """Gateway settings (env prefix RAG_): the platform's, plus the API keys and
    the tenant of unauthenticated requests."""

    # The API keys are secrets: a validation error must not echo the value.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    gateway_api_keys: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "API keys and whom each acts for, JSON: "
            '`{"<key>": {"tenant": "acme", "access_labels": ["hr"]}}` (access_labels optional). '
            "A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`; every /v1 "
            "call acts for its key's tenant and labels. Empty disables authentication "
            "(embedded default); a malformed value stops the gateway at startup."
        ),
    )
    gateway_access_log: Literal["errors", "all", "off"] = Field(
        default="errors",
        description=(
            "Which requests get a log line: errors (status 400 and up; every request is "
            "counted in rag_http_requests_total and traced, and the load balancer logs "
            "them all), all (uvicorn's access log, about 0.3 ms of CPU a request here), "
            "or off."
        ),
    )
    gateway_default_tenant: str = Field(
        default=DEFAULT_TENANT,
        description=(
            "Tenant every /v1 call acts for while RAG_GATEWAY_API_KEYS is empty "
            "(authentication off), with no access labels."
        ),
    )

    @field_validator("gateway_api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr) -> SecretStr:
        parse_api_keys(value.get_secret_value())  # fail at startup, not at the first call
        return value

    @field_validator("gateway_default_tenant")
    @classmethod
    def _check_default_tenant(cls, value: str) -> str:
        try:
            return validate_tenant(value)
        except InvalidInputError as error:
            raise ValueError(str(error)) from None

    def api_keys(self) -> dict[str, Caller]:
        """The caller each configured key acts as."""
        return parse_api_keys(self.gateway_api_keys.get_secret_value())

    def default_caller(self) -> Caller:
        """Whom a call acts for when authentication is off."""
        return Caller(self.gateway_default_tenant)


# --------------------------------------------------------------------------- models
# Explicit models (rather than raw MessageToDict output) so that /openapi.json
# describes every request and response body. Field names are the proto field
# names; tests check that they stay in step with the contract.


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetadataFilter(_Model):
    """Restricts a search; empty lists mean no restriction on that field. Fields
    combine with AND, values inside one field with OR. It narrows the caller's
    own documents: the tenant comes from the API key, never from the filter."""

    document_ids: list[str] = Field(default_factory=list)
    media_types: list[str] = Field(default_factory=list)
    source_uris: list[str] = Field(default_factory=list)
    tags: list[str] = Field(
        default_factory=list, description="Documents carrying at least one of these tags."
    )
    date_from_unix: int | None = Field(
        default=None,
        description="Documents dated at or after this Unix time (seconds); documents "
        "without a date are excluded once either bound is set.",
    )
    date_to_unix: int | None = Field(
        default=None,
        description="Documents dated at or before this Unix time; not before date_from_unix.",
    )


TierName = Literal["TIER_UNSPECIFIED", "TIER_SIMPLE", "TIER_COMPLEX"]
RetrievalModeName = Literal[
    "RETRIEVAL_MODE_UNSPECIFIED",
    "RETRIEVAL_MODE_DENSE",
    "RETRIEVAL_MODE_KEYWORD",
    "RETRIEVAL_MODE_HYBRID",
]


class AskBody(_Model):
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


# --------------------------------------------------------------------------- errors


class GatewayError(Exception):
    """An error to answer with the JSON error shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, err: aio.AioRpcError, *, upload: bool = False) -> Self:
        """The gateway's answer for a failed gRPC call."""
        code = err.code().name
        return cls(http_status_for(code, upload=upload), code, err.details() or code)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error shape every failure uses."""
    body = ErrorResponse(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc.status, exc.code, exc.message)

    async def on_rpc_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, aio.AioRpcError)
        err = GatewayError.from_rpc(exc)
        return error_response(err.status, err.code, err.message)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "INVALID_ARGUMENT", _problems(exc.errors()))

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        code = _HTTP_TO_CODE.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        return error_response(status, code, str(exc.detail), headers=exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        # Logged with its traceback here; the client only learns that it failed.
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "INTERNAL", "internal error")

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(aio.AioRpcError, on_rpc_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid argument."},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
    422: {"model": ErrorResponse, "description": "Request body or parameters malformed."},
    500: {"model": ErrorResponse, "description": "Internal error."},
    503: {"model": ErrorResponse, "description": "A service is unavailable."},
    504: {"model": ErrorResponse, "description": "A deadline was exceeded."},
}


def _errors(*extra: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        404: "Unknown document.",
        409: "The platform's state does not allow the call.",
        413: "File over the size limit.",
        429: "A limit was exceeded.",
    }
    out = dict(_ERROR_RESPONSES)
    for status in extra:
        out[status] = {"model": ErrorResponse, "description": descriptions[status]}
    return out


# --------------------------------------------------------------------------- auth


def _presented_keys(headers: Headers) -> set[str]:
    keys = set()
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        keys.add(credentials.strip())
    if api_key := headers.get("x-api-key", "").strip():
        keys.add(api_key)
    return keys


def caller_of_key(presented: str, grants: Mapping[str, Caller]) -> Caller | None:
    """The caller `presented` acts as, or None for an unknown key; every configured
    key is compared, in time independent of where they differ."""
    found = None
    for key, caller in grants.items():
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = caller
    return found


class ApiKeyMiddleware:
    """Decides whom each /v1 request acts for, before its body is read.

    With keys configured, a request without a valid key is refused (401) and any
    other acts for its key's caller; without keys, every request acts for
    `default`. The caller is left in the request state (`caller_of_request`
    reads it), so routes never look at client-supplied identity.

    A middleware rather than a FastAPI dependency because dependencies run after
    the body has been parsed: an unauthenticated client could otherwise make the
    gateway receive and spool a whole multipart upload before being refused.
    """

    def __init__(
        self, app: ASGIApp, grants: Mapping[str, Caller], default: Caller, prefix: str = "/v1/"
    ) -> None:
        self.app = app
        self.grants = dict(grants)
        self.default = default
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            caller, refusal = self._identify(Headers(scope=scope))
            if caller is None:
                response = error_response(
                    401, "UNAUTHENTICATED", refusal, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})[_CALLER_STATE] = caller
        await self.app(scope, receive, send)

    def _identify(self, headers: Headers) -> tuple[Caller | None, str]:
        """(caller, "") or (None, why the request is refused)."""
        if not self.grants:
            return self.default, ""
        presented = _presented_keys(headers)
        if not presented:
            return None, "missing API key"
        if len(presented) > 1:
            return None, "Authorization and X-API-Key carry different keys; send one"
        caller = caller_of_key(presented.pop(), self.grants)
        return (caller, "") if caller is not None else (None, "invalid API key")


_CALLER_STATE = "ragplatform_caller"


async def caller_of_request(request: Request) -> common_pb2.Caller:
    """Whom the request acts for, as ApiKeyMiddleware decided (a route dependency).

    Async although it awaits nothing: FastAPI runs a plain `def` dependency in a
    worker thread, and that hop alone cost about a millisecond per request.
    """
    caller: Caller | None = getattr(request.state, _CALLER_STATE, None)
    if caller is None:  # a /v1 route outside the middleware: a wiring bug, never a default
        raise GatewayError(500, "INTERNAL", "the request has no caller")
    return to_proto(caller, common_pb2.Caller)


CallerDep = Annotated[common_pb2.Caller, Depends(caller_of_request)]
"""The caller of a /v1 route: from the API key, never from the request."""


SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "HTTPBearer": {
        "type": "http",
        "description": "`Authorization: Bearer <API key>`",
        "scheme": "bearer",
    },
    "APIKeyHeader": {
        "type": "apiKey",
        "description": "`X-API-Key: <API key>`",
        "in": "header",
        "name": "X-API-Key",
    },
}
"""Both ways to send a key, as /openapi.json and /docs describe them.

Declared in the document only: enforcement is ApiKeyMiddleware's, and FastAPI
security dependencies that never refuse cost about 0.1 ms of every request."""


def _with_security(app: FastAPI, prefix: str = "/v1/") -> Callable[[], dict[str, Any]]:
    """`app.openapi`, with SECURITY_SCHEMES on every operation under `prefix`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for path, operations in spec["paths"].items():
                if path.startswith(prefix):
                    for operation in operations.values():
                        operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            app.openapi_schema = spec
        return app.openapi_schema

    return openapi


# --------------------------------------------------------------------------- routes


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _sse_events(
    first: query_pb2.AskStreamResponse | None, rest: AsyncIterator[Any], call: Any
) -> AsyncIterator[bytes]:
    """AskStream events as Server-Sent Events; a failure after the response has
    started (status already sent) arrives as a final `event: error`."""
    try:
        if first is not None:
            yield _sse_event_of(first)
            async for message in rest:
                yield _sse_event_of(message)
    except aio.AioRpcError as err:
        failure = GatewayError.from_rpc(err)
        yield _sse("error", {"error": {"code": failure.code, "message": failure.message}})
    finally:
        call.cancel()  # the client went away or the stream ended: free the server's work


def _sse_event_of(message: query_pb2.AskStreamResponse) -> bytes:
    kind = message.WhichOneof("event")
    if kind == "final":
        return _sse("answer", from_proto(message.final, AskResponse).model_dump(mode="json"))
    if kind == "restart":
        return _sse("restart", {"reason": message.restart.reason})
    return _sse("delta", {"text": message.delta})


_SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'Server-Sent Events: `event: delta` with `{"text": ...}` per piece of '
        "the answer, then `event: answer` with the AskResponse JSON (citations, usage, cost, "
        'route); `event: restart` with `{"reason": ...}` means: drop the text received so '
        "far, a new answer follows (a model failed mid-answer, or the answer was escalated); "
        "a failure after the stream began arrives as `event: error` with the error JSON.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def _query_routes(router: APIRouter, clients: PlatformClients) -> None:
    async def stream_answer(body: AskBody, caller: common_pb2.Caller) -> StreamingResponse:
        request = query_pb2.AskStreamRequest(**body.request_fields(caller))
        call = clients.query.AskStream(request)
        events = call.__aiter__()
        # Wait for the first event so that an error before any output (bad
        # question, service down) still gets its proper HTTP status.
        try:
            first: query_pb2.AskStreamResponse | None = await events.__anext__()
        except StopAsyncIteration:
            first = None
        except aio.AioRpcError as err:
            call.cancel()
            raise GatewayError.from_rpc(err) from None
        return StreamingResponse(
            _sse_events(first, events, call),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post(
        "/ask",
        response_model=AskResponse,
        summary="Answer a question",
        responses={**_errors(429), **_SSE_RESPONSE},
    )
    async def ask(
        body: AskBody,
        caller: CallerDep,
        stream: Annotated[
            bool, Query(description="Answer as Server-Sent Events (same as /v1/ask/stream).")
        ] = False,
    ) -> AskResponse | StreamingResponse:
        """QueryService.Ask: embed, retrieve, generate and verify citations, from the
        documents of the key's tenant that its access labels may see."""
        if stream:
            return await stream_answer(body, caller)
        request = query_pb2.AskRequest(**body.request_fields(caller))
        reply: query_pb2.AskResponse = await clients.query.Ask(request)
        return from_proto(reply, AskResponse)

    @router.post(
        "/ask/stream",
        response_class=StreamingResponse,
        summary="Answer a question as Server-Sent Events",
        responses={**_errors(429), **_SSE_RESPONSE},
    )
    async def ask_stream(body: AskBody, caller: CallerDep) -> StreamingResponse:
        """QueryService.AskStream: answer deltas as they are written, then the answer."""
        return await stream_answer(body, caller)


async def _upload_messages(
    file: UploadFile, header: ingestion_pb2.DocumentHeader
) -> AsyncIterator[ingestion_pb2.UploadDocumentRequest]:
    yield ingestion_pb2.UploadDocumentRequest(header=header)
    while chunk := await file.read(UPLOAD_CHUNK_BYTES):
        yield ingestion_pb2.UploadDocumentRequest(data=chunk)


def _document_routes(router: APIRouter, clients: PlatformClients) -> None:
    async def visible_document(document_id: str, caller: common_pb2.Caller) -> DocumentInfo:
        """The document as the caller may see it (LookupDocuments: the retrieval
        service applies the tenant and the labels); NOT_FOUND otherwise."""
        request = retrieval_pb2.LookupDocumentsRequest(caller=caller, document_ids=[document_id])
        reply: retrieval_pb2.LookupDocumentsResponse = await clients.retrieval.LookupDocuments(
            request
        )
        if not reply.found:
            message = f"document {document_id!r} not found in tenant {caller.tenant!r}"
            raise GatewayError(404, "NOT_FOUND", message)
        return from_proto(reply.found[0], DocumentInfo)

    @router.post(
        "/documents",
        response_model=IngestResult,
        status_code=201,
        summary="Upload a document",
        responses={
            200: {"model": IngestResult, "description": "Updated or unchanged."},
            **_errors(409, 413),
        },
    )
    async def upload_document(
        response: Response,
        caller: CallerDep,
        file: Annotated[UploadFile, File(description="The document's bytes.")],
        document_id: Annotated[
            str, Form(description="Id to store it under; derived from the file name if empty.")
        ] = "",
        title: Annotated[str, Form(description="Title; taken from the document if empty.")] = "",
        media_type: Annotated[
            str,
            Form(description="Declared media type; must agree with the content when set."),
        ] = "",
        access_labels: Annotated[
            list[str] | None,
            Form(
                description="Repeatable: only keys holding one of these labels see the "
                "document; none: every key of the tenant."
            ),
        ] = None,
        tags: Annotated[
            list[str] | None, Form(description="Repeatable: labels for filter.tags.")
        ] = None,
        document_date_unix: Annotated[
            int,
            Form(
                ge=0,
                description="Date of the document (Unix seconds) for filter date "
                "ranges; 0: the upload's time.",
            ),
        ] = 0,
    ) -> IngestResult:
        """IngestionService.UploadDocument into the key's tenant: 201 when created,
        200 when updated or unchanged.

        The part's own Content-Type is not forwarded: HTTP clients fill it with
        guesses (often application/octet-stream) that the service would reject as
        a mismatch; only an explicit `media_type` field is a declaration.
        """
        header = ingestion_pb2.DocumentHeader(
            filename=file.filename or "",
            media_type=media_type,
            document_id=document_id,
            title=title,
            tenant=caller.tenant,
            access_labels=access_labels or [],
            tags=tags or [],
            document_date_unix=document_date_unix,
        )
        try:
            reply: ingestion_pb2.UploadDocumentResponse = await clients.ingestion.UploadDocument(
                _upload_messages(file, header)
            )
        except aio.AioRpcError as err:
            raise GatewayError.from_rpc(err, upload=True) from None
        finally:
            await file.close()
        result = reply.result
        if result.status == ingestion_pb2.IngestResult.STATUS_FAILED:
            code = result.error_code or "INTERNAL"
            raise GatewayError(http_status_for(code, upload=True), code, result.message or code)
        if result.status != ingestion_pb2.IngestResult.STATUS_CREATED:
            response.status_code = 200
        else:
            response.headers["Location"] = f"/v1/documents/{quote(result.document.document_id)}"
        return from_proto(result, IngestResult)

    @router.get("/documents", response_model=DocumentList, summary="List documents")
    async def list_documents(
        caller: CallerDep,
        page_size: Annotated[
            int, Query(ge=0, le=UINT32_MAX, description="Documents per page; 0 = server default.")
        ] = 0,
        page_token: Annotated[str, Query(description="next_page_token of the previous page.")] = "",
    ) -> DocumentList:
        """RetrievalService.ListDocuments for the key (its tenant; documents its
        access labels hide are left out by the retrieval service), ordered by
        document id; page until next_page_token is empty."""
        request = retrieval_pb2.ListDocumentsRequest(
            page_size=page_size, page_token=page_token, caller=caller
        )
        reply: retrieval_pb2.ListDocumentsResponse = await clients.retrieval.ListDocuments(request)
        return from_proto(reply, DocumentList)

    @router.get(
        "/documents/{document_id:path}",
        response_model=DocumentInfo,
        summary="Get a document",
        responses=_errors(404),
    )
    async def get_document(document_id: str, caller: CallerDep) -> DocumentInfo:
        """The document's summary (RetrievalService.LookupDocuments): 404 for another
        tenant's, or one the key's labels hide."""
        return await visible_document(document_id, caller)

    @router.delete(
        "/documents/{document_id:path}",
        response_model=DeleteResult,
        summary="Delete a document",
        responses=_errors(404),
    )
    async def delete_document(document_id: str, caller: CallerDep) -> DeleteResult:
        """IngestionService.DeleteDocument in the key's tenant: removes the document
        and all its chunks (404 for another tenant's, or one its labels hide)."""
        await visible_document(document_id, caller)
        request = ingestion_pb2.DeleteDocumentRequest(document_id=document_id, tenant=caller.tenant)
        reply: ingestion_pb2.DeleteDocumentResponse = await clients.ingestion.DeleteDocument(
            request
        )
        return DeleteResult(document_id=document_id, chunks_deleted=reply.chunks_deleted)


async def _health_of(clients: PlatformClients, service: str) -> str:
    stub = health_pb2_grpc.HealthStub(clients.channel(clients.settings.address_of(service)))
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=READINESS_TIMEOUT_SECONDS
        )
    except aio.AioRpcError as err:
        unreachable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return "UNREACHABLE" if err.code() in unreachable else str(err.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _health_routes(app: FastAPI, clients: PlatformClients) -> None:
    @app.get("/healthz", response_model=Liveness, tags=["health"], summary="Liveness")
    async def healthz() -> Liveness:
        """The gateway process is up (nothing else is checked, so that a slow
        dependency never gets the gateway restarted)."""
        return Liveness(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["health"],
        summary="Readiness",
        responses={503: {"model": Readiness, "description": "Some services are not serving."}},
    )
    async def readyz(response: Response) -> Readiness:
        """gRPC health of the services the gateway calls; 503 names those not serving."""
        states = await asyncio.gather(*(_health_of(clients, s) for s in READINESS_SERVICES))
        services = dict(zip(READINESS_SERVICES, states, strict=True))
        not_serving = [name for name, state in services.items() if state != "SERVING"]
        if not_serving:
            response.status_code = 503
        return Readiness(
            status="not_ready" if not_serving else "ready",
            services=services,
            not_serving=not_serving,
        )


# --------------------------------------------------------------------------- app


def create_app(settings: GatewaySettings, clients: PlatformClients | None = None) -> FastAPI:
    """The gateway application.

    `clients` defaults to new PlatformClients, closed when the app shuts down;
    clients passed in stay the caller's to close. API keys and the default tenant
    come from `settings`; with no keys, authentication is off (every call acts
    for the default tenant) and a warning says so.
    """
    owned = clients is None
    platform = clients if clients is not None else PlatformClients(settings)
    grants = settings.api_keys()
    if not grants:
        log.warning(
            "gateway authentication disabled: RAG_GATEWAY_API_KEYS is empty, every client "
            "may call /v1 as tenant %r",
            settings.gateway_default_tenant,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            await platform.close()

    app = FastAPI(
        title="ragplatform gateway",
        version=API_VERSION,
        description=(
            "HTTP/JSON access to the RAG platform: ask grounded questions, upload, list "
            "and delete documents. Each endpoint maps to one call of the `ragplatform.v1` "
            "gRPC contract. Authenticate with `Authorization: Bearer <key>` or "
            "`X-API-Key: <key>` when the gateway has keys configured; every call acts for "
            "the tenant and access labels of its key, which no request field can change. "
            "Errors are "
            '`{"error": {"code": "<gRPC code>", "message": "..."}}`.'
        ),
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    router = APIRouter(
        prefix="/v1",
        responses=_ERROR_RESPONSES,
    )
    query_router = APIRouter(tags=["query"])
    documents_router = APIRouter(tags=["documents"])
    _query_routes(query_router, platform)
    _document_routes(documents_router, platform)
    router.include_router(query_router)
    router.include_router(documents_router)
    app.include_router(router)
    _health_routes(app, platform)
    app.openapi = _with_security(app)  # type: ignore[method-assign]
    app.add_middleware(ApiKeyMiddleware, grants=grants, default=settings.default_caller())
    # Outermost, so that refused (401) requests are counted and traced too.
    app.add_middleware(
        HttpTelemetryMiddleware,
        openapi=app.openapi,
        metrics=settings.metrics_enabled,
        log_failures=settings.gateway_access_log == "errors",
    )
    return app


__all__ = [
    "GRPC_TO_HTTP",
    "IDENTITY_FIELDS",
    "PROTO_MODELS",
    "ApiKeyMiddleware",
    "AskBody",
    "AskResponse",
    "CacheHit",
    "DocumentInfo",
    "DocumentList",
    "ErrorResponse",
    "GatewayError",
    "GatewaySettings",
    "IngestResult",
    "caller_of_key",
    "caller_of_request",
    "create_app",
    "from_proto",
    "http_status_for",
    "parse_api_keys",
]
