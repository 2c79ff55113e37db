"""The Gemini backend through the real google-genai SDK against a fake Vertex AI.

Checks the Vertex REST contract (URL with project, location and model,
bearer credentials, system instruction, generation config, SSE streaming,
usage metadata with thinking tokens, error bodies) and the platform errors the
backend turns failures into.
"""

import re
from typing import Literal

import google.oauth2.credentials
import pytest

from services.common.errors import (
    DeadlineError,
    FailedPreconditionError,
    PlatformError,
    RateLimitedError,
    UnavailableError,
)
from services.generation.backends import GeneratedAnswer, SourcePassage
from services.generation.gemini import GeminiChat
from services.generation.llm import (
    AnswerBlockedError,
    LlmAnswerer,
    PromptBlockedError,
    StreamFailedError,
    TruncatedAnswerError,
)
from services.generation.prompts import SYSTEM_INSTRUCTION, PromptBudget
from tests.contract.conftest import Running, received
from tests.contract.fakes.scripted import DEFAULT_TEXT
from tests.contract.fakes.vertex_fake import GeminiReply, VertexFake

MODEL = "gemini-2.5-pro"
PROJECT, LOCATION = "acme-rag", "europe-west4"
QUESTION = "How many days of paid leave do full-time employees get?"
SOURCES = [
    SourcePassage(1, "Full-time employees get 25 days of paid leave per year.", "Leave", 0.7)
]
MODEL_PATH = f"/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{MODEL}"
WHERE = f"gemini-pro ({MODEL} on Vertex AI, {PROJECT}/{LOCATION})"


def chat(base_url: str, timeout_seconds: float = 10.0) -> GeminiChat:
    return GeminiChat(
        name="gemini-pro",
        model=MODEL,
        project=PROJECT,
        location=LOCATION,
        temperature=0.0,
        max_output_tokens=512,
        thinking_budget=128,
        timeout_seconds=timeout_seconds,
        base_url=base_url,
        credentials=google.oauth2.credentials.Credentials(token="fake-token"),  # type: ignore[no-untyped-call]
    )


async def test_answers_through_generate_content(vertex: Running[VertexFake]) -> None:
    answerer = LlmAnswerer("gemini-pro", chat(vertex.url), PromptBudget(32768, 512))
    answer = await answerer.generate(QUESTION, SOURCES)
    assert (answer.text, answer.cited_sources, answer.model) == (DEFAULT_TEXT, [1], MODEL)
    assert (answer.input_tokens, answer.output_tokens) == (400, 20 + 30), "thinking is billed"
    path = vertex.fake.paths[-1]
    assert path.endswith(f"{MODEL_PATH}:generateContent")
    assert vertex.fake.headers[-1]["authorization"] == "Bearer fake-token"
    body = vertex.fake.requests[-1]
    assert body["systemInstruction"]["parts"] == [{"text": SYSTEM_INSTRUCTION}]
    (turn,) = body["contents"]
    assert turn["role"] == "user"
    assert turn["parts"][0]["text"].endswith(f"Question: {QUESTION}")
    config = body["generationConfig"]
    assert config["temperature"] == 0.0
    assert config["candidateCount"] == 1
    assert config["maxOutputTokens"] == 512 + 128, "the thinking budget comes on top"


async def test_streams_sse_deltas_then_usage(vertex: Running[VertexFake]) -> None:
    answerer = LlmAnswerer("gemini-pro", chat(vertex.url), PromptBudget(32768, 512))
    *deltas, final = [e async for e in answerer.stream(QUESTION, SOURCES)]
    assert len(deltas) > 1
    assert "".join(str(d) for d in deltas) == DEFAULT_TEXT
    assert isinstance(final, GeneratedAnswer)
    assert (final.input_tokens, final.output_tokens) == (400, 50)
    assert vertex.fake.paths[-1].endswith(f"{MODEL_PATH}:streamGenerateContent?alt=sse")


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, RateLimitedError), (500, UnavailableError), (400, FailedPreconditionError)],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
async def test_http_errors_become_platform_errors_naming_the_backend(
    vertex: Running[VertexFake], status: int, error: type[PlatformError], streaming: bool
) -> None:
    vertex.fake.script(GeminiReply(status=status))
    with pytest.raises(error) as raised:
        if streaming:
            async for _ in chat(vertex.url).stream("system", "user"):
                pass
        else:
            await chat(vertex.url).complete("system", "user")
    assert WHERE in str(raised.value)
    assert len(vertex.fake.requests) == 1, "the SDK must not retry: the engine falls back"


@pytest.mark.parametrize("framing", ["raw", "sse"])
@pytest.mark.parametrize(
    ("code", "status"),
    [(400, "INVALID_ARGUMENT"), (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL")],
)
@pytest.mark.parametrize("after", [0, 2], ids=["before-any-chunk", "after-2-chunks"])
async def test_error_inside_the_stream_is_unavailable_whatever_its_code(
    vertex: Running[VertexFake],
    framing: Literal["raw", "sse"],
    code: int,
    status: str,
    after: int,
) -> None:
    vertex.fake.script(
        GeminiReply(error_after_chunks=after, error_code=code, error_framing=framing)
    )
    deltas: list[str] = []
    with pytest.raises(StreamFailedError) as raised:
        await received(chat(vertex.url).stream("system", "user"), deltas)
    assert len(deltas) == after
    assert raised.value.code_name == "UNAVAILABLE", "the request was accepted: no caller fault"
    assert str(raised.value) == f"{WHERE}: error inside the stream ({code} {status}: fake {code})"
    assert len(vertex.fake.requests) == 1


async def test_stream_cut_off_mid_answer_is_unavailable(vertex: Running[VertexFake]) -> None:
    vertex.fake.script(GeminiReply(break_after_chunks=2))
    deltas: list[str] = []
    with pytest.raises(UnavailableError, match=re.escape(f"{WHERE}: connection failed")):
        await received(chat(vertex.url).stream("system", "user"), deltas)
    assert len(deltas) == 2


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (
            GeminiReply(block_reason="SAFETY"),
            PromptBlockedError,
            "prompt blocked (SAFETY: The prompt was blocked (fake).)",
        ),
        (
            GeminiReply(finish_reason="MAX_TOKENS"),
            TruncatedAnswerError,
            "answer cut at the 640-token output limit (finish reason MAX_TOKENS)",
        ),
        (
            GeminiReply(text="", finish_reason="MAX_TOKENS"),  # thinking used it all
            TruncatedAnswerError,
            "answer cut at the 640-token output limit (finish reason MAX_TOKENS)",
        ),
        (
            GeminiReply(finish_reason="SAFETY"),
            AnswerBlockedError,
            "answer stopped by the provider's content filter (finish reason SAFETY)",
        ),
        (
            GeminiReply(text="", finish_reason="SAFETY"),
            AnswerBlockedError,
            "answer stopped by the provider's content filter (finish reason SAFETY)",
        ),
        (
            GeminiReply(finish_reason="RECITATION"),
            AnswerBlockedError,
            "answer stopped by the provider's content filter (finish reason RECITATION)",
        ),
        (
            GeminiReply(finish_reason="OTHER"),
            UnavailableError,
            "answer did not finish (finish reason OTHER)",
        ),
        (GeminiReply(text=""), UnavailableError, "no answer text (finish reason STOP)"),
    ],
    ids=[
        "prompt-blocked",
        "max-tokens",
        "max-tokens-thinking-only",
        "safety",
        "safety-no-text",
        "recitation",
        "other",
        "stop-without-text",
    ],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
async def test_a_reply_that_did_not_stop_is_no_answer(
    vertex: Running[VertexFake],
    reply: GeminiReply,
    error: type[PlatformError],
    message: str,
    streaming: bool,
) -> None:
    vertex.fake.script(reply)
    deltas: list[str] = []
    with pytest.raises(error) as raised:
        if streaming:
            await received(chat(vertex.url).stream("system", "user"), deltas)
        else:
            await chat(vertex.url).complete("system", "user")
    assert type(raised.value) is error
    assert str(raised.value) == f"{WHERE}: {message}"
    sent = reply.text if streaming and not reply.block_reason else ""
    assert "".join(deltas) == sent, "the text as it came, and no answer"
    assert len(vertex.fake.requests) == 1, "not retried on the same backend"


async def test_malformed_reply_is_unavailable(vertex: Running[VertexFake]) -> None:
    vertex.fake.script(GeminiReply(malformed=True))
    with pytest.raises(UnavailableError, match="malformed response"):
        await chat(vertex.url).complete("system", "user")


async def test_model_that_never_answers_is_a_deadline_error(vertex: Running[VertexFake]) -> None:
    vertex.fake.script(GeminiReply(hang=True))
    with pytest.raises(DeadlineError, match="gemini-pro"):
        await chat(vertex.url, timeout_seconds=0.01).complete("system", "user")


async def test_unreachable_endpoint_is_unavailable() -> None:
    with pytest.raises(UnavailableError, match="connection failed"):
        await chat("http://127.0.0.1:1").complete("system", "user")
