"""A fake of Vertex AI's Gemini REST API and of Discovery Engine's check-grounding.

Gemini (what ``google-genai`` with ``vertexai=True`` calls):

* ``POST /{version}/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent``
  answers a ``GenerateContentResponse`` JSON: ``candidates[0].content.parts[].text``,
  ``finishReason``, ``usageMetadata`` (``promptTokenCount``,
  ``candidatesTokenCount``, ``thoughtsTokenCount``, ``totalTokenCount``);
* ``...:streamGenerateContent?alt=sse`` answers the same objects as
  Server-Sent Events (``data: {...}`` lines), one per text piece, the last one
  with ``finishReason`` and the full ``usageMetadata``;
* errors: ``{"error": {"code", "message", "status"}}`` with the HTTP status
  (429 RESOURCE_EXHAUSTED, 500 INTERNAL, 400 INVALID_ARGUMENT).

Check grounding (what ``GroundedGenerationServiceClient`` with the REST
transport calls): ``POST /v1/projects/{p}/locations/global/groundingConfigs/{config}:check``
answers ``supportScore``, ``citedChunks`` and ``claims`` (``startPos``,
``endPos``, ``claimText``, ``citationIndices``, ``groundingCheckRequired``).
The fake's "model": a claim (sentence) is supported when a fact contains it
verbatim, ignoring case.

Requests and headers are recorded; Gemini replies are scripted like the
OpenAI fake's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from tests.contract.fakes.openai_fake import DEFAULT_TEXT, pieces

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}


@dataclass(frozen=True)
class GeminiReply:
    """How the fake answers one generateContent call."""

    text: str = DEFAULT_TEXT
    status: int = 200
    delay_seconds: float = 0.0
    malformed: bool = False
    finish_reason: str = "STOP"
    prompt_tokens: int = 400
    candidates_tokens: int = 20
    thoughts_tokens: int = 30


class VertexFake:
    """The fake server's state: scripted Gemini replies, recorded requests."""

    def __init__(self) -> None:
        self.replies: deque[GeminiReply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.grounding_requests: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.post(
            "/{version}/projects/{project}/locations/{location}/publishers/google/models/{target}"
        )(self._model_call)
        self.app.post("/v1/projects/{project}/locations/{location}/groundingConfigs/{target}")(
            self._check_grounding
        )

    def script(self, *replies: GeminiReply) -> None:
        """Answer the next calls with `replies`, then with the default GeminiReply()."""
        self.replies.extend(replies)

    def _record(self, request: Request, body: dict[str, Any]) -> None:
        self.requests.append(body)
        self.paths.append(request.url.path + ("?" + request.url.query if request.url.query else ""))
        self.headers.append(dict(request.headers))

    async def _model_call(self, request: Request, target: str) -> Response:
        body = await request.json()
        self._record(request, body)
        model, _, method = target.partition(":")
        reply = self.replies.popleft() if self.replies else GeminiReply()
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        if reply.status != 200:
            error = {
                "code": reply.status,
                "message": f"fake {reply.status} for {model}",
                "status": _STATUS_NAMES.get(reply.status, "UNKNOWN"),
            }
            return JSONResponse({"error": error}, status_code=reply.status)
        if reply.malformed:
            return PlainTextResponse("<html>502 Bad Gateway</html>", media_type="application/json")
        if method == "streamGenerateContent":
            return StreamingResponse(self._events(model, reply), media_type="text/event-stream")
        if method != "generateContent":
            return JSONResponse({"error": {"code": 404, "message": method}}, status_code=404)
        return JSONResponse(_response(model, reply.text, reply, final=True))

    async def _events(self, model: str, reply: GeminiReply) -> AsyncIterator[str]:
        parts = pieces(reply.text)
        for n, piece in enumerate(parts):
            data = _response(model, piece, reply, final=n == len(parts) - 1)
            yield f"data: {json.dumps(data)}\r\n\r\n"

    async def _check_grounding(self, request: Request, target: str) -> Response:
        if not target.endswith(":check"):
            return JSONResponse({"error": {"code": 404, "message": target}}, status_code=404)
        body = await request.json()
        self.grounding_requests.append(body)
        facts = [f["factText"] for f in body.get("facts", [])]
        answer = body["answerCandidate"]
        claims, cited = [], []
        for match in re.finditer(r"[^.!?]+[.!?]?", answer):
            text = match.group().strip()
            if not text:
                continue
            bare = text.rstrip(".!?").lower()
            supporting = [i for i, fact in enumerate(facts) if bare in fact.lower()]
            for i in supporting:
                if i not in cited:
                    cited.append(i)
            claims.append(
                {
                    "startPos": len(answer[: match.start()].encode()),
                    "endPos": len(answer[: match.end()].encode()),
                    "claimText": text,
                    "citationIndices": [cited.index(i) for i in supporting],
                    "groundingCheckRequired": True,
                }
            )
        supported = sum(1 for c in claims if c["citationIndices"])
        return JSONResponse(
            {
                "supportScore": supported / len(claims) if claims else 0.0,
                "citedChunks": [{"chunkText": facts[i], "source": str(i)} for i in cited],
                "claims": claims,
            }
        )


def _response(model: str, text: str, reply: GeminiReply, *, final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if text:  # a blocked answer has no content at all
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    usage: dict[str, Any] = {"promptTokenCount": reply.prompt_tokens}
    if final:
        candidate["finishReason"] = reply.finish_reason
        usage |= {
            "candidatesTokenCount": reply.candidates_tokens,
            "thoughtsTokenCount": reply.thoughts_tokens,
            "totalTokenCount": reply.prompt_tokens
            + reply.candidates_tokens
            + reply.thoughts_tokens,
        }
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "fake-response",
    }
