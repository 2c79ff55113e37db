"""A fake of Vertex AI's Gemini REST API and of Discovery Engine's check-grounding.

Gemini (what ``google-genai`` with ``vertexai=True`` calls):

* ``POST /{version}/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent``
  answers a ``GenerateContentResponse`` JSON: ``candidates[0].content.parts[].text``,
  ``finishReason``, ``usageMetadata`` (``promptTokenCount``,
  ``candidatesTokenCount``, ``thoughtsTokenCount``, ``totalTokenCount``);
* ``...:streamGenerateContent?alt=sse`` answers the same objects as
  Server-Sent Events (``data: {...}`` lines), one per text piece, the last one
  with ``finishReason`` and the full ``usageMetadata``;
* ``finishReason`` other than ``STOP``: ``MAX_TOKENS`` (the answer, thinking
  included, reached ``maxOutputTokens``), ``SAFETY`` (the answer was stopped by
  the safety filter; the candidate's ``safetyRatings`` say which category),
  ``RECITATION`` and the like;
* a blocked prompt: ``promptFeedback.blockReason`` (and
  ``blockReasonMessage``), no candidates at all (one event when streaming);
* errors: ``{"error": {"code", "message", "status"}}`` with the HTTP status
  (429 RESOURCE_EXHAUSTED, 500 INTERNAL, 400 INVALID_ARGUMENT);
* an error inside a stream, after the 200 and some chunks: Vertex writes the
  same error object into the body, pretty-printed over several lines outside
  the SSE framing (``raw``), or as a ``data:`` event (``sse``), and ends the
  stream; or the connection drops.

Check grounding (what ``GroundedGenerationServiceClient`` with the REST
transport calls): ``POST /v1/projects/{p}/locations/global/groundingConfigs/{config}:check``
answers ``supportScore``, ``citedChunks`` and ``claims`` (``startPos``,
``endPos``, ``claimText``, ``citationIndices``, ``groundingCheckRequired``).
The fake's "model": a claim (sentence) is supported when a fact contains it
verbatim, ignoring case.

Requests and headers are recorded; Gemini replies are scripted like the
OpenAI fake's (see :mod:`tests.contract.fakes.scripted`).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.contract.fakes.scripted import ScriptedFake, ScriptedReply, chunked, pieces, sse

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}
_SAFETY_RATING = {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}


@dataclass(frozen=True)
class GeminiReply(ScriptedReply):
    """How the fake answers one generateContent call."""

    finish_reason: str = "STOP"
    block_reason: str = ""
    """The prompt is blocked for this reason: no candidates, only promptFeedback."""
    error_framing: Literal["raw", "sse"] = "raw"
    """How an in-stream error is written (see the module docstring)."""
    prompt_tokens: int = 400
    candidates_tokens: int = 20
    thoughts_tokens: int = 30


class VertexFake(ScriptedFake[GeminiReply]):
    """The fake server: scripted Gemini replies, recorded requests."""

    def __init__(self) -> None:
        super().__init__(GeminiReply())
        self.paths: list[str] = []
        self.grounding_requests: list[dict[str, Any]] = []
        self.app.post(
            "/{version}/projects/{project}/locations/{location}/publishers/google/models/{target}"
        )(self._model_call)
        self.app.post("/v1/projects/{project}/locations/{location}/groundingConfigs/{target}")(
            self._check_grounding
        )

    def reset(self) -> None:
        super().reset()
        self.paths.clear()
        self.grounding_requests.clear()

    def _error(self, code: int) -> dict[str, Any]:
        return {
            "code": code,
            "message": f"fake {code}",
            "status": _STATUS_NAMES.get(code, "UNKNOWN"),
        }

    async def _model_call(self, request: Request, target: str) -> Response:
        body = await request.json()
        self.paths.append(request.url.path + ("?" + request.url.query if request.url.query else ""))
        reply = await self._take(request, body)
        if isinstance(reply, Response):
            return reply
        model, _, method = target.partition(":")
        if method == "streamGenerateContent":
            return StreamingResponse(self._events(model, reply), media_type="text/event-stream")
        if method != "generateContent":
            return JSONResponse({"error": {"code": 404, "message": method}}, status_code=404)
        return JSONResponse(_response(model, reply.text, reply, final=True))

    async def _events(self, model: str, reply: GeminiReply) -> AsyncIterator[str]:
        parts = [""] if reply.block_reason else pieces(reply.text)  # blocked: one event
        events = [
            sse(_response(model, piece, reply, final=n == len(parts) - 1), "\r\n")
            for n, piece in enumerate(parts)
        ]
        error = {"error": self._error(reply.error_code)}
        raw = json.dumps(error, indent=2).replace("\n", "\r\n") + "\r\n"
        async for event in chunked(
            events, reply, raw if reply.error_framing == "raw" else sse(error, "\r\n")
        ):
            yield event

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
    usage: dict[str, Any] = {"promptTokenCount": reply.prompt_tokens}
    if reply.block_reason:
        feedback = {
            "blockReason": reply.block_reason,
            "blockReasonMessage": "The prompt was blocked (fake).",
            "safetyRatings": [_SAFETY_RATING],
        }
        return {"promptFeedback": feedback, "usageMetadata": usage, "modelVersion": model}
    candidate: dict[str, Any] = {"index": 0}
    if text:  # a blocked answer has no content at all
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    if final:
        candidate["finishReason"] = reply.finish_reason
        if reply.finish_reason == "SAFETY":
            candidate["safetyRatings"] = [_SAFETY_RATING | {"blocked": True}]
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
