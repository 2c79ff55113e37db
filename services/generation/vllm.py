"""Llama (or any model) served by vLLM, through its OpenAI-compatible chat API.

vLLM's server speaks the OpenAI chat-completions protocol, so the official
``openai`` SDK is the client: ``AsyncOpenAI(base_url=".../v1")``, streaming
with ``stream_options={"include_usage": True}`` so the last chunk carries the
token usage. The SDK's own retries are off: the generation engine owns
retrying (the next backend of the chain) and deadlines, and a retry inside the
SDK would spend the deadline on the backend that just failed.

Failures become platform errors that name the backend, its model and URL:
HTTP 429 → RateLimitedError (RESOURCE_EXHAUSTED), a timeout → DeadlineError
(DEADLINE_EXCEEDED), no connection, HTTP 5xx or a malformed reply →
UnavailableError (UNAVAILABLE), any other refusal (400 prompt too long, 401
bad key, 404 unknown model) → FailedPreconditionError: the deployment, not the
caller, must change. An error event inside a stream (vLLM sends
``data: {"error": ...}`` then ``data: [DONE]``; the SDK raises a bare
``APIError``) → StreamFailedError (UNAVAILABLE), whatever its code says. A
connection lost after the stream began (the server killed mid-answer: the SDK
says only "Connection error.") → UnavailableError saying so, with how many
chunks had come and the transport's own reason.

A reply is an answer only when its ``finish_reason`` is ``stop``: ``length``
(cut at ``max_tokens``) → TruncatedAnswerError, ``content_filter`` →
AnswerBlockedError (both INTERNAL, see ``llm.py``), anything else →
UnavailableError.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import openai
import pydantic
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from services.common.errors import (
    DeadlineError,
    FailedPreconditionError,
    PlatformError,
    RateLimitedError,
    UnavailableError,
)
from services.generation.llm import (
    Chunk,
    Completion,
    FinishReasons,
    ReplyCheck,
    StreamFailedError,
)

FINISH_REASONS = FinishReasons(complete="stop", truncated="length", blocked={"content_filter"})
_FAILURES = (openai.OpenAIError, pydantic.ValidationError, ValueError)


class VllmChat:
    """Chat calls to a vLLM server (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str,
        model: str,
        temperature: float,
        max_output_tokens: int,
        timeout_seconds: float,
    ) -> None:
        self.name = name
        self.model = model
        self._temperature = temperature
        self._max_output_tokens = max_output_tokens
        self._where = f"{name} ({model} at {base_url})"
        self._check = ReplyCheck(self._where, FINISH_REASONS, max_output_tokens)
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_seconds
        )

    def _messages(self, system: str, user: str) -> list[ChatCompletionMessageParam]:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _error(self, err: Exception, chunks: int = 0) -> PlatformError:
        """The platform error for a failed call, naming this backend; `chunks`:
        how many chunks of a stream had come before it failed."""
        where = self._where
        if isinstance(err, openai.RateLimitError):
            return RateLimitedError(f"{where}: rate limited: {err.message}")
        if isinstance(err, openai.APITimeoutError):
            return DeadlineError(f"{where}: timed out")
        if isinstance(err, openai.APIConnectionError) and chunks:
            return UnavailableError(
                f"{where}: connection lost after {chunks} chunks of the answer: "
                f"{err.__cause__ or err.message}"
            )
        if isinstance(err, openai.APIConnectionError):
            return UnavailableError(f"{where}: connection failed: {err.message}")
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            if status >= 500:
                return UnavailableError(f"{where}: server error: {err.message}")
            return FailedPreconditionError(f"{where}: request refused: {err.message}")
        if type(err) is openai.APIError:  # only the SDK's stream raises the bare class
            return StreamFailedError(
                f"{where}: error inside the stream: {err.message} "
                f"({err.type or 'no type'}, code {err.code})"
            )
        return UnavailableError(f"{where}: malformed response: {err}")

    async def complete(self, system: str, user: str) -> Completion:
        """One non-streaming chat completion."""
        try:
            response: ChatCompletion = await self._client.chat.completions.create(
                model=self.model,
                messages=self._messages(system, user),
                temperature=self._temperature,
                max_tokens=self._max_output_tokens,
            )
            choice = response.choices[0] if response.choices else None
            reply = Chunk(
                (choice.message.content or "") if choice else "",
                choice.finish_reason if choice else None,
                _usage(response.usage),
            )
        except _FAILURES as err:
            raise self._error(err) from err
        return self._check.completion(reply)

    def stream(self, system: str, user: str) -> AsyncGenerator[str | Completion, None]:
        """Content deltas of a streamed completion, then the Completion with usage."""
        return self._check.relay(self._chunks(system, user))

    async def _chunks(self, system: str, user: str) -> AsyncGenerator[Chunk, None]:
        received = 0
        try:
            chunks = await self._client.chat.completions.create(
                model=self.model,
                messages=self._messages(system, user),
                temperature=self._temperature,
                max_tokens=self._max_output_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            async with chunks:
                async for chunk in chunks:
                    received += 1
                    yield _chunk(chunk)
        except _FAILURES as err:
            raise self._error(err, received) from err


def _chunk(chunk: ChatCompletionChunk) -> Chunk:
    choice = chunk.choices[0] if chunk.choices else None
    if choice is None:
        return Chunk(usage=_usage(chunk.usage))
    return Chunk(choice.delta.content or "", choice.finish_reason, _usage(chunk.usage))


def _usage(usage: CompletionUsage | None) -> tuple[int, int] | None:
    return (usage.prompt_tokens, usage.completion_tokens) if usage else None
