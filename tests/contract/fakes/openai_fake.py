"""A fake of vLLM's OpenAI-compatible server: POST /v1/chat/completions.

It speaks the wire format the ``openai`` SDK expects (and vLLM produces):

* plain: a ``chat.completion`` JSON object with ``choices[0].message.content``,
  its ``finish_reason`` (``stop``, or ``length`` when the answer reached
  ``max_tokens``) and ``usage`` (``prompt_tokens``, ``completion_tokens``,
  ``total_tokens``);
* ``"stream": true``: Server-Sent Events, one ``chat.completion.chunk`` per
  ``data:`` line (the first with the assistant role, then content deltas, then
  one with ``finish_reason``), a final chunk with empty ``choices`` and the
  ``usage`` when ``stream_options.include_usage`` is set, and ``data: [DONE]``;
* errors: ``{"error": {"object", "message", "type", "param", "code"}}`` with the
  HTTP status (429 rate limit, 500 server error, 400 bad request);
* an error inside a stream, after the 200 and some deltas: vLLM's chat stream
  catches the engine's exception and sends the same error object as one more
  event, ``data: {"error": {...}}``, then ``data: [DONE]``. It says
  ``BadRequestError`` and code 400 whatever went wrong (vLLM's default), so a
  client must not read the code as the caller's fault.

Tests script it reply by reply (:meth:`OpenAIFake.script`, see
:mod:`tests.contract.fakes.scripted`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.contract.fakes.scripted import ScriptedFake, ScriptedReply, chunked, pieces, sse


@dataclass(frozen=True)
class Reply(ScriptedReply):
    """How the fake answers one chat completion."""

    error_code: int = 400
    finish_reason: str = "stop"
    prompt_tokens: int = 321
    completion_tokens: int = 17


_ERROR_TYPES = {400: "BadRequestError", 429: "RateLimitError", 500: "InternalServerError"}
DONE = "data: [DONE]\n\n"


class OpenAIFake(ScriptedFake[Reply]):
    """The fake server: scripted replies and recorded requests."""

    def __init__(self) -> None:
        super().__init__(Reply())
        self.app.post("/v1/chat/completions")(self._chat_completions)

    def _error(self, code: int) -> dict[str, Any]:
        return {
            "object": "error",
            "message": f"fake {code}",
            "type": _ERROR_TYPES.get(code, "APIError"),
            "param": None,
            "code": code,
        }

    async def _chat_completions(self, request: Request) -> Response:
        body = await request.json()
        reply = await self._take(request, body)
        if isinstance(reply, Response):
            return reply
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._chunks(body["model"], reply, include_usage), media_type="text/event-stream"
            )
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "logprobs": None,
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": _usage(reply),
            }
        )

    async def _chunks(self, model: str, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                **extra,
            }
            return sse(data)

        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
        events = [
            chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
            for piece in pieces(reply.text)
        ]
        events.append(chunk([{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]))
        if include_usage:
            events.append(chunk([], usage=_usage(reply)))
        events.append(DONE)
        error = sse({"error": self._error(reply.error_code)}) + DONE
        async for event in chunked(events, reply, error):
            yield event


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
