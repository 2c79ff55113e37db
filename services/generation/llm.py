"""An AnswerGenerator on top of any chat model: prompt, call, parse.

Why split this way: what makes an LLM answer trustworthy (the grounded prompt
with its token budget, citation parsing, removal of citations to sources the
model was not given, decline detection) is the same for every model, while
each provider only differs in how a chat call goes over the wire. A
:class:`ChatModel` (``vllm.py`` for the OpenAI-compatible API, ``gemini.py``
for Vertex AI) does the call and maps its failures to the platform's errors
naming the backend; :class:`LlmAnswerer` does the rest once, for all.

What a reply *means* is shared too: each provider has its words for "the
answer is complete", "cut at the output limit" and "stopped by a content
filter" (:class:`FinishReasons`), and a :class:`ReplyCheck` turns a reply, or
a stream of :class:`Chunk` s, into a :class:`Completion` or the failure it is
(:class:`TruncatedAnswerError`, :class:`AnswerBlockedError`, ...), so no
backend can pass off a cut or filtered answer as a complete one.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.citations import keep_supplied_citations
from services.common.errors import PlatformError, UnavailableError
from services.generation.backends import (
    DECLINE_TEXT,
    GeneratedAnswer,
    SourcePassage,
    validate_request,
)
from services.generation.prompts import GroundedPrompt, PromptBudget, build_prompt


@dataclass(frozen=True)
class Completion:
    """A chat model's complete reply and the tokens it was billed."""

    text: str
    input_tokens: int
    output_tokens: int


class StreamFailedError(UnavailableError):
    """The backend reported an error inside a stream it had begun with HTTP 200
    (vLLM's ``data: {"error": ...}`` event, Vertex's error object in the body).

    Whatever code the error object carries (vLLM says 400 BadRequestError for
    any engine failure), the request had been accepted: the backend failed
    while answering, so it is UNAVAILABLE, never the caller's INVALID_ARGUMENT.
    """

    cause = "stream_error"


class UnusableAnswerError(PlatformError):
    """The backend answered, but nothing of it may be shown as a complete answer.

    INTERNAL rather than UNAVAILABLE: the backend is up, and asking it the same
    thing again would get the same reply; nor is it the caller's fault. The
    engine falls back to the next backend without counting this against the
    backend's circuit breaker (it says nothing of the backend's health), and
    does not ask the same backend again within the request.
    """

    code_name = "INTERNAL"
    cause = "unusable_answer"


class PromptBlockedError(UnusableAnswerError):
    """The provider refused the prompt (Gemini's ``promptFeedback.blockReason``)."""

    cause = "prompt_blocked"


class AnswerBlockedError(UnusableAnswerError):
    """A content filter stopped the answer (``SAFETY``, ``RECITATION``, ``content_filter``)."""

    cause = "answer_blocked"


class TruncatedAnswerError(UnusableAnswerError):
    """The answer was cut at the output-token limit (``length``, ``MAX_TOKENS``).

    A failure that falls back, not an answer flagged and escalated like an
    ungrounded one, because the engine keeps an ungrounded answer when the
    escalation fails or the tier was forced, which is safe only because its
    flaw travels with it (``grounding.unsupported``); nothing in the contract
    can say that an answer stops mid-sentence, and its finished sentences may
    well pass the grounding check, so a kept cut answer would be shown as a
    complete, grounded one. The next backend, at worst the extractive one,
    writes a whole answer instead.
    """

    cause = "truncated"


def failure_cause(error: PlatformError) -> str:
    """The metrics label of a backend failure: its ``cause`` where it names one
    (the errors above), else its status code, lowercased."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, str) else error.code_name.lower()


class ChatModel(Protocol):
    """One provider's chat call. Failures raise PlatformErrors naming the backend:
    RateLimitedError (429), DeadlineError (timeout), UnavailableError (down, 5xx,
    malformed reply; StreamFailedError for an error inside a stream),
    FailedPreconditionError (other refusals, e.g. a bad key), and an
    UnusableAnswerError for a reply that is not a complete answer (blocked
    prompt, filtered or truncated answer)."""

    model: str

    async def complete(self, system: str, user: str) -> Completion:
        """The reply to one system instruction and one user message."""
        ...

    def stream(self, system: str, user: str) -> AsyncGenerator[str | Completion, None]:
        """Text deltas as the model writes them, then the Completion (last)."""
        ...


@dataclass(frozen=True)
class Chunk:
    """A reply, or one streamed piece of it, in the provider's terms."""

    text: str = ""
    finish_reason: str | None = None
    """Set on the piece that ends the reply."""
    usage: tuple[int, int] | None = None
    """(input, output) tokens so far, where the piece carries them."""


@dataclass(frozen=True)
class FinishReasons:
    """A provider's finish reasons: the one of a complete answer, the one of an
    answer cut at the output-token limit, and those of a content filter."""

    complete: str
    truncated: str
    blocked: Collection[str]


class ReplyCheck:
    """One backend's replies made into Completions, or into the failures they are."""

    def __init__(self, where: str, reasons: FinishReasons, output_limit: int) -> None:
        self._where = where
        self._reasons = reasons
        self._output_limit = output_limit

    def completion(self, reply: Chunk) -> Completion:
        """The Completion of a whole reply; raises unless it is a complete answer."""
        where, reason = self._where, reply.finish_reason
        if reason == self._reasons.truncated:
            raise TruncatedAnswerError(
                f"{where}: answer cut at the {self._output_limit}-token output limit "
                f"(finish reason {reason})"
            )
        if reason in self._reasons.blocked:
            raise AnswerBlockedError(
                f"{where}: answer stopped by the provider's content filter (finish reason {reason})"
            )
        if reason != self._reasons.complete:
            raise UnavailableError(f"{where}: answer did not finish (finish reason {reason})")
        if not reply.text:
            raise UnavailableError(f"{where}: no answer text (finish reason {reason})")
        usage = reply.usage or (0, 0)
        return Completion(reply.text, *usage)

    async def relay(
        self, chunks: AsyncGenerator[Chunk, None]
    ) -> AsyncGenerator[str | Completion, None]:
        """The text of each chunk as it comes, then the Completion of them all
        (raises instead when the whole is not a complete answer)."""
        parts: list[str] = []
        usage: tuple[int, int] | None = None
        reason: str | None = None
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                usage = chunk.usage or usage  # cumulative: the last one counts
                reason = chunk.finish_reason or reason
                if chunk.text:
                    parts.append(chunk.text)
                    yield chunk.text
        yield self.completion(Chunk("".join(parts), reason, usage))


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


_DECLINE_WORDS = _words(DECLINE_TEXT)


def is_decline(text: str, cited: Sequence[int]) -> bool:
    """Whether a model's reply is the decline the prompt asks for: the decline
    sentence (in any case and punctuation) and no citation. A reply that cites a
    source is an answer, however it hedges."""
    return not cited and _DECLINE_WORDS in _words(text)


class LlmAnswerer:
    """Grounded answers from a chat model (see the module docstring)."""

    def __init__(self, name: str, chat: ChatModel, budget: PromptBudget) -> None:
        self.name = name
        self.model = chat.model
        self._chat = chat
        self._budget = budget

    def _prompt(self, question: str, sources: Sequence[SourcePassage]) -> GroundedPrompt:
        validate_request(question, sources)
        return build_prompt(question, sources, self._budget)

    def _answer(self, prompt: GroundedPrompt, completion: Completion) -> GeneratedAnswer:
        check = keep_supplied_citations(completion.text, set(prompt.supplied))
        declined = is_decline(check.text, check.valid)
        return GeneratedAnswer(
            text=check.text,
            cited_sources=check.valid,
            declined=declined,
            backend=self.name,
            model=self.model,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            prompt=prompt.render(),
            invalid_citations_removed=len(check.removed),
        )

    async def generate(self, question: str, sources: Sequence[SourcePassage]) -> GeneratedAnswer:
        """One chat call; invalid citations are removed from the reply."""
        prompt = self._prompt(question, sources)
        return self._answer(prompt, await self._chat.complete(prompt.system, prompt.user))

    async def stream(
        self, question: str, sources: Sequence[SourcePassage]
    ) -> AsyncGenerator[str | GeneratedAnswer, None]:
        """The model's deltas as they come, then the checked answer."""
        prompt = self._prompt(question, sources)
        async with contextlib.aclosing(self._chat.stream(prompt.system, prompt.user)) as events:
            async for event in events:
                if isinstance(event, Completion):
                    yield self._answer(prompt, event)
                else:
                    yield event
