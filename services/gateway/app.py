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
"""

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import quote

import grpc
from fastapi import APIRouter, FastAPI, File, Form, Query, Request, Response, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    query_pb2,
    retrieval_pb2,
)
from services.runtime.clients import PlatformClients
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


class GatewaySettings(PlatformSettings):
    """Gateway settings (env prefix RAG_): the platform's, plus the API keys."""

    gateway_api_keys: str = Field(
        default="",
        description=(
            "Comma-separated API keys accepted as `Authorization: Bearer <key>` or "
            "`X-API-Key: <key>`; empty disables authentication (embedded default)."
        ),
    )

    def api_keys(self) -> list[str]:
        """The configured keys, blanks dropped."""
        return [key.strip() for key in self.gateway_api_keys.split(",") if key.strip()]


# --------------------------------------------------------------------------- models
# Explicit models (rather than raw MessageToDict output) so that /openapi.json
# describes every request and response body. Field names are the proto field
# names; tests check that they stay in step with the contract.


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetadataFilter(_Model):
    """Restricts a search; empty lists mean no restriction on that field. Fields
    combine with AND, values inside one field with OR."""

    document_ids: list[str] = Field(default_factory=list)
    media_types: list[str] = Field(default_factory=list)
    source_uris: list[str] = Field(default_factory=list)


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

    def request_fields(self) -> dict[str, Any]:
        """Keyword arguments for AskRequest / AskStreamRequest."""
        return {
            "question": self.question,
            "top_k": self.top_k,
            "filter": _filter_of(self),
            "debug": self.debug,
            "tier": self.tier,
            "routing_key": self.routing_key,
            "retrieval_mode": self.retrieval_mode,
            "mmr_lambda": self.mmr_lambda,
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
    DocumentInfo: common_pb2.DocumentInfo,
    IngestResult: ingestion_pb2.IngestResult,
    DocumentList: retrieval_pb2.ListDocumentsResponse,
}
"""Each HTTP model and the message it mirrors field for field."""


def from_proto(message: Message, model: type[ModelT]) -> ModelT:
    """`message` as `model`, through the proto3 JSON mapping (64-bit ints arrive as
    strings there and are parsed back to numbers by the model)."""
    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return model.model_validate(data)


def _filter_of(body: AskBody) -> common_pb2.MetadataFilter | None:
    if body.filter is None:
        return None
    return common_pb2.MetadataFilter(**body.filter.model_dump())


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


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{field}: {error.get('msg', 'invalid')}" if field else error.get("msg", ""))
    return "; ".join(parts) or "invalid request"


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
        return error_response(422, "INVALID_ARGUMENT", _validation_message(exc))

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


def _presented_keys(headers: Headers) -> list[str]:
    keys = []
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        keys.append(credentials.strip())
    if api_key := headers.get("x-api-key", "").strip():
        keys.append(api_key)
    return keys


def key_matches(presented: str, configured: Sequence[str]) -> bool:
    """Whether `presented` is one of `configured`, in time independent of where they differ."""
    matched = False
    for key in configured:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    return matched


class ApiKeyMiddleware:
    """Rejects /v1 requests without a valid API key before their body is read.

    A middleware rather than a FastAPI dependency because dependencies run after
    the body has been parsed: an unauthenticated client could otherwise make the
    gateway receive and spool a whole multipart upload before being refused.
    """

    def __init__(self, app: ASGIApp, keys: Sequence[str], prefix: str = "/v1/") -> None:
        self.app = app
        self.keys = list(keys)
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope["path"].startswith(self.prefix):
            presented = _presented_keys(Headers(scope=scope))
            if not any(key_matches(key, self.keys) for key in presented):
                message = "missing API key" if not presented else "invalid API key"
                response = error_response(
                    401, "UNAUTHENTICATED", message, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Declared on the /v1 routes so that /openapi.json and /docs describe both ways to
# send a key; enforcement is ApiKeyMiddleware's (auto_error=False: these never refuse).
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="`X-API-Key: <API key>`"
)


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
    async def stream_answer(body: AskBody) -> StreamingResponse:
        request = query_pb2.AskStreamRequest(**body.request_fields())
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
        stream: Annotated[
            bool, Query(description="Answer as Server-Sent Events (same as /v1/ask/stream).")
        ] = False,
    ) -> AskResponse | StreamingResponse:
        """QueryService.Ask: embed, retrieve, generate and verify citations."""
        if stream:
            return await stream_answer(body)
        request = query_pb2.AskRequest(**body.request_fields())
        reply: query_pb2.AskResponse = await clients.query.Ask(request)
        return from_proto(reply, AskResponse)

    @router.post(
        "/ask/stream",
        response_class=StreamingResponse,
        summary="Answer a question as Server-Sent Events",
        responses={**_errors(429), **_SSE_RESPONSE},
    )
    async def ask_stream(body: AskBody) -> StreamingResponse:
        """QueryService.AskStream: answer deltas as they are written, then the answer."""
        return await stream_answer(body)


async def _upload_messages(
    file: UploadFile, header: ingestion_pb2.DocumentHeader
) -> AsyncIterator[ingestion_pb2.UploadDocumentRequest]:
    yield ingestion_pb2.UploadDocumentRequest(header=header)
    while chunk := await file.read(UPLOAD_CHUNK_BYTES):
        yield ingestion_pb2.UploadDocumentRequest(data=chunk)


def _document_routes(router: APIRouter, clients: PlatformClients) -> None:
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
        file: Annotated[UploadFile, File(description="The document's bytes.")],
        document_id: Annotated[
            str, Form(description="Id to store it under; derived from the file name if empty.")
        ] = "",
        title: Annotated[str, Form(description="Title; taken from the document if empty.")] = "",
        media_type: Annotated[
            str,
            Form(description="Declared media type; must agree with the content when set."),
        ] = "",
    ) -> IngestResult:
        """IngestionService.UploadDocument: 201 when created, 200 when updated or unchanged.

        The part's own Content-Type is not forwarded: HTTP clients fill it with
        guesses (often application/octet-stream) that the service would reject as
        a mismatch; only an explicit `media_type` field is a declaration.
        """
        header = ingestion_pb2.DocumentHeader(
            filename=file.filename or "",
            media_type=media_type,
            document_id=document_id,
            title=title,
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
        page_size: Annotated[
            int, Query(ge=0, le=UINT32_MAX, description="Documents per page; 0 = server default.")
        ] = 0,
        page_token: Annotated[str, Query(description="next_page_token of the previous page.")] = "",
    ) -> DocumentList:
        """RetrievalService.ListDocuments, ordered by document id."""
        request = retrieval_pb2.ListDocumentsRequest(page_size=page_size, page_token=page_token)
        reply: retrieval_pb2.ListDocumentsResponse = await clients.retrieval.ListDocuments(request)
        return from_proto(reply, DocumentList)

    @router.get(
        "/documents/{document_id:path}",
        response_model=DocumentInfo,
        summary="Get a document",
        responses=_errors(404),
    )
    async def get_document(document_id: str) -> DocumentInfo:
        """RetrievalService.GetDocument."""
        request = retrieval_pb2.GetDocumentRequest(document_id=document_id)
        reply: retrieval_pb2.GetDocumentResponse = await clients.retrieval.GetDocument(request)
        return from_proto(reply.document, DocumentInfo)

    @router.delete(
        "/documents/{document_id:path}",
        response_model=DeleteResult,
        summary="Delete a document",
        responses=_errors(404),
    )
    async def delete_document(document_id: str) -> DeleteResult:
        """IngestionService.DeleteDocument: removes the document and all its chunks."""
        request = ingestion_pb2.DeleteDocumentRequest(document_id=document_id)
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


def create_app(settings: PlatformSettings, clients: PlatformClients | None = None) -> FastAPI:
    """The gateway application.

    `clients` defaults to new PlatformClients, closed when the app shuts down;
    clients passed in stay the caller's to close. API keys come from
    `settings.gateway_api_keys` when `settings` is a GatewaySettings; with none,
    authentication is off and a warning says so.
    """
    owned = clients is None
    platform = clients if clients is not None else PlatformClients(settings)
    keys = settings.api_keys() if isinstance(settings, GatewaySettings) else []
    if not keys:
        log.warning(
            "gateway authentication disabled: RAG_GATEWAY_API_KEYS is empty, "
            "every client may call /v1"
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
            "`X-API-Key: <key>` when the gateway has keys configured. Errors are "
            '`{"error": {"code": "<gRPC code>", "message": "..."}}`.'
        ),
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    router = APIRouter(
        prefix="/v1",
        dependencies=[Security(_bearer), Security(_api_key_header)],
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
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    # Outermost, so that refused (401) requests are counted and traced too.
    app.add_middleware(
        HttpTelemetryMiddleware, openapi=app.openapi, metrics=settings.metrics_enabled
    )
    return app


__all__ = [
    "GRPC_TO_HTTP",
    "PROTO_MODELS",
    "ApiKeyMiddleware",
    "AskBody",
    "AskResponse",
    "DocumentInfo",
    "DocumentList",
    "ErrorResponse",
    "GatewayError",
    "GatewaySettings",
    "IngestResult",
    "create_app",
    "from_proto",
    "http_status_for",
]
