"""What the LLM answerer makes of a model's reply, whatever the provider."""

from collections.abc import AsyncGenerator

import pytest

from services.common.errors import InvalidInputError, PlatformError, RateLimitedError
from services.generation.backends import DECLINE_TEXT, GeneratedAnswer, SourcePassage
from services.generation.llm import (
    AnswerBlockedError,
    Chunk,
    Completion,
    FinishReasons,
    LlmAnswerer,
    PromptBlockedError,
    ReplyCheck,
    StreamFailedError,
    TruncatedAnswerError,
    failure_cause,
    is_decline,
)
from services.generation.prompts import PromptBudget, build_prompt

QUESTION = "How many days of paid leave do we get?"
SOURCES = [SourcePassage(1, "Employees get 25 days of paid leave per year.", "Leave", 0.7)]


class Canned:
    """A ChatModel that always replies `text` (deltas of one word each when streamed)."""

    model = "canned-1"

    def __init__(self, text: str) -> None:
        self.text = text
        self.prompts: list[tuple[str, str]] = []

    async def complete(self, system: str, user: str) -> Completion:
        self.prompts.append((system, user))
        return Completion(self.text, 50, 5)

    async def stream(self, system: str, user: str) -> AsyncGenerator[str | Completion, None]:
        self.prompts.append((system, user))
        for word in self.text.split(" "):
            yield word + " "
        yield Completion(self.text, 50, 5)


def answerer(text: str, context_tokens: int = 4096) -> LlmAnswerer:
    return LlmAnswerer("canned", Canned(text), PromptBudget(context_tokens, 256))


@pytest.mark.parametrize(
    ("text", "cited", "declined"),
    [
        (DECLINE_TEXT, [], True),
        ("the provided sources do not answer this question", [], True),
        ("I'm sorry: the provided sources do not answer this question!", [], True),
        (f"{DECLINE_TEXT} However, leave is 25 days [1].", [1], False),
        ("Leave is 25 days.", [], False),
    ],
)
def test_decline_is_the_decline_sentence_without_citations(
    text: str, cited: list[int], declined: bool
) -> None:
    assert is_decline(text, cited) is declined


async def test_answer_keeps_usage_prompt_and_supplied_citations() -> None:
    answer = await answerer("Employees get 25 days [1][2].").generate("How many days?", SOURCES)
    assert (answer.text, answer.cited_sources, answer.invalid_citations_removed) == (
        "Employees get 25 days [1].",
        [1],
        1,
    )
    assert (answer.input_tokens, answer.output_tokens, answer.model) == (50, 5, "canned-1")
    assert answer.prompt.startswith("[system]\nYou answer questions")


async def test_citation_of_a_source_dropped_for_room_is_invalid() -> None:
    sources = [*SOURCES, SourcePassage(2, "Parking is free. " * 400, "Parking", 0.1)]

    def supplied(context_tokens: int) -> tuple[int, ...]:
        try:
            return build_prompt(QUESTION, sources, PromptBudget(context_tokens, 256)).supplied
        except InvalidInputError:  # no room for any source
            return ()

    tight = next(c for c in range(400, 4000, 10) if supplied(c) == (1,))
    answer = await answerer("Parking is free [2]. Leave is 25 days [1].", tight).generate(
        QUESTION, sources
    )
    assert answer.text == "Parking is free. Leave is 25 days [1]."
    assert answer.invalid_citations_removed == 1


async def test_stream_deltas_then_the_checked_answer() -> None:
    events = [e async for e in answerer("Leave is 25 days [1][9].").stream("q?", SOURCES)]
    *deltas, final = events
    assert "".join(str(d) for d in deltas).strip() == "Leave is 25 days [1][9]."
    assert isinstance(final, GeneratedAnswer)
    assert final.text == "Leave is 25 days [1]."


@pytest.mark.parametrize(
    ("error", "code", "cause"),
    [
        (StreamFailedError("m: error inside the stream"), "UNAVAILABLE", "stream_error"),
        (TruncatedAnswerError("m: answer cut"), "INTERNAL", "truncated"),
        (PromptBlockedError("m: prompt blocked"), "INTERNAL", "prompt_blocked"),
        (AnswerBlockedError("m: answer stopped"), "INTERNAL", "answer_blocked"),
        (RateLimitedError("m: rate limited"), "RESOURCE_EXHAUSTED", "resource_exhausted"),
    ],
)
def test_failures_of_a_reply_have_a_backend_status_and_their_own_cause(
    error: PlatformError, code: str, cause: str
) -> None:
    assert (error.code_name, failure_cause(error)) == (code, cause)


async def test_relay_closes_the_provider_stream_when_it_is_closed_early() -> None:
    closed: list[bool] = []

    async def chunks() -> AsyncGenerator[Chunk, None]:
        try:
            yield Chunk("Leave is ")
            yield Chunk("25 days [1].", "stop", (50, 5))
        finally:
            closed.append(True)

    check = ReplyCheck("m", FinishReasons("stop", "length", {"content_filter"}), 256)
    relay = check.relay(chunks())
    assert await anext(relay) == "Leave is "
    await relay.aclose()
    assert closed == [True], "the SDK's stream (its HTTP response) is closed at once"
