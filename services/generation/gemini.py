"""Gemini on Vertex AI, through the google-genai SDK.

``genai.Client(vertexai=True, project=..., location=...)`` speaks Vertex's REST
API (``…/publishers/google/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``). The grounded prompt's rules go in the
``system_instruction``, the sources and question in the user turn; token usage
comes from the response's ``usage_metadata`` (the last chunk of a stream).
Gemini 2.5 models think before answering and bill thinking as output tokens,
so output tokens are candidates plus thoughts, and the thinking budget is
capped (configuration) and added to the answer's output allowance: otherwise
thinking could use up the allowance and leave no answer.

Credentials: Application Default Credentials (Workload Identity on GKE) unless
given; a base URL override points the client at a proxy or a local fake. The
SDK's retries are off (the engine falls back to the next backend instead).

Failures become platform errors naming the backend and model: HTTP 429 →
RateLimitedError, a timeout → DeadlineError, 5xx, no connection, bad
credentials or a reply without answer text (blocked, truncated, malformed) →
UnavailableError, other 4xx → FailedPreconditionError.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

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
from services.generation.llm import Completion


def _text_of(response: types.GenerateContentResponse) -> str:
    """The answer text of a response (or chunk): its first candidate's non-thought parts."""
    if not response.candidates or response.candidates[0].content is None:
        return ""
    parts = response.candidates[0].content.parts or []
    return "".join(p.text for p in parts if p.text and not p.thought)


def _finish_reason(response: types.GenerateContentResponse | None) -> str:
    if response is None or not response.candidates:
        blocked = response.prompt_feedback if response is not None else None
        return f"prompt blocked: {blocked.block_reason}" if blocked else "no candidates"
    reason = response.candidates[0].finish_reason
    return f"finish reason {reason.value if reason else 'unknown'}"


class GeminiChat:
    """Chat calls to one Gemini model on Vertex AI (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        model: str,
        project: str,
        location: str,
        temperature: float,
        max_output_tokens: int,
        thinking_budget: int,
        timeout_seconds: float,
        base_url: str = "",
        credentials: Credentials | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self._where = f"{name} ({model} on Vertex AI, {project}/{location})"
        self._config = types.GenerateContentConfig(
            temperature=temperature,
            max_output_tokens=max_output_tokens + thinking_budget,
            candidate_count=1,
            thinking_config=types.ThinkingConfig(thinking_budget=thinking_budget),
        )
        self._client = genai.Client(
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

    def _error(self, err: Exception) -> PlatformError:
        """The platform error for a failed call, naming this backend."""
        where = self._where
        if isinstance(err, genai_errors.APIError):
            detail = f"HTTP {err.code} {err.status or ''}: {err.message or err.details}"
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

    def _config_for(self, system: str) -> types.GenerateContentConfig:
        return self._config.model_copy(update={"system_instruction": system})

    async def complete(self, system: str, user: str) -> Completion:
        """One generateContent call."""
        try:
            response = await self._client.aio.models.generate_content(
                model=self.model, contents=user, config=self._config_for(system)
            )
        except _FAILURES as err:
            raise self._error(err) from err
        text = _text_of(response)
        if not text:
            raise UnavailableError(f"{self._where}: no answer text ({_finish_reason(response)})")
        return Completion(text, *_usage(response))

    async def stream(self, system: str, user: str) -> AsyncGenerator[str | Completion, None]:
        """Text deltas of streamGenerateContent, then the Completion with usage."""
        parts: list[str] = []
        last: types.GenerateContentResponse | None = None
        usage = (0, 0)
        try:
            chunks = await self._client.aio.models.generate_content_stream(
                model=self.model, contents=user, config=self._config_for(system)
            )
            async for chunk in chunks:
                last = chunk
                if chunk.usage_metadata is not None:  # cumulative: the last one counts
                    usage = _usage(chunk)
                text = _text_of(chunk)
                if text:
                    parts.append(text)
                    yield text
        except _FAILURES as err:
            raise self._error(err) from err
        if not parts:
            raise UnavailableError(f"{self._where}: no answer text ({_finish_reason(last)})")
        yield Completion("".join(parts), *usage)


_FAILURES = (
    genai_errors.APIError,
    httpx.HTTPError,
    google.auth.exceptions.GoogleAuthError,
    pydantic.ValidationError,
    ValueError,
)


def _usage(response: types.GenerateContentResponse) -> tuple[int, int]:
    """(input, output) tokens from usage metadata; output includes thinking."""
    usage = response.usage_metadata
    if usage is None:
        return 0, 0
    output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    return usage.prompt_token_count or 0, output
