"""The vLLM backend through the real openai SDK against a fake OpenAI-compatible server.

What is checked is the contract with vLLM's API (request shape, SSE streaming
with usage, error statuses) and what the backend makes of it (grounded
prompt, citations, declines, platform errors naming the backend).
"""

import re

import pytest

from services.common.errors import (
    DeadlineError,
    FailedPreconditionError,
    PlatformError,
    RateLimitedError,
    UnavailableError,
)
from services.generation.backends import DECLINE_TEXT, GeneratedAnswer, SourcePassage
from services.generation.llm import (
    AnswerBlockedError,
    Completion,
    LlmAnswerer,
    StreamFailedError,
    TruncatedAnswerError,
)
from services.generation.prompts import SYSTEM_INSTRUCTION, PromptBudget
from services.generation.vllm import VllmChat
from tests.contract.conftest import Running, received
from tests.contract.fakes.openai_fake import OpenAIFake, Reply
from tests.contract.fakes.scripted import DEFAULT_TEXT

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
API_KEY = "test-key"
QUESTION = "How many days of paid leave do full-time employees get?"
SOURCES = [
    SourcePassage(1, "Full-time employees get 25 days of paid leave per year.", "Leave", 0.71),
    SourcePassage(2, "Unused leave carries over until March 31.", "Carry-over", 0.55),
]


def chat(base_url: str, timeout_seconds: float = 10.0) -> VllmChat:
    return VllmChat(
        name="vllm",
        base_url=f"{base_url}/v1",
        api_key=API_KEY,
        model=MODEL,
        temperature=0.0,
        max_output_tokens=256,
        timeout_seconds=timeout_seconds,
    )


def answerer(base_url: str) -> LlmAnswerer:
    return LlmAnswerer("vllm", chat(base_url), PromptBudget(8192, 256))


async def test_answers_through_chat_completions(openai: Running[OpenAIFake]) -> None:
    answer = await answerer(openai.url).generate(QUESTION, SOURCES)
    assert (answer.text, answer.cited_sources, answer.declined) == (DEFAULT_TEXT, [1], False)
    assert (answer.backend, answer.model) == ("vllm", MODEL)
    assert (answer.input_tokens, answer.output_tokens) == (321, 17)
    body = openai.fake.requests[-1]
    assert body["model"] == MODEL
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == 256
    assert not body.get("stream")
    system, user = body["messages"]
    assert system == {"role": "system", "content": SYSTEM_INSTRUCTION}
    assert user["role"] == "user"
    assert '<source number="1" title="Leave">' in user["content"]
    assert user["content"].endswith(f"Question: {QUESTION}")
    assert openai.fake.headers[-1]["authorization"] == f"Bearer {API_KEY}"


async def test_streams_deltas_then_the_answer_with_usage(openai: Running[OpenAIFake]) -> None:
    events = [e async for e in answerer(openai.url).stream(QUESTION, SOURCES)]
    *deltas, final = events
    assert len(deltas) > 1 and all(isinstance(d, str) for d in deltas)
    assert "".join(str(d) for d in deltas) == DEFAULT_TEXT
    assert isinstance(final, GeneratedAnswer)
    assert (final.text, final.input_tokens, final.output_tokens) == (DEFAULT_TEXT, 321, 17)
    body = openai.fake.requests[-1]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_citations_of_sources_not_supplied_are_removed_and_counted(
    openai: Running[OpenAIFake],
) -> None:
    openai.fake.script(Reply(text="Employees get 25 days [1][7]. Leave carries over [9]."))
    answer = await answerer(openai.url).generate(QUESTION, SOURCES)
    assert answer.text == "Employees get 25 days [1]. Leave carries over."
    assert answer.cited_sources == [1]
    assert answer.invalid_citations_removed == 2


async def test_the_decline_sentence_is_a_decline(openai: Running[OpenAIFake]) -> None:
    openai.fake.script(Reply(text=DECLINE_TEXT))
    answer = await answerer(openai.url).generate("Who founded the company?", SOURCES)
    assert answer.declined
    assert answer.cited_sources == []


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, RateLimitedError), (500, UnavailableError), (400, FailedPreconditionError)],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
async def test_http_errors_become_platform_errors_naming_the_backend(
    openai: Running[OpenAIFake], status: int, error: type[PlatformError], streaming: bool
) -> None:
    openai.fake.script(Reply(status=status))
    with pytest.raises(error) as raised:
        if streaming:
            async for _ in chat(openai.url).stream("system", "user"):
                pass
        else:
            await chat(openai.url).complete("system", "user")
    assert f"vllm ({MODEL} at {openai.url}/v1)" in str(raised.value)
    assert len(openai.fake.requests) == 1, "the SDK must not retry: the engine falls back"


async def test_malformed_reply_is_unavailable(openai: Running[OpenAIFake]) -> None:
    openai.fake.script(Reply(malformed=True))
    with pytest.raises(UnavailableError, match="malformed response"):
        await chat(openai.url).complete("system", "user")


async def test_stream_cut_off_mid_answer_is_unavailable(openai: Running[OpenAIFake]) -> None:
    openai.fake.script(Reply(break_after_chunks=2))
    received: list[str | Completion] = []
    with pytest.raises(UnavailableError) as raised:
        async for event in chat(openai.url).stream("system", "user"):
            received.append(event)
    assert received and all(isinstance(e, str) for e in received)
    # what the SDK says ("Connection error.") would not tell a lost answer from a
    # server that was never there
    assert re.fullmatch(
        re.escape(f"vllm ({MODEL} at {openai.url}/v1): connection lost after ")
        + r"\d+ chunks of the answer: peer closed connection without sending complete "
        r"message body \(incomplete chunked read\)",
        str(raised.value),
    )


@pytest.mark.parametrize("after", [0, 2], ids=["before-any-delta", "after-2-deltas"])
async def test_error_event_inside_the_stream_is_unavailable_whatever_its_code(
    openai: Running[OpenAIFake], after: int
) -> None:
    openai.fake.script(Reply(error_after_chunks=after))  # vLLM says 400 BadRequestError
    deltas: list[str] = []
    with pytest.raises(StreamFailedError) as raised:
        await received(chat(openai.url).stream("system", "user"), deltas)
    assert len(deltas) == after
    assert raised.value.code_name == "UNAVAILABLE", "a failing backend, not a bad request"
    assert str(raised.value) == (
        f"vllm ({MODEL} at {openai.url}/v1): error inside the stream: fake 400 "
        "(BadRequestError, code 400)"
    )
    assert len(openai.fake.requests) == 1


@pytest.mark.parametrize(
    ("finish_reason", "error", "message"),
    [
        ("length", TruncatedAnswerError, "answer cut at the 256-token output limit"),
        ("content_filter", AnswerBlockedError, "stopped by the provider's content filter"),
        ("abort", UnavailableError, "answer did not finish (finish reason abort)"),
    ],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
async def test_a_reply_that_did_not_stop_is_no_answer(
    openai: Running[OpenAIFake],
    finish_reason: str,
    error: type[PlatformError],
    message: str,
    streaming: bool,
) -> None:
    openai.fake.script(Reply(finish_reason=finish_reason))
    deltas: list[str] = []
    with pytest.raises(error, match=re.escape(message)) as raised:
        if streaming:
            await received(chat(openai.url).stream("system", "user"), deltas)
        else:
            await chat(openai.url).complete("system", "user")
    assert type(raised.value) is error
    assert f"vllm ({MODEL} at {openai.url}/v1)" in str(raised.value)
    assert f"finish reason {finish_reason}" in str(raised.value)
    if streaming:
        assert "".join(deltas) == DEFAULT_TEXT, "the text came, the answer was refused"
    assert len(openai.fake.requests) == 1, "not retried on the same backend"


async def test_server_that_never_answers_is_a_deadline_error(openai: Running[OpenAIFake]) -> None:
    openai.fake.script(Reply(hang=True))
    with pytest.raises(DeadlineError, match="vllm"):
        await chat(openai.url, timeout_seconds=0.01).complete("system", "user")


async def test_unreachable_server_is_unavailable() -> None:
    with pytest.raises(UnavailableError, match="connection failed"):
        await chat("http://127.0.0.1:1").complete("system", "user")
