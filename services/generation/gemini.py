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
credentials or a malformed reply → UnavailableError, other 4xx →
FailedPreconditionError. An error object inside a stream that began with
HTTP 200 (Vertex writes it into the body, raw or as an SSE event; the SDK
raises it as an APIError with the object's code) → StreamFailedError
(UNAVAILABLE), whatever its code: the request had been accepted.

A reply is an answer only when its ``finishReason`` is ``STOP``: a prompt
blocked by ``promptFeedback.blockReason`` (no candidates) →
PromptBlockedError, ``MAX_TOKENS`` (thinking included) → TruncatedAnswerError,
``SAFETY``, ``RECITATION`` and the other filters → AnswerBlockedError (all
INTERNAL, see ``llm.py``), any other reason → UnavailableError.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from enum import Enum

from google.auth.credentials import Credentials
from google.genai import errors as genai_errors
from google.genai import types

from services.common.errors import PlatformError
from services.generation.llm import (
    Chunk,
    Completion,
    FinishReasons,
    PromptBlockedError,
    ReplyCheck,
    StreamFailedError,
)
from services.runtime.genai import FAILURES, platform_error, vertex_client

FINISH_REASONS = FinishReasons(
    complete="STOP",
    truncated="MAX_TOKENS",
    blocked={"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"},
)


def _text_of(response: types.GenerateContentResponse) -> str:
    """The answer text of a response (or chunk): its first candidate's non-thought parts."""
    if not response.candidates or response.candidates[0].content is None:
        return ""
    parts = response.candidates[0].content.parts or []
    return "".join(p.text for p in parts if p.text and not p.thought)


def _name(value: Enum | str) -> str:
    """An enum field's wire name (the SDK keeps unknown values as strings)."""
    return str(value.value if isinstance(value, Enum) else value)


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
        self._check = ReplyCheck(self._where, FINISH_REASONS, max_output_tokens + thinking_budget)
        self._config = types.GenerateContentConfig(
            temperature=temperature,
            max_output_tokens=max_output_tokens + thinking_budget,
            candidate_count=1,
            thinking_config=types.ThinkingConfig(thinking_budget=thinking_budget),
        )
        self._client = vertex_client(
            project=project,
            location=location,
            timeout_seconds=timeout_seconds,
            base_url=base_url,
            credentials=credentials,
        )

    def _error(self, err: Exception) -> PlatformError:
        """The platform error for a failed call, naming this backend."""
        if (
            isinstance(err, genai_errors.APIError)
            and getattr(err.response, "status_code", None) == 200  # the stream had begun
        ):
            detail = f"{err.code} {err.status or ''}: {err.message or err.details}"
            return StreamFailedError(f"{self._where}: error inside the stream ({detail})")
        return platform_error(err, self._where)

    def _config_for(self, system: str) -> types.GenerateContentConfig:
        return self._config.model_copy(update={"system_instruction": system})

    async def complete(self, system: str, user: str) -> Completion:
        """One generateContent call."""
        try:
            response = await self._client.aio.models.generate_content(
                model=self.model, contents=user, config=self._config_for(system)
            )
        except FAILURES as err:
            raise self._error(err) from err
        return self._check.completion(self._chunk(response))

    def stream(self, system: str, user: str) -> AsyncGenerator[str | Completion, None]:
        """Text deltas of streamGenerateContent, then the Completion with usage."""
        return self._check.relay(self._chunks(system, user))

    async def _chunks(self, system: str, user: str) -> AsyncGenerator[Chunk, None]:
        try:
            chunks = await self._client.aio.models.generate_content_stream(
                model=self.model, contents=user, config=self._config_for(system)
            )
            async for chunk in chunks:
                yield self._chunk(chunk)
        except FAILURES as err:
            raise self._error(err) from err

    def _chunk(self, response: types.GenerateContentResponse) -> Chunk:
        """A response (or streamed chunk) as a Chunk; raises if it blocks the prompt."""
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            raise PromptBlockedError(
                f"{self._where}: prompt blocked ({_name(feedback.block_reason)}: "
                f"{feedback.block_reason_message or 'no message'})"
            )
        candidate = response.candidates[0] if response.candidates else None
        reason = candidate.finish_reason if candidate is not None else None
        return Chunk(
            _text_of(response),
            _name(reason) if reason is not None else None,
            _usage(response) if response.usage_metadata is not None else None,
        )


def _usage(response: types.GenerateContentResponse) -> tuple[int, int]:
    """(input, output) tokens from usage metadata; output includes thinking."""
    usage = response.usage_metadata
    if usage is None:
        return 0, 0
    output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    return usage.prompt_token_count or 0, output
