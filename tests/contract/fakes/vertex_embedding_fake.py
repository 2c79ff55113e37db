"""A fake of Vertex AI's text-embedding REST API, as ``google-genai`` calls it.

What the SDK (``models.embed_content`` with ``vertexai=True``) sends for
``text-embedding-005`` and ``gemini-embedding-001`` alike:

* ``POST /{version}/projects/{p}/locations/{l}/publishers/google/models/{model}:predict``
  with ``{"instances": [{"content", "task_type", "title"}...],
  "parameters": {"outputDimensionality", "autoTruncate"}}`` (the config's
  task type and title are copied onto every instance);
* and reads ``{"predictions": [{"embeddings": {"values": [...],
  "statistics": {"token_count", "truncated"}}}...], "metadata":
  {"billableCharacterCount"}}``.

The fake models the service: the vector of a text is a deterministic unit
vector, a sum of one pseudo-random direction per word of the text, of the title
(half weight) and of the task type (a quarter), so texts sharing words are
near and search works; ``outputDimensionality`` keeps the vector's head
without normalising it again, as Google does. Its tokenizer
(`fake_token_count`) makes a token of every run of up to four word characters
and of every other non-space character, plus one start token: never more than
the UTF-8 bound clients count. Like Google, it refuses with 400
INVALID_ARGUMENT more instances or more tokens in one request than the model
takes, a larger ``outputDimensionality`` than the model's, and a text over
the input limit when ``autoTruncate`` is false (naming the instance and its
count); with ``autoTruncate`` on (Google's default) such a text is cut and
marked ``truncated``. Scripted replies (`ScriptedReply` with ``status`` 429,
503 or 400) answer before any of that, with Google's error body
``{"error": {"code", "message", "status"}}``: a quota storm is a run of 429s.

Every request body and path is recorded, and every instance answered
(``embedded``: model, task type, title, content), so tests can check that
each chunk was embedded exactly once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tests.contract.fakes.scripted import ScriptedFake, ScriptedReply

_TOKEN = re.compile(r"\w{1,4}|[^\w\s]")
_WORD = re.compile(r"\w+")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_MESSAGES = {
    429: "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model "
    "with base model: {model}. Please submit a quota increase request.",
    503: "The service is currently unavailable.",
    500: "Internal error encountered.",
    400: "Request contains an invalid argument.",
}


@dataclass(frozen=True)
class FakeModel:
    """The limits the fake enforces for one model."""

    dimension: int
    max_input_tokens: int = 2048
    max_instances: int = 250
    max_request_tokens: int = 20_000


MODELS = {
    "text-embedding-005": FakeModel(768),
    "gemini-embedding-001": FakeModel(3072, max_instances=1),
}


@dataclass(frozen=True)
class Embedded:
    """One instance the fake answered."""

    model: str
    task_type: str
    title: str
    content: str


def fake_token_count(text: str) -> int:
    """The fake model's tokens for `text`, its start token included."""
    return len(_TOKEN.findall(text)) + 1


def fake_vector(model: str, content: str, task_type: str = "", title: str = "") -> list[float]:
    """The full-size unit vector the fake gives a text (see the module docstring)."""
    size = MODELS[model].dimension
    vector = np.zeros(size)
    for word in _WORD.findall(content.lower()):
        vector += _direction(word, size)
    for word in _WORD.findall(title.lower()):
        vector += 0.5 * _direction(word, size)
    vector += 0.25 * _direction(f"task:{task_type}", size)
    if not _WORD.search(content):
        vector += _direction(f"text:{content}", size)
    return [float(x) for x in vector / np.linalg.norm(vector)]


@lru_cache(maxsize=65_536)
def _direction(word: str, size: int) -> npt.NDArray[np.float64]:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(size)


class VertexEmbeddingFake(ScriptedFake[ScriptedReply]):
    """The fake server: scripted failures, recorded requests, answered instances."""

    def __init__(self) -> None:
        super().__init__(ScriptedReply())
        self.paths: list[str] = []
        self.embedded: list[Embedded] = []
        self.app.post(
            "/{version}/projects/{project}/locations/{location}/publishers/google/models/{target}"
        )(self._predict)

    def reset(self) -> None:
        super().reset()
        self.paths.clear()
        self.embedded.clear()

    def storm(self, status: int, count: int) -> None:
        """Answer the next `count` requests with `status` (429 or 503)."""
        self.script(*[ScriptedReply(status=status)] * count)

    def documents(self) -> list[str]:
        """The contents embedded as RETRIEVAL_DOCUMENT, in order."""
        return [e.content for e in self.embedded if e.task_type == "RETRIEVAL_DOCUMENT"]

    def _error(self, code: int) -> dict[str, Any]:
        model = self.paths[-1].rsplit("/", 1)[-1].split(":")[0] if self.paths else ""
        message = _MESSAGES.get(code, f"HTTP {code}").format(model=model)
        return {"code": code, "message": message, "status": _STATUS_NAMES.get(code, "UNKNOWN")}

    async def _predict(self, request: Request, target: str) -> Response:
        self.paths.append(request.url.path)
        body = await request.json()
        reply = await self._take(request, body)
        if isinstance(reply, Response):
            return reply
        model_name, _, method = target.partition(":")
        model = MODELS.get(model_name)
        if model is None or method != "predict":
            return _google_error(404, f"Publisher Model `{target}` was not found.")
        instances: list[dict[str, Any]] = body.get("instances") or []
        parameters: dict[str, Any] = body.get("parameters") or {}
        problem = _invalid(model_name, model, instances, parameters)
        if problem:
            return _google_error(400, problem)
        auto_truncate = parameters.get("autoTruncate", True)
        dimension = parameters.get("outputDimensionality") or model.dimension
        predictions = []
        for instance in instances:
            content, task_type = instance["content"], instance.get("task_type", "")
            title = instance.get("title", "")
            tokens = fake_token_count(content)
            truncated = auto_truncate and tokens > model.max_input_tokens
            if truncated:
                content = " ".join(_TOKEN.findall(content)[: model.max_input_tokens - 1])
                tokens = model.max_input_tokens
            values = fake_vector(model_name, content, task_type, title)[:dimension]
            self.embedded.append(Embedded(model_name, task_type, title, instance["content"]))
            predictions.append(
                {
                    "embeddings": {
                        "values": values,
                        "statistics": {"token_count": tokens, "truncated": truncated},
                    }
                }
            )
        characters = sum(len(i["content"]) for i in instances)
        return JSONResponse(
            {"predictions": predictions, "metadata": {"billableCharacterCount": characters}}
        )


def _invalid(
    name: str, model: FakeModel, instances: list[dict[str, Any]], parameters: dict[str, Any]
) -> str:
    """Google's reason to refuse the request with 400, or ""."""
    if not instances:
        return "The request must contain at least one instance."
    if len(instances) > model.max_instances:
        return (
            f"{len(instances)} instances in one request; {name} takes at most "
            f"{model.max_instances}."
        )
    dimension = parameters.get("outputDimensionality")
    if dimension is not None and not 1 <= dimension <= model.dimension:
        return f"outputDimensionality must be between 1 and {model.dimension}, got {dimension}."
    total = 0
    for index, instance in enumerate(instances):
        content = instance.get("content")
        if not isinstance(content, str) or not content:
            return f"instances[{index}].content is empty."
        tokens = fake_token_count(content)
        if tokens > model.max_input_tokens and parameters.get("autoTruncate") is False:
            return (
                f"Unable to submit request because instances[{index}] has {tokens} input "
                f"tokens but {name} supports up to {model.max_input_tokens}. Reduce the input "
                "token count and try again."
            )
        total += min(tokens, model.max_input_tokens)
    if total > model.max_request_tokens:
        return (
            f"Unable to submit request because the input token count is {total} but "
            f"{name} supports up to {model.max_request_tokens} per request."
        )
    return ""


def _google_error(code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "status": _STATUS_NAMES[code]}},
        status_code=code,
    )
