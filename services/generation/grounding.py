"""Grounding checks: is each sentence of an answer supported by the sources it cites?

Why: a citation marker proves nothing by itself; a model can cite [1] for a
claim that source 1 never makes. Every answer therefore gets a grounding
score (the share of its sentences supported by their cited sources) and the
list of unsupported sentences, which the router uses to escalate a weak answer
to the strong model, and clients use to flag or hide doubtful sentences.

Two checkers sit behind :class:`GroundingChecker`:

* :class:`LexicalGroundingChecker` (the default, local, free): a sentence is
  supported when at least ``min_support`` of its content words (lowercased,
  accent-folded, stemmed, stop words removed: the extractive answerer's
  :func:`~services.generation.extractive.content_terms`) occur in the sources it
  cites. A sentence that cites nothing is unsupported, and so is one that
  states a number its cited sources do not state with the word it counts
  (:func:`unsupported_numbers`): a real model's typical hallucination reuses
  the source's words around an invented figure ("One account can create up to
  100 buckets [3]" from a source about 100 megabytes and accounts), which the
  word share alone let through. It cannot recognise a paraphrase with other
  words (a false "unsupported") or every sentence that recombines the source's
  words into a different claim (a false "supported"), but it is
  deterministic, instant, and scores a verbatim extractive answer 1.0 by
  construction.
* :class:`~services.generation.vertex_grounding.VertexGroundingChecker`: Vertex
  AI's check-grounding API, a model that judges entailment claim by claim.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.citations import cited_numbers, keep_supplied_citations
from services.common.text import split_sentences
from services.generation.backends import SourcePassage
from services.generation.extractive import content_terms

_LEADING_MARKERS = re.compile(r"^(?:\[\d+(?:\s*,\s*\d+)*\]\s*)+")
_TOKEN = re.compile(r"[^\W_]+(?:[.,][^\W_]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
UNIT_WINDOW = 3
"""Terms after a number in a source among which the word it counts must be."""
_ANSWER_WORDS = frozenset({"yes"})
"""Words that answer rather than claim ("Yes, both were American [1][2]."): no
source states them, so they are not looked for."""


@dataclass(frozen=True)
class Grounding:
    """Outcome of a grounding check of one answer."""

    score: float
    """Share of the checked sentences (claims) that are supported, in [0, 1]."""
    unsupported: list[str]
    """The unsupported sentences, as written in the answer, in order."""
    checker: str
    checked: int
    """Number of sentences (claims) checked; 0 for a decline."""


DECLINE_GROUNDING_SCORE = 1.0
"""A decline makes no claim, so nothing in it is unsupported."""


@dataclass(frozen=True)
class Claim:
    """One sentence of an answer with the source numbers it cites."""

    text: str
    """The sentence as written, markers included."""
    cited: list[int]


def answer_claims(text: str) -> list[Claim]:
    """The sentences of an answer with their citations.

    Markers that the sentence splitter put at the start of the next sentence
    ("... in 2019. [2] The ...") belong to the sentence before them, as a reader
    would take them.
    """
    claims: list[Claim] = []
    for sentence in split_sentences(text):
        lead = _LEADING_MARKERS.match(sentence)
        if lead and claims:
            previous = claims.pop()
            moved = lead.group().strip()
            claims.append(
                Claim(
                    f"{previous.text} {moved}",
                    list(dict.fromkeys(previous.cited + cited_numbers(moved))),
                )
            )
            sentence = sentence[lead.end() :].strip()
            if not re.search(r"\w", sentence):
                continue
        claims.append(Claim(sentence, cited_numbers(sentence)))
    return claims


def _terms(text: str) -> list[str]:
    """Content terms in order, numbers kept whole ("1,500" is "1500", "0.018" one term)."""
    terms: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        if _NUMBER.fullmatch(token):
            terms.append(token.replace(",", ""))
        else:
            terms.extend(content_terms(token))
    return terms


def unsupported_numbers(sentence: str, cited_texts: Sequence[str]) -> list[str]:
    """The numbers of `sentence` that its cited sources do not state with the word
    they count: each number with the term after it ("100 buckets") must occur in a
    source with that term among the UNIT_WINDOW terms after it ("100 US dollars
    per night" backs "$100 per night"), or alone when nothing follows it."""
    claim = _terms(keep_supplied_citations(sentence, set()).text)
    stated: dict[str, set[str]] = {}
    for text in cited_texts:
        terms = _terms(text)
        for i, term in enumerate(terms):
            if _NUMBER.fullmatch(term):
                stated.setdefault(term, set()).update(terms[i + 1 : i + 1 + UNIT_WINDOW])
    missing = []
    for i, term in enumerate(claim):
        if not _NUMBER.fullmatch(term):
            continue
        unit = claim[i + 1] if i + 1 < len(claim) else None
        if term not in stated or (unit is not None and unit not in stated[term]):
            missing.append(term if unit is None else f"{term} {unit}")
    return missing


class GroundingChecker(Protocol):
    """Scores how well an answer's sentences are supported by their cited sources."""

    name: str

    async def check(self, answer: str, sources: Sequence[SourcePassage]) -> Grounding:
        """Check `answer` (with ``[n]`` markers) against `sources` (numbered as cited)."""
        ...


class LexicalGroundingChecker:
    """Local content-word support check (see the module docstring)."""

    name = "lexical-v1"

    def __init__(self, min_support: float = 0.6) -> None:
        """min_support: share of a sentence's content words that must occur in the
        sources it cites for the sentence to count as supported."""
        if not 0.0 < min_support <= 1.0:
            raise ValueError("min_support must be within (0, 1]")
        self.min_support = min_support

    def support(self, sentence: str, cited_texts: Sequence[str]) -> float:
        """Share of `sentence`'s content words found in `cited_texts` (1.0 if it has none)."""
        bare = keep_supplied_citations(sentence, set()).text
        terms = set(content_terms(bare)) - _ANSWER_WORDS
        if not terms:
            return 1.0
        available: set[str] = set()
        for text in cited_texts:
            available.update(content_terms(text))
        return len(terms & available) / len(terms)

    def supported(self, claim: Claim, by_number: Mapping[int, SourcePassage]) -> bool:
        """Cited, with enough of its words and all of its numbers in its sources."""
        if not claim.cited:
            return False
        cited = [by_number[n].text for n in claim.cited if n in by_number]
        return self.support(claim.text, cited) >= self.min_support and not unsupported_numbers(
            claim.text, cited
        )

    async def check(self, answer: str, sources: Sequence[SourcePassage]) -> Grounding:
        """Each sentence is supported when its cited sources hold enough of its words
        and every number it states (see the module docstring)."""
        by_number = {s.number: s for s in sources}
        claims = answer_claims(answer)
        unsupported = [claim.text for claim in claims if not self.supported(claim, by_number)]
        checked = len(claims)
        score = (checked - len(unsupported)) / checked if checked else DECLINE_GROUNDING_SCORE
        return Grounding(score, unsupported, self.name, checked)
