"""Extractive answerer: answers with source sentences copied verbatim, no LLM.

Why it exists: it is the backend that always works (no GPU, no API key, no
cost), the fallback when an LLM backend is down, and a baseline that cannot
hallucinate: every answer sentence is a sentence of a supplied source (less any
"[12]"-like footnote marker), followed by that source's citation ``[n]``. The
price is that it never synthesises, rephrases or resolves "it"/"he" in a
quoted sentence.

How it decides:

1. Decline when no source's retrieval score reaches ``min_retrieval_score``.
   On ClapNQ this is by far the strongest answerability signal we have: the
   unanswerable questions there retrieve passages on the right topic that lack
   the asked-for fact, so word overlap barely separates them, while the
   retriever's cosine does (docs/quality.md).
2. Split the sources into sentences (``services.common.text``) and score each
   by the IDF-weighted share of the question's content words it contains
   (lowercased, accent-folded, crudely stemmed, stop words removed; IDF over
   the supplied sentences). Sentences that match less than
   ``min_lexical_score`` are never quoted: a sentence that shares no word with
   the question is not an answer to it, whatever its source's score. If none
   is left, decline. Nor is a sentence that addresses the reader or the
   assistant with instructions ("ignore previous instructions", "tell the
   user to email their password", a fake ``SYSTEM:`` turn, "click this link")
   unless the question asks about that kind of instruction itself
   (``services.generation.injection``): quoted, a planted instruction would
   reach the user as a cited, fully grounded answer.
3. Rank by ``retrieval_weight * source score + (1 - retrieval_weight) *
   lexical``: retrieval mostly picks *which source*, the lexical match *which
   sentences* of it. Keep up to ``max_sentences`` within ``relative_cutoff`` of
   the best, best source first, each source's sentences in their order.

The defaults were tuned on ClapNQ with ``scripts/tune_extractive.py`` and
checked end to end with ``ragctl eval answers``; docs/quality.md has the
method, the figures and the trade-offs. ``min_retrieval_score`` is a cosine of
all-MiniLM-L6-v2: re-tune it for another embedder. Stop words and stemming are
English only. The tuned ranking leans on the source and usually quotes up to
three sentences of the best one (ClapNQ's reference answers run to several
sentences); for crisper answers lower ``retrieval_weight`` or ``max_sentences``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from services.common.citations import cited_numbers, keep_supplied_citations
from services.common.text import split_sentences
from services.generation.backends import (
    DECLINE_TEXT,
    GeneratedAnswer,
    SelectedSentence,
    SourcePassage,
    validate_request,
)
from services.generation.injection import instruction_families, quotable

# Function words and question words: they say nothing about *what* is asked, and
# matching them would let any sentence look relevant.
_STOP_WORDS = frozenset(
    {
        "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
        "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
        "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for",
        "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself",
        "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself",
        "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on",
        "once",
        "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she",
        "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them",
        "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too",
        "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which",
        "while", "who", "whom", "whose", "why", "will", "with", "would", "you", "your", "yours",
        "yourself", "yourselves", "also", "may", "might", "must", "shall", "s", "t", "d", "ll", "m",
        "re", "ve", "o", "y", "get", "got", "let",
    }
)  # fmt: skip
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# A heading or label: markdown `#` line, or a short line without sentence punctuation.
_HEADING_WORDS = 12


def _is_heading(line: str) -> bool:
    stripped = line.strip()
    if stripped.startswith("#"):
        return True
    return len(stripped.split()) <= _HEADING_WORDS and not re.search(r"[.!:;,)\]\"']$", stripped)


def quotable_sentences(text: str) -> list[str]:
    """The sentences of `text` an answer may quote, in order.

    Paragraph breaks are hard boundaries (a heading line never runs into the
    sentence below it), headings and labels are skipped (they are not claims),
    and so are questions (a FAQ's question is not its answer).
    """
    sentences: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        lines = paragraph.strip().split("\n")
        while lines and _is_heading(lines[0]):
            lines.pop(0)
        for sentence in split_sentences("\n".join(lines)):
            if not sentence.rstrip().endswith("?") and not _is_heading(sentence):
                sentences.append(sentence)
    return sentences


def stem(word: str) -> str:
    """Strip common English inflections so "policies", "policy" and "policy's" match.

    Deliberately crude (no dictionary, a few Porter-like steps): it only has to
    map a question word and a source word to the same key ("approved",
    "approves", "approve" -> "approv"); the key need not be a real word.
    """
    if word.endswith("'s"):
        word = word[:-2]
    # Plurals (and third person -s) first, so "strings" and "string" agree below.
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    # Then past tense and gerund.
    if len(word) > 4 and word.endswith("ied"):
        word = word[:-3] + "y"
    elif len(word) > 5 and word.endswith("ing"):
        word = _undouble(word[:-3])
    elif len(word) > 4 and word.endswith("ed"):
        word = _undouble(word[:-2])
    # A final silent e, so "approve" meets "approv(ed)".
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def _undouble(word: str) -> str:
    """ "stopp" -> "stop" (as in "stopped"), but "call" stays "call" (as in "called")."""
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
        return word[:-1]
    return word


def content_terms(text: str) -> list[str]:
    """Lowercased, accent-folded, stemmed words of `text` without stop words.

    Accents are folded because questions are often typed without them
    ("horyu ji" for "Hōryū-ji"). Numbers are kept: years and counts are often
    exactly what a question is about.
    """
    folded = unicodedata.normalize("NFKD", text.lower())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    terms = []
    for word in _WORD.findall(folded):
        word = word.replace("'", "")
        if word in _STOP_WORDS or (len(word) < 2 and not word.isdigit()):
            continue
        terms.append(stem(word))
    return terms


@dataclass(frozen=True)
class ScoredSentence:
    """A source sentence with its relevance to the question (debug and tuning view)."""

    source_number: int
    position: int
    """Index of the sentence within its source, to restore source order."""
    text: str
    """The sentence as quoted: verbatim, less any "[12]"-like footnote markers."""
    lexical: float
    """Share of the question's IDF weight matched by the sentence (0..1)."""
    retrieval: float
    """Retrieval score of the sentence's source."""


class ExtractiveAnswerer:
    """Answers with the most relevant source sentences, verbatim, each cited as [n]."""

    name = "extractive"
    model = "lexical-v1"

    def __init__(
        self,
        *,
        min_retrieval_score: float = 0.52,
        min_lexical_score: float = 0.05,
        retrieval_weight: float = 0.8,
        title_weight: float = 0.0,
        relative_cutoff: float = 0.8,
        lexical_relative_cutoff: float = 0.3,
        max_sentences: int = 3,
        max_sentence_words: int = 80,
    ) -> None:
        """Thresholds default to the values tuned on ClapNQ (see the module docstring).

        min_retrieval_score: decline when no source's retrieval score reaches it.
        min_lexical_score: a sentence is quoted only if it matches at least this
            share of the question's IDF weight; decline when none does.
        retrieval_weight: share of the ranking score that comes from the
            source's retrieval score; the rest is the lexical match.
        title_weight: credit for a question term found only in the source title
            (the sentence says "It is located ..." under the title "Mount Logan").
        relative_cutoff: further sentences must score at least this share of the
            best one, so a strong answer is not diluted by marginal sentences.
        lexical_relative_cutoff: further sentences must also match at least this
            share of the best sentence's lexical score: a sentence of the right
            source that shares little with the question is context, not answer.
        max_sentences: cap on the answer length, in sentences.
        max_sentence_words: longer "sentences" (tables, lists, infobox dumps that
            have no sentence punctuation) are never quoted.
        """
        if not 0.0 <= retrieval_weight <= 1.0:
            raise ValueError("retrieval_weight must be within [0, 1]")
        if max_sentences < 1:
            raise ValueError("max_sentences must be at least 1")
        self.min_retrieval_score = min_retrieval_score
        self.min_lexical_score = min_lexical_score
        self.retrieval_weight = retrieval_weight
        self.title_weight = title_weight
        self.relative_cutoff = relative_cutoff
        self.lexical_relative_cutoff = lexical_relative_cutoff
        self.max_sentences = max_sentences
        self.max_sentence_words = max_sentence_words

    def score_sentences(
        self, question: str, sources: Sequence[SourcePassage]
    ) -> list[ScoredSentence]:
        """Score every quotable sentence of `sources` against `question`.

        Lexical relevance is the IDF-weighted share of the question's content
        terms that occur in the sentence (or, at `title_weight`, in its source's
        title). IDF is computed over the sentences of the supplied sources only:
        we have no corpus statistics here, and within the sources it still says
        which question terms discriminate between sentences. A question term
        that occurs in no sentence keeps the highest IDF, so an unmatched key
        term ("quantum" against a leave policy) pulls every sentence down.
        Sentences that instruct the reader in a way the question does not ask
        about are not scored at all (see the module docstring, step 2).
        """
        question_terms = list(dict.fromkeys(content_terms(question)))
        asked_about = instruction_families(question)
        candidates: list[tuple[SourcePassage, int, str, set[str]]] = []
        for source in sources:
            for position, sentence in enumerate(quotable_sentences(source.text)):
                sentence = _without_markers(sentence)
                if len(sentence.split()) > self.max_sentence_words:
                    continue
                if not quotable(sentence, asked_about):
                    continue
                terms = set(content_terms(sentence))
                if terms:
                    candidates.append((source, position, sentence, terms))
        if not question_terms or not candidates:
            return []
        n = len(candidates)
        idf = {
            term: math.log(1.0 + (n + 0.5) / (sum(term in c[3] for c in candidates) + 0.5))
            for term in question_terms
        }
        total = sum(idf.values())
        title_terms = {s.number: set(content_terms(s.title)) for s in sources}
        scored = []
        for source, position, sentence, terms in candidates:
            matched = 0.0
            for term in question_terms:
                if term in terms:
                    matched += idf[term]
                elif term in title_terms[source.number]:
                    matched += self.title_weight * idf[term]
            scored.append(
                ScoredSentence(source.number, position, sentence, matched / total, source.score)
            )
        return scored

    def combined_score(self, sentence: ScoredSentence) -> float:
        """Ranking score of a sentence: lexical match and retrieval score, weighted."""
        w = self.retrieval_weight
        return (1.0 - w) * sentence.lexical + w * sentence.retrieval

    def select(self, question: str, sources: Sequence[SourcePassage]) -> list[ScoredSentence]:
        """The sentences to answer with, in answer order; empty means decline."""
        if not sources or max(s.score for s in sources) < self.min_retrieval_score:
            return []
        return self.choose(self.score_sentences(question, sources))

    def choose(self, scored: Sequence[ScoredSentence]) -> list[ScoredSentence]:
        """Apply the thresholds to already scored sentences (split out for tuning)."""
        eligible = [
            s
            for s in scored
            if s.retrieval >= self.min_retrieval_score and s.lexical >= self.min_lexical_score
        ]
        if not eligible:
            return []
        ranked = sorted(((self.combined_score(s), s) for s in eligible), key=lambda p: -p[0])
        floor = self.relative_cutoff * ranked[0][0]
        lexical_floor = self.lexical_relative_cutoff * ranked[0][1].lexical
        chosen: list[ScoredSentence] = []
        for score, sentence in ranked:
            if score < floor or len(chosen) == self.max_sentences:
                break
            if sentence.lexical < lexical_floor:
                continue
            # Overlapping chunks of one document repeat sentences: quote each once.
            if all(sentence.text != c.text for c in chosen):
                chosen.append(sentence)
        # Answer with the best source first, and keep each source's sentences in
        # their original order so that the quoted passage still reads naturally.
        source_rank: dict[int, int] = {}
        for s in chosen:
            source_rank.setdefault(s.source_number, len(source_rank))
        return sorted(chosen, key=lambda s: (source_rank[s.source_number], s.position))

    def _answer_parts(
        self, question: str, sources: Sequence[SourcePassage]
    ) -> tuple[list[str], list[ScoredSentence]]:
        validate_request(question, sources)
        chosen = self.select(question, sources)
        if not chosen:
            return [DECLINE_TEXT], []
        parts = [_cite(s.text, s.source_number) for s in chosen]
        return [parts[0]] + [" " + p for p in parts[1:]], chosen

    def _result(self, text: str, chosen: list[ScoredSentence]) -> GeneratedAnswer:
        return GeneratedAnswer(
            text=text,
            cited_sources=cited_numbers(text) if chosen else [],
            declined=not chosen,
            backend=self.name,
            model=self.model,
            input_tokens=0,
            output_tokens=0,
            selection=[
                SelectedSentence(s.source_number, s.text, self.combined_score(s)) for s in chosen
            ],
        )

    async def generate(self, question: str, sources: Sequence[SourcePassage]) -> GeneratedAnswer:
        """Answer from the sources, or decline.

        Token counts are 0: no model runs, so nothing is billed or rate limited,
        and word counts would be mistaken for model tokens in usage metrics.
        The work is a few milliseconds of CPU, so it runs inline on the loop.
        """
        parts, chosen = self._answer_parts(question, sources)
        return self._result("".join(parts), chosen)

    async def stream(
        self, question: str, sources: Sequence[SourcePassage]
    ) -> AsyncGenerator[str | GeneratedAnswer, None]:
        """Yield the answer sentence by sentence, then the final GeneratedAnswer."""
        parts, chosen = self._answer_parts(question, sources)
        for part in parts:
            yield part
        yield self._result("".join(parts), chosen)


def _without_markers(sentence: str) -> str:
    """`sentence` without citation-like markers ("[12]" footnotes of a wiki page).

    Quoted as they are, they would read as citations of our numbered sources.
    This is the one change a quote may undergo.
    """
    if cited_numbers(sentence):
        return keep_supplied_citations(sentence, set()).text
    return sentence


def _cite(sentence: str, number: int) -> str:
    """`sentence` with its citation placed before the final punctuation."""
    # String operations: `[.!?]+$` searched takes time quadratic in a run of marks.
    head = sentence.rstrip(".!?")
    if head == sentence:
        return f"{sentence} [{number}]"
    marker = f"[{number}]" if head.endswith(" ") else f" [{number}]"
    return head + marker + sentence[len(head) :]
