"""A fake of vLLM's OpenAI-compatible server: POST /v1/chat/completions.

It speaks the wire format the ``openai`` SDK expects (and vLLM produces):

* plain: a ``chat.completion`` JSON object with ``choices[0].message.content``
  and ``usage`` (``prompt_tokens``, ``completion_tokens``, ``total_tokens``);
* ``"stream": true``: Server-Sent Events, one ``chat.completion.chunk`` per
  ``data:`` line (the first with the assistant role, then content deltas, then
  one with ``finish_reason``), a final chunk with empty ``choices`` and the
  ``usage`` when ``stream_options.include_usage`` is set, and ``data: [DONE]``;
* errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP
  status (429 rate limit, 500 server error, 400 bad request).

Tests script it reply by reply (:meth:`OpenAIFake.script`): an error status, a
delay before answering (for deadlines), a malformed body, or a stream that
breaks off after some chunks. Every request body and its headers are kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

DEFAULT_TEXT = "Full-time employees get 25 days of paid leave per year [1]."


@dataclass(frozen=True)
class Reply:
    """How the fake answers one request."""

    text: str = DEFAULT_TEXT
    status: int = 200
    delay_seconds: float = 0.0
    malformed: bool = False
    """200 with a body that is not a chat completion."""
    break_after_chunks: int | None = None
    """Streaming: drop the connection after this many content chunks."""
    prompt_tokens: int = 321
    completion_tokens: int = 17


_ERROR_TYPES = {400: "BadRequestError", 429: "RateLimitError", 500: "InternalServerError"}


class OpenAIFake:
    """The fake server's state: scripted replies and recorded requests."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat_completions)

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, then with the default Reply()."""
        self.replies.extend(replies)

    async def _chat_completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        reply = self.replies.popleft() if self.replies else Reply()
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        if reply.status != 200:
            error = {
                "message": f"fake {reply.status}",
                "type": _ERROR_TYPES.get(reply.status, "APIError"),
                "param": None,
                "code": reply.status,
            }
            return JSONResponse({"error": error}, status_code=reply.status)
        if reply.malformed:
            return PlainTextResponse("<html>502 Bad Gateway</html>", media_type="application/json")
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
                        "finish_reason": "stop",
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
            return f"data: {json.dumps(data)}\n\n"

        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
        for n, piece in enumerate(pieces(reply.text)):
            if reply.break_after_chunks is not None and n == reply.break_after_chunks:
                raise ConnectionAbortedError("fake: connection dropped mid-stream")
            yield chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if include_usage:
            yield chunk([], usage=_usage(reply))
        yield "data: [DONE]\n\n"


def pieces(text: str, size: int = 3) -> list[str]:
    """`text` split into deltas of about `size` words (whitespace kept)."""
    words = text.split(" ")
    return [
        " ".join(words[i : i + size]) + (" " if i + size < len(words) else "")
        for i in range(0, len(words), size)
    ]


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
