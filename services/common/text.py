"""Sentence segmentation shared by the chunker and the extractive answerer.

A small rule-based splitter is enough for the languages we index and avoids a
model download; it keeps character offsets so callers can map sentences back to
the source text.
"""

import re
from collections.abc import Iterator

# A sentence ends at . ! ? (optionally followed by a closing quote/bracket, typographic
# ones included) followed by whitespace and an uppercase letter, digit, quote or bracket.
_SENTENCE_END = re.compile(r"""(?:(?<=[.!?])|(?<=[.!?]["'”’»)\]]))\s+(?=["'“‘«(\[]?[A-Z0-9À-Ý])""")
# Abbreviations that end with a period but do not end a sentence.
_ABBREVIATIONS = frozenset(
    {
        "e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "fig.",
        "no.", "al.", "approx.", "inc.", "ltd.", "jr.", "sr.", "u.s.", "cf.", "ca.", "vol.",
    }
)  # fmt: skip


def sentence_spans(text: str) -> Iterator[tuple[int, int]]:
    """Yield (start, end) character spans of the sentences of `text`, whitespace trimmed."""
    start = 0
    for match in _SENTENCE_END.finditer(text):
        candidate = text[start : match.start()]
        last_word = candidate.rsplit(None, 1)[-1].lower() if candidate.strip() else ""
        if last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]\.", last_word):
            continue
        yield from _trimmed(text, start, match.start())
        start = match.end()
    yield from _trimmed(text, start, len(text))


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, in order."""
    return [text[s:e] for s, e in sentence_spans(text)]
