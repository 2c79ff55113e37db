"""What the services calling Vertex AI through google-genai share: the client,
the exceptions a call can raise, and the platform error each one means.

Generation (Gemini) and embeddings both build their client here, with the
SDK's own retries off: each caller decides what a failure is worth (the
generation engine falls back to the next backend, the embedder backs off and
retries a throttle), so the SDK must not retry underneath them.
"""

from __future__ import annotations

import google.auth.exceptions
import httpx
import pydantic
from google import genai
from google.auth.credentials import Credentials
from google.genai import errors as genai_errors
from google.genai import types

from services.common.errors import (
    DeadlineError,
    FailedPreconditionError,
    PlatformError,
    RateLimitedError,
    UnavailableError,
)

FAILURES = (
    genai_errors.APIError,
    httpx.HTTPError,
    google.auth.exceptions.GoogleAuthError,
    pydantic.ValidationError,
    ValueError,
)
"""What a google-genai call raises when it fails (a malformed reply is a
ValidationError or a ValueError)."""


def vertex_client(
    *,
    project: str,
    location: str,
    timeout_seconds: float,
    base_url: str = "",
    credentials: Credentials | None = None,
) -> genai.Client:
    """A client of Vertex AI in `project`/`location`: Application Default
    Credentials unless given, Google's endpoint unless `base_url` (a proxy or a
    test fake), no retries."""
    return genai.Client(
        vertexai=True,
        project=project,
        location=location,
        credentials=credentials,
        http_options=types.HttpOptions(
            base_url=base_url or None,
            timeout=int(timeout_seconds * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


def http_detail(err: genai_errors.APIError) -> str:
    """An API error for a message: "HTTP 429 RESOURCE_EXHAUSTED: Quota exceeded…"."""
    return f"HTTP {err.code} {err.status or ''}: {err.message or err.details}"


def platform_error(err: Exception, where: str) -> PlatformError:
    """The platform error for a failed call of `where` (a backend and model):
    HTTP 429 → RateLimitedError, 5xx → UnavailableError, other 4xx →
    FailedPreconditionError, a timeout → DeadlineError, no connection, bad
    credentials or a malformed reply → UnavailableError."""
    if isinstance(err, genai_errors.APIError):
        detail = http_detail(err)
        if err.code == 429:
            return RateLimitedError(f"{where}: rate limited ({detail})")
        if err.code >= 500:
            return UnavailableError(f"{where}: server error ({detail})")
        return FailedPreconditionError(f"{where}: request refused ({detail})")
    if isinstance(err, httpx.TimeoutException):
        return DeadlineError(f"{where}: timed out")
    if isinstance(err, httpx.TransportError):
        return UnavailableError(f"{where}: connection failed: {err!r}")
    if isinstance(err, google.auth.exceptions.GoogleAuthError):
        return UnavailableError(f"{where}: credentials: {err}")
    return UnavailableError(f"{where}: malformed response: {err}")
