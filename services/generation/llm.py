"""An AnswerGenerator on top of any chat model: prompt, call, parse.

Why split this way: what makes an LLM answer trustworthy (the grounded prompt
with its token budget, citation parsing, removal of citations to sources the
model was not given, decline detection) is the same for every model, while
each provider only differs in how a chat call goes over the wire. A
:class:`ChatModel` (``vllm.py`` for the OpenAI-compatible API, ``gemini.py``
for Vertex AI) does the call and maps its failures to the platform's errors
naming the backend; :class:`LlmAnswerer` does the rest once, for all.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.citations import keep_supplied_citations
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


class ChatModel(Protocol):
    """One provider's chat call. Failures raise PlatformErrors naming the backend:
    RateLimitedError (429), DeadlineError (timeout), UnavailableError (down, 5xx,
    malformed reply), FailedPreconditionError (other refusals, e.g. a bad key)."""

    model: str

    async def complete(self, system: str, user: str) -> Completion:
        """The reply to one system instruction and one user message."""
        ...

    def stream(self, system: str, user: str) -> AsyncGenerator[str | Completion, None]:
        """Text deltas as the model writes them, then the Completion (last)."""
        ...


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
