"""Split a parsed document into chunks that the embedder can take whole.

An embedder truncates or refuses anything longer than its input window, so a
chunk over the limit would be indexed by its first part only, or not at all.
The token limit is therefore a hard invariant, checked on the final chunk text
with the embedder's own tokenizer, or, for an embedder whose tokenizer is not
public, with an upper bound of its count (`Utf8BoundCounter`). Within that limit chunks
follow the document's structure (section, paragraph, sentence) because a chunk
that stops mid-thought retrieves worse and reads worse as a citation.

Speed matters as much as quality: the whole document is tokenized once and all
packing decisions are made by counting token offsets between character
positions, instead of re-tokenizing every candidate piece.
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol, runtime_checkable

from tokenizers import Tokenizer

from services.common.errors import InvalidInputError
from services.common.text import sentence_spans
from services.common.tokens import utf8_token_bound, utf8_token_offsets
from services.ingestion.parsers import ParsedDocument

DEFAULT_TARGET_CAP = 512
DEFAULT_OVERLAP_TOKENS = 32
# Texts longer than this are tokenized as a batch of whitespace-cut blocks.
_BLOCK_CHARS = 16_384
_WHITESPACE = re.compile(r"[ \n\t]")
# When a chunk must end, it may end early at a stronger boundary (a paragraph
# rather than a sentence) as long as it keeps at least this share of the target.
_MIN_FILL = 0.5


class TokenCounter(Protocol):
    """Counts tokens exactly as the embedder will see them, minus special tokens."""

    def count(self, text: str) -> int:
        """Number of tokens in `text`, without special tokens such as [CLS]/[SEP]."""
        ...


@runtime_checkable
class OffsetTokenCounter(TokenCounter, Protocol):
    """A counter that can also give token offsets, enabling one-pass chunking.

    Optional: chunk_document works with any TokenCounter, but counting offsets
    of one tokenization is orders of magnitude faster than counting pieces.
    """

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of each token of `text`, in order."""
        ...

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """`count` for several texts at once (batched in native code)."""
        ...


class HFTokenCounter:
    """TokenCounter backed by a Hugging Face `tokenizers` tokenizer.

    The embedding service ships its tokenizer JSON so ingestion counts with the
    very tokenizer that will truncate; truncation and padding are switched off
    once here (the JSON often enables both, which would cap or inflate counts),
    and the object is never mutated afterwards so concurrent use is safe.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    @classmethod
    def from_json(cls, data: bytes) -> HFTokenCounter:
        """Build from the bytes of a `tokenizer.json` file."""
        try:
            tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # tokenizers raises plain Exception on bad JSON
            raise InvalidInputError(f"tokenizer JSON is not a valid tokenizer ({exc})") from exc
        return cls(tokenizer)

    def count(self, text: str) -> int:
        """Tokens in `text` without special tokens."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Token counts for many texts in one native, parallel call."""
        if not texts:
            return []
        # The fast variant skips computing offsets, which counting does not need.
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character offsets of each token of `text`.

        Long texts are cut at whitespace into blocks encoded in one parallel
        batch: a single huge encode is single-threaded and slower per character.
        Cutting at whitespace does not change the tokens of word-based
        tokenizers; for others the chunker's final re-count covers the seams.
        """
        if len(text) <= _BLOCK_CHARS:
            return list(self._tokenizer.encode(text, add_special_tokens=False).offsets)
        cuts = [0]
        while len(text) - cuts[-1] > _BLOCK_CHARS:
            limit = cuts[-1] + _BLOCK_CHARS
            space = max(text.rfind(c, limit - _BLOCK_CHARS // 2, limit) for c in " \n\t")
            if space == -1:  # a very long "word": cut after it, never inside it
                after = _WHITESPACE.search(text, limit)
                if after is None:
                    break
                space = after.start()
            cuts.append(space + 1)
        cuts.append(len(text))
        blocks = [text[a:b] for a, b in pairwise(cuts)]
        encodings = self._tokenizer.encode_batch(blocks, add_special_tokens=False)
        offsets: list[tuple[int, int]] = []
        for base, encoding in zip(cuts, encodings, strict=False):
            offsets.extend((base + start, base + end) for start, end in encoding.offsets)
        return offsets


class Utf8BoundCounter:
    """TokenCounter for an embedder that publishes no tokenizer (Vertex AI): an
    upper bound of its count, never below it (see `services.common.tokens`).

    Chunks measured this way are never refused for length; they are shorter
    in real tokens than the budget says, the price of not knowing the tokenizer.
    """

    def count(self, text: str) -> int:
        """The bound for `text`, without special tokens."""
        return utf8_token_bound(text)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """`count` of each text."""
        return [utf8_token_bound(text) for text in texts]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """One span per bound token: a character's span once per token it weighs."""
        return utf8_token_offsets(text)


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk before embedding; `text == document.text[char_start:char_end]`."""

    ordinal: int
    text: str
    char_start: int
    char_end: int
    section: str
    page: int
    token_count: int


@dataclass(frozen=True)
class ChunkingConfig:
    """Token budgets for chunking.

    `max_tokens` is the embedder's input window minus its special tokens (for
    all-MiniLM-L6-v2: 256 - 2 = 254) and is never exceeded. `target_tokens` is
    what packing aims for (0 means min(512, max_tokens)); a smaller target gives
    more focused chunks. `overlap_tokens` of context are repeated from the end
    of one chunk at the start of the next so a fact split across the boundary
    is still retrievable from one chunk.
    """

    max_tokens: int
    target_tokens: int = 0
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.target_tokens == 0:
            object.__setattr__(self, "target_tokens", min(DEFAULT_TARGET_CAP, self.max_tokens))
        if not 0 < self.target_tokens <= self.max_tokens:
            raise InvalidInputError(
                f"target_tokens must be between 1 and max_tokens ({self.max_tokens}), "
                f"got {self.target_tokens}"
            )
        if not 0 <= self.overlap_tokens < self.target_tokens:
            raise InvalidInputError(
                f"overlap_tokens must be at least 0 and less than target_tokens "
                f"({self.target_tokens}), got {self.overlap_tokens}"
            )


def chunk_document(
    doc: ParsedDocument, counter: TokenCounter, config: ChunkingConfig
) -> list[ChunkDraft]:
    """Split `doc` into ordered chunks of at most `config.max_tokens` tokens.

    Splits hierarchically (sections, paragraphs, sentences, lines, words, and
    token/character pieces for a single overlong "word"), packs the pieces
    greedily up to the target, never lets a chunk cross a heading or a page
    (so that a citation names the page its text is on), and overlaps
    consecutive chunks of a section by whole sentences (or words) from the end
    of the previous chunk.
    """
    chunker = _Chunker(doc.text, counter, config)
    spans: list[tuple[int, int, str]] = []
    for start, end, heading in _section_ranges(doc):
        for page_start, page_end in _page_ranges(start, end, doc.pages):
            spans.extend((s, e, heading) for s, e in chunker.pack(page_start, page_end))
    # A page can hold nothing the tokenizer keeps (a lone zero-width space):
    # such a span would embed as an empty text, so it is no chunk.
    verified = [span for span in chunker.verify(spans) if span[3]]
    drafts: list[ChunkDraft] = []
    for ordinal, (start, end, heading, tokens) in enumerate(verified):
        page = max(1, bisect_right(doc.pages, start)) if doc.pages else 0
        drafts.append(
            ChunkDraft(
                ordinal=ordinal,
                text=doc.text[start:end],
                char_start=start,
                char_end=end,
                section=heading,
                page=page,
                token_count=tokens,
            )
        )
    return drafts


# --------------------------------------------------------------------------- internals

# Boundary strengths: the strength of the break *before* a unit. Packing prefers
# to end a chunk before the strongest break it can reach.
_SECTION, _PARAGRAPH, _SENTENCE, _LINE, _WORD, _PIECE = 5, 4, 3, 2, 1, 0
_LEVELS = (_PARAGRAPH, _SENTENCE, _LINE, _WORD, _PIECE)
# Levels whose pieces are always split further (down to lines); below that,
# words and token pieces are used only for a line that alone exceeds the target.
_ALWAYS_DESCEND = frozenset({_PARAGRAPH, _SENTENCE})

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_NON_SPACE_RUN = re.compile(r"\S+")
_LINE_TEXT = re.compile(r"[^\n]+")
_WORD_START = re.compile(r"(?<=\s)\S")

_Unit = tuple[int, int, int]  # (start, end, strength of the break before it)


def _page_ranges(start: int, end: int, pages: list[int]) -> list[tuple[int, int]]:
    """`start`..`end` cut at every page start inside it, whitespace-only parts
    left out: a chunk stays on one page, so its citation names the right one."""
    cuts = [start, *(p for p in pages if start < p < end), end]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _section_ranges(doc: ParsedDocument) -> list[tuple[int, int, str]]:
    """(start, end, heading) per section, dropping sections that are only a heading.

    A chunk holding nothing but "## Contact" would only waste a retrieval slot;
    if a document is nothing but headings, they are kept so it still has chunks.
    """
    text = doc.text
    length = len(text)
    offsets = sorted({(max(0, o), h) for o, h in doc.sections if o < length})
    ranges: list[tuple[int, int, str]] = []
    boundaries = [o for o, _ in offsets]
    if not boundaries or boundaries[0] > 0:
        ranges.append((0, boundaries[0] if boundaries else length, ""))
    for index, (offset, heading) in enumerate(offsets):
        end = boundaries[index + 1] if index + 1 < len(boundaries) else length
        if end > offset:
            ranges.append((offset, end, heading))
    ranges = [r for r in ranges if text[r[0] : r[1]].strip()]

    def has_body(start: int, end: int, heading: str) -> bool:
        if not heading:
            return True
        newline = text.find("\n", start, end)
        return newline != -1 and bool(text[newline:end].strip())

    with_body = [r for r in ranges if has_body(*r)]
    return with_body or ranges


class _Chunker:
    """Packing state for one document: its text, token offsets and budgets."""

    def __init__(self, text: str, counter: TokenCounter, config: ChunkingConfig) -> None:
        self.text = text
        self.counter = counter
        self.max_tokens = config.max_tokens
        self.target = config.target_tokens
        self.overlap = config.overlap_tokens
        self._starts: list[int] | None = None
        self._ends: list[int] = []
        self._memo: dict[tuple[int, int], int] = {}
        self._offset_counter = counter if isinstance(counter, OffsetTokenCounter) else None
        if self._offset_counter is not None:
            offsets = self._offset_counter.token_offsets(text)
            starts, ends = zip(*offsets, strict=True) if offsets else ((), ())
            self._starts, self._ends = list(starts), list(ends)

    # ------------------------------------------------------------------ counting

    def cost(self, start: int, end: int) -> int:
        """Estimated tokens of text[start:end].

        With offsets: the tokens lying wholly inside the span. That is exact at
        whitespace/punctuation boundaries for word-level tokenizers and close
        elsewhere; `verify` re-counts the final text to catch the difference.
        """
        if self._starts is not None:
            return max(0, bisect_right(self._ends, end) - bisect_left(self._starts, start))
        key = (start, end)
        cached = self._memo.get(key)
        if cached is None:
            cached = self.counter.count(self.text[start:end])
            self._memo[key] = cached
        return cached

    def count_exact(self, spans: Sequence[tuple[int, int]]) -> list[int]:
        texts = [self.text[s:e] for s, e in spans]
        if self._offset_counter is not None:
            return self._offset_counter.count_many(texts)
        return [self.counter.count(t) for t in texts]

    # ------------------------------------------------------------------ splitting

    def _trim(self, start: int, end: int) -> tuple[int, int] | None:
        text = self.text
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        return (start, end) if end > start else None

    def _pieces(self, start: int, end: int, level: int) -> list[tuple[int, int]]:
        """Trimmed sub-spans of [start, end) at one level of the hierarchy."""
        text = self.text
        if level == _PARAGRAPH:
            spans: list[tuple[int, int]] = []
            position = start
            for match in _PARAGRAPH_BREAK.finditer(text, start, end):
                spans.append((position, match.start()))
                position = match.end()
            spans.append((position, end))
            return [t for s, e in spans if (t := self._trim(s, e))]
        if level == _SENTENCE:
            return [(start + s, start + e) for s, e in sentence_spans(text[start:end])]
        if level == _LINE:
            return [
                t for m in _LINE_TEXT.finditer(text, start, end) if (t := self._trim(*m.span()))
            ]
        if level == _WORD:
            return [m.span() for m in _NON_SPACE_RUN.finditer(text, start, end)]
        return self._token_pieces(start, end)

    def _token_pieces(self, start: int, end: int) -> list[tuple[int, int]]:
        """Cut a span with no usable boundaries into pieces of at most `target` tokens.

        Cuts fall on token starts, so a piece never splits a token's characters;
        without offsets a binary search on the counter finds each cut.
        """
        pieces: list[tuple[int, int]] = []
        if self._starts is not None:
            first = bisect_left(self._starts, start)
            last = bisect_left(self._starts, end)
            cuts = [start]
            cuts.extend(self._starts[i] for i in range(first + self.target, last, self.target))
            cuts.append(end)
            for s, e in pairwise(cuts):
                if (t := self._trim(s, e)) is not None:
                    pieces.append(t)
            return pieces
        position = start
        while position < end:
            low, high = position + 1, end
            while low < high:  # largest cut with cost <= target (at least one char)
                middle = (low + high + 1) // 2
                if self.cost(position, middle) <= self.target:
                    low = middle
                else:
                    high = middle - 1
            if (t := self._trim(position, low)) is not None:
                pieces.append(t)
            position = low
        return pieces

    def _units(self, start: int, end: int, level_index: int, first: int, out: list[_Unit]) -> None:
        """Append the units of [start, end): every sentence and line, finer only if too big.

        Paragraphs are always cut into sentences and lines so packing can fill a
        chunk past a paragraph that does not fit whole; the strength recorded
        with each unit still lets packing prefer ending at a paragraph.
        """
        level = _LEVELS[level_index]
        for index, (s, e) in enumerate(self._pieces(start, end, level)):
            strength = first if index == 0 else level
            if level != _PIECE and (level in _ALWAYS_DESCEND or self.cost(s, e) > self.target):
                self._units(s, e, level_index + 1, strength, out)
            else:
                out.append((s, e, strength))

    # ------------------------------------------------------------------ packing

    def pack(self, start: int, end: int) -> list[tuple[int, int]]:
        """Greedy packing of one section's units into chunk spans (with overlap)."""
        units: list[_Unit] = []
        self._units(start, end, 0, _SECTION, units)
        chunks: list[tuple[int, int]] = []
        count = len(units)
        index = 0
        chunk_start = units[0][0] if units else 0
        floor = _MIN_FILL * self.target
        while index < count:
            if chunk_start != units[index][0] and (
                self.cost(chunk_start, units[index][1]) > self.target
            ):
                chunk_start = units[index][0]  # the overlap would crowd out new text
            stop = index + 1
            while stop < count and self.cost(chunk_start, units[stop][1]) <= self.target:
                stop += 1
            cut = stop
            if stop < count:  # end early before a stronger boundary if still full enough
                best = units[stop][2]
                for candidate in range(stop - 1, index, -1):
                    if self.cost(chunk_start, units[candidate - 1][1]) < floor:
                        break
                    if units[candidate][2] > best:
                        cut, best = candidate, units[candidate][2]
            chunk_end = units[cut - 1][1]
            chunks.append((chunk_start, chunk_end))
            if cut < count:
                overlap = self._overlap_start(chunk_start, chunk_end, units, index, cut)
                chunk_start = overlap if overlap is not None else units[cut][0]
            index = cut
        return chunks

    def _overlap_start(
        self, chunk_start: int, chunk_end: int, units: list[_Unit], first: int, stop: int
    ) -> int | None:
        """Where the next chunk should start so it repeats about `overlap` tokens.

        Takes the longest run of whole trailing sentences (or lines) that fits the
        overlap budget; if even the last sentence is too long, its trailing words
        instead, provided they reach half the budget (a few stray words add
        noise, not context). The repeated part plus the next unit must also fit
        the target, so overlap never pushes a chunk over its budget.
        """
        if self.overlap == 0:
            return None
        next_end = units[stop][1]

        def fits(position: int) -> bool:
            return (
                self.cost(position, chunk_end) <= self.overlap
                and self.cost(position, next_end) <= self.target
            )

        best: int | None = None
        index = stop - 1
        while index >= first:
            unit_start, _, strength = units[index]
            if unit_start <= chunk_start or not fits(unit_start):
                break
            if strength >= _LINE:
                best = unit_start
            index -= 1
        if best is not None:
            return best
        # No whole sentence fits: take trailing words, from the unit that did not
        # fit onwards (word starts inside later units are covered too).
        low = max(chunk_start, units[index][0] if index >= first else chunk_start) + 1
        word: int | None = None
        for match in reversed(list(_WORD_START.finditer(self.text, low, chunk_end))):
            if not fits(match.start()):
                break
            word = match.start()
        if word is not None and 2 * self.cost(word, chunk_end) >= self.overlap:
            return word
        return None

    # ------------------------------------------------------------------ verification

    def verify(self, spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str, int]]:
        """Re-count every chunk with the real tokenizer and split any that is too long.

        Token counts are not additive across joins and offsets only estimate a
        substring's tokenization, so the final text is what gets checked.
        """
        counts = self.count_exact([(s, e) for s, e, _ in spans])
        result: list[tuple[int, int, str, int]] = []
        for (start, end, heading), tokens in zip(spans, counts, strict=True):
            if tokens == 0:
                continue  # only characters the tokenizer drops: nothing to embed
            if tokens <= self.max_tokens:
                result.append((start, end, heading, tokens))
            else:
                result.extend((s, e, heading, n) for s, e, n in self._force_split(start, end))
        return result

    def _force_split(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """Halve an over-limit span at the word (or token) boundary nearest its middle."""
        middle = (start + end) // 2
        candidates = [m.start() for m in _WORD_START.finditer(self.text, start + 1, end)]
        if not candidates and self._starts is not None:
            first, last = bisect_right(self._starts, start), bisect_left(self._starts, end)
            candidates = self._starts[first:last]
        if not candidates:
            candidates = [middle] if end - start > 1 else []
        if not candidates:
            raise InvalidInputError(
                f"cannot fit text {self.text[start:end]!r} into max_tokens={self.max_tokens}"
            )
        cut = min(candidates, key=lambda c: abs(c - middle))
        pieces = [t for t in (self._trim(start, cut), self._trim(cut, end)) if t is not None]
        out: list[tuple[int, int, int]] = []
        for (s, e), tokens in zip(pieces, self.count_exact(pieces), strict=True):
            if tokens <= self.max_tokens:
                out.append((s, e, tokens))
            else:
                out.extend(self._force_split(s, e))
        return out
