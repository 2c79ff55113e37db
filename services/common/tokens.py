"""A token count never below the model's, for embedders whose tokenizer is not public.

Vertex AI's embedding models do not publish their tokenizer, so the chunker
cannot count their tokens exactly; it can count an upper bound. They tokenize
with SentencePiece with byte fallback (the Gemini family's tokenizer): the text
is normalised (NFKC, or not at all), then cut into pieces of the vocabulary,
and a character the vocabulary lacks becomes one token per UTF-8 byte. Every
token therefore covers at least one byte of the normalised text, so

    tokens <= max(UTF-8 bytes of the text, UTF-8 bytes of its NFKC form)

plus what the model adds itself (a start token, SentencePiece's dummy "▁"
prefix), which the embedder announces as its special tokens. Both forms are
measured because NFKC can lengthen a text ("ﷺ" becomes 18 characters) as well as
shorten it (a letter and its combining accent become one character), and which
one the hidden tokenizer applies is not documented. The bound is loose, about
four times the real count for English prose: chunk budgets in these units
buy certainty, not precision (docs/embedding.md).
"""

import unicodedata


def utf8_token_bound(text: str) -> int:
    """Tokens `text` cannot exceed under a byte-fallback SentencePiece tokenizer
    (special tokens not included)."""
    raw = len(text.encode("utf-8"))
    if text.isascii():  # NFKC leaves ASCII unchanged
        return raw
    return max(raw, len(unicodedata.normalize("NFKC", text).encode("utf-8")))


def utf8_token_offsets(text: str) -> list[tuple[int, int]]:
    """One (start, end) character span per bound token: a character weighs its
    `utf8_token_bound`. Per character, so joins can differ from the whole
    text's bound by a few tokens (NFKC composes across characters); callers
    re-count final texts with `utf8_token_bound`."""
    if text.isascii():
        return [(i, i + 1) for i in range(len(text))]
    offsets: list[tuple[int, int]] = []
    for index, char in enumerate(text):
        span = (index, index + 1)
        offsets.extend([span] * utf8_token_bound(char))
    return offsets
