"""How the gateway answers failures: gRPC status codes mapped to HTTP, one JSON error shape.

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

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Self

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc import aio
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.schemas import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

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


def describe_problems(errors: Sequence[Any]) -> str:
    """Pydantic errors as `field: message; ...` (no input values: they may be secrets)."""
    parts = []
    for error in errors:
        field = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{field}: {error.get('msg', 'invalid')}" if field else error.get("msg", ""))
    return "; ".join(parts) or "invalid"


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


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure `app` raises with the JSON error shape."""

    async def on_gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc.status, exc.code, exc.message)

    async def on_rpc_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, aio.AioRpcError)
        err = GatewayError.from_rpc(exc)
        return error_response(err.status, err.code, err.message)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "INVALID_ARGUMENT", describe_problems(exc.errors()))

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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid argument."},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
    422: {"model": ErrorResponse, "description": "Request body or parameters malformed."},
    500: {"model": ErrorResponse, "description": "Internal error."},
    503: {"model": ErrorResponse, "description": "A service is unavailable."},
    504: {"model": ErrorResponse, "description": "A deadline was exceeded."},
}
"""The error responses every /v1 route documents."""


def error_responses(*extra: int) -> dict[int | str, dict[str, Any]]:
    """ERROR_RESPONSES plus the `extra` statuses a route documents (403, 404, 409, 413, 429)."""
    descriptions = {
        403: "The key may not write this document (it could not read it).",
        404: "Unknown document.",
        409: "The platform's state does not allow the call.",
        413: "File over the size limit.",
        429: "A limit was exceeded.",
    }
    out = dict(ERROR_RESPONSES)
    for status in extra:
        out[status] = {"model": ErrorResponse, "description": descriptions[status]}
    return out
