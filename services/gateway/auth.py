"""API-key authentication: whom each /v1 request acts for, decided before its body is
read, and the security schemes /openapi.json declares for it.

Tenancy: every /v1 call acts for the caller (tenant and access labels) that its
API key maps to in ``RAG_GATEWAY_API_KEYS``; without keys (the embedded default,
authentication off) every call acts for ``RAG_GATEWAY_DEFAULT_TENANT``. No
request body, form field or header can name a tenant, so a client never reaches
another tenant's documents. See docs/tenancy.md.
"""

import hmac
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ragplatform.v1 import common_pb2
from services.common.tenancy import Caller
from services.gateway.errors import GatewayError, error_response
from services.runtime.convert import to_proto


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
            caller, key, refusal = self._identify(Headers(scope=scope))
            if caller is None:
                response = error_response(
                    401, "UNAUTHENTICATED", refusal, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            state[_CALLER_STATE] = caller
            state[_KEY_STATE] = key
        await self.app(scope, receive, send)

    def _identify(self, headers: Headers) -> tuple[Caller | None, str | None, str]:
        """(caller, its API key or None with authentication off, "") or
        (None, None, why the request is refused)."""
        if not self.grants:
            return self.default, None, ""
        presented = _presented_keys(headers)
        if not presented:
            return None, None, "missing API key"
        if len(presented) > 1:
            return None, None, "Authorization and X-API-Key carry different keys; send one"
        key = presented.pop()
        caller = caller_of_key(key, self.grants)
        return (caller, key, "") if caller is not None else (None, None, "invalid API key")


_CALLER_STATE = "ragplatform_caller"
_KEY_STATE = "ragplatform_api_key"


def identity_of(scope: Scope) -> tuple[Caller, str | None] | None:
    """(caller, API key) of a request ApiKeyMiddleware let through (the key is
    None with authentication off), or None outside /v1: for the middlewares
    inside it, such as the rate limits, which run before any route."""
    state = scope.get("state", {})
    caller: Caller | None = state.get(_CALLER_STATE)
    return None if caller is None else (caller, state.get(_KEY_STATE))


async def caller_of_request(request: Request) -> common_pb2.Caller:
    """Whom the request acts for, as ApiKeyMiddleware decided (a route dependency).

    Async although it awaits nothing: FastAPI runs a plain `def` dependency in a
    worker thread, and that hop costs time on every request (docs/benchmarks.md).
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
security dependencies that never refuse would still cost time on every request
(docs/benchmarks.md)."""


def with_security(app: FastAPI, prefix: str = "/v1/") -> Callable[[], dict[str, Any]]:
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
