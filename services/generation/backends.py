"""The contract every answer generator implements, and the checks they share.

The generation service runs several backends: the extractive answerer (no
LLM, always available), Llama on vLLM through the openai SDK and Gemini through
google-genai (both in ``llm.py`` behind a ``ChatModel``). The engine, the
servicer and the evaluation scripts only depend on this module, so a backend
can be swapped by configuration without touching them, and each backend is
tested against the same expectations:

* sources are numbered and the answer cites them inline as ``[n]``;
* a backend that finds no answer in the sources *declines*: ``declined=True``,
  no citations, and (by convention) the text :data:`DECLINE_TEXT`. Callers must
  test the flag, never the text, because an LLM backend may phrase a decline
  in its own words or in the question's language;
* ``stream`` yields text deltas and then exactly one :class:`GeneratedAnswer`,
  so a streaming client gets the same final, citation-checked result as a
  unary one without a second call. The final text is the reference: an LLM
  backend removes citations of sources it was not given from it, so it may
  differ from the concatenated deltas by those markers.

No grpc import here: the runtime maps :class:`InvalidInputError` to
INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.common.errors import InvalidInputError

DECLINE_TEXT = "The provided sources do not answer this question."
"""Standard wording of a decline. Informative only: recognise declines by the flag."""


@dataclass(frozen=True)
class SourcePassage:
    """A numbered source the answer may cite as ``[number]``.

    ``score`` is the retrieval cosine similarity of the passage to the question;
    backends may use it to decline early when nothing relevant was retrieved,
    and the router to judge retrieval confidence. ``document_id`` lets the
    router count distinct documents (several chunks of one document are one
    piece of evidence).
    """

    number: int
    text: str
    title: str
    score: float
    document_id: str = ""


@dataclass(frozen=True)
class SelectedSentence:
    """One source sentence an extractive answer was built from (debug view)."""

    source_number: int
    text: str
    score: float


@dataclass(frozen=True)
class GeneratedAnswer:
    """The final result of one generation, whatever the backend.

    ``prompt`` and ``selection`` are debug views (what an LLM was asked; which
    sentences the extractive answerer picked and why) so that a bad answer can
    be diagnosed from the response alone.
    """

    text: str
    """The answer with inline ``[n]`` citations (or the decline text)."""
    cited_sources: list[int]
    """Source numbers cited in ``text``, in order of first appearance."""
    declined: bool
    """True when the sources do not answer the question; then no citations."""
    backend: str
    model: str
    input_tokens: int
    output_tokens: int
    prompt: str = ""
    selection: list[SelectedSentence] = field(default_factory=list)
    invalid_citations_removed: int = 0
    """Citations of sources the backend was not given, removed from ``text``."""


class AnswerGenerator(Protocol):
    """An answer generator (extractive, vLLM, Gemini, ...)."""

    name: str
    model: str

    async def generate(self, question: str, sources: Sequence[SourcePassage]) -> GeneratedAnswer:
        """Answer `question` from `sources` only, citing them as ``[n]``."""
        ...

    def stream(
        self, question: str, sources: Sequence[SourcePassage]
    ) -> AsyncGenerator[str | GeneratedAnswer, None]:
        """Yields text deltas, then exactly one GeneratedAnswer (last).

        The concatenated deltas equal the final ``GeneratedAnswer.text`` but for
        removed invalid citations (see the module docstring).
        """
        ...


def validate_request(question: str, sources: Sequence[SourcePassage]) -> None:
    """Reject a request no backend can answer sensibly, naming the problem.

    Checked once here rather than in each backend so that every backend fails
    the same way, before any (possibly paid) model call. An empty source list is
    allowed: the right answer then is a decline, not an error.
    """
    if not question.strip():
        raise InvalidInputError("question is empty")
    seen: set[int] = set()
    for source in sources:
        if source.number <= 0:
            raise InvalidInputError(
                f"source number {source.number} is not positive; sources are numbered from 1"
            )
        if source.number in seen:
            raise InvalidInputError(f"source number {source.number} is used more than once")
        seen.add(source.number)
        if not source.text.strip():
            raise InvalidInputError(f"source {source.number} has empty text")
