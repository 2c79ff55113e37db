"""Media type detection and parsing of real txt, markdown, HTML and PDF content."""

from pathlib import Path

import pytest
from fpdf import FPDF

from services.common.errors import InvalidInputError
from services.ingestion import parsers
from services.ingestion.parsers import (
    APPLICATION_PDF,
    MAX_TITLE_CHARS,
    SUPPORTED_EXTENSIONS,
    TEXT_HTML,
    TEXT_MARKDOWN,
    TEXT_PLAIN,
    ParsedDocument,
    _atx_heading,
    detect_media_type,
    parse_document,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "corpus"

MARKDOWN = """\
# Acme Cloud Travel Guide

Acme Cloud employees travel to meet customers and to work with their teams.
This guide explains how to plan a trip.

## Booking

Book flights through the travel portal at least 14 days before departure.
Trains are preferred for trips shorter than four hours.

```bash
# this comment is code, not a heading
book-trip --from BER --to MUC
```

## Visas ##

Employees who need a visa must apply at least 8 weeks before travelling.

Safety on the road
------------------

Register every trip in the portal so the security team can reach you.
"""

HTML = """\
<!DOCTYPE html>
<html>
<head>
  <title>Acme  Cloud Status Page Guide</title>
  <style>.banner { color: red; }</style>
  <script>window.analytics = "tracking code";</script>
</head>
<body>
  <nav><a href="/">Home</a> <a href="/docs">Docs navigation</a></nav>
  <h1>Status page guide</h1>
  <p>The status page shows the health of every <b>Acme Cloud</b> service.
     It is updated by the incident commander.</p>
  <p>Customers can subscribe to updates by email.</p>
  <h2>Components</h2>
  <ul><li>Object Storage</li><li>Compute</li></ul>
  <table><tr><th>Region</th><th>Status</th></tr><tr><td>Frankfurt</td><td>Operational</td></tr></table>
  <!-- an HTML comment that must not leak -->
  <h2>History</h2>
  <p>Past incidents stay visible for&nbsp;90 days.</p>
  <footer>Copyright Acme Cloud footer text</footer>
</body>
</html>
"""

PAGE_TEXTS = [
    "Quarterly report, page one. Revenue grew by twelve percent compared with last year.",
    "Page two covers costs. Hosting costs fell because of the new storage tier.",
    "Page three lists risks. The largest risk is the dependency on a single supplier.",
]


def make_pdf(pages: list[str], title: str = "") -> bytes:
    """A real multi-page PDF with one paragraph of text per page."""
    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def make_pdf_without_text() -> bytes:
    """A PDF that only draws shapes, like a scanned page with no text layer."""
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")
    pdf.line(10, 10, 150, 150)
    return bytes(pdf.output())


def make_encrypted_pdf(user_password: str) -> bytes:
    pdf = FPDF()
    pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, "Confidential salary bands for 2025.")
    return bytes(pdf.output())


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("filename", "data", "expected"),
    [
        ("notes.txt", b"plain notes", TEXT_PLAIN),
        ("README.md", b"# Title", TEXT_MARKDOWN),
        ("guide.markdown", b"# Title", TEXT_MARKDOWN),
        ("page.html", b"<p>hi</p>", TEXT_HTML),
        ("page.HTM", b"<p>hi</p>", TEXT_HTML),
        ("dir/sub/report.PDF", make_pdf(["x"]), APPLICATION_PDF),
    ],
)
def test_detects_supported_types_from_extension(filename: str, data: bytes, expected: str) -> None:
    assert detect_media_type(filename, data) == expected


def test_supported_extensions_constant() -> None:
    text = {".txt", ".md", ".markdown", ".html", ".htm", ".pdf"}
    assert {*text, ".png", ".jpg", ".jpeg", ".tif", ".tiff"} == SUPPORTED_EXTENSIONS


@pytest.mark.parametrize("filename", ["contract.docx", "archive.tar.gz", "Makefile"])
def test_unknown_extension_is_named_with_supported_list(filename: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        detect_media_type(filename, b"data")
    message = str(caught.value)
    assert filename in message
    assert ".pdf" in message and ".md" in message and ".txt" in message
    suffix = Path(filename).suffix
    assert (f"'{suffix}'" in message) if suffix else ("no file extension" in message)


def test_empty_file_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"empty\.txt: file is empty"):
        detect_media_type("empty.txt", b"")
    with pytest.raises(InvalidInputError, match="is empty"):
        parse_document("empty.md", b"", TEXT_MARKDOWN)


def test_pdf_extension_without_pdf_bytes_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"report\.pdf: not a valid PDF.*%PDF-"):
        detect_media_type("report.pdf", b"<html>this is a web page</html>")


def test_pdf_bytes_with_text_extension_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"notes\.txt: the content is a PDF.*\.pdf"):
        detect_media_type("notes.txt", make_pdf(["hello"]))


def test_binary_bytes_with_text_extension_are_rejected() -> None:
    png_header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    with pytest.raises(InvalidInputError, match=r"photo\.md: not a text file.*NUL"):
        detect_media_type("photo.md", png_header)
    utf16 = "Annual leave".encode("utf-16")
    with pytest.raises(InvalidInputError, match="UTF-16"):
        detect_media_type("leave.txt", utf16)


def test_declared_type_must_match_extension() -> None:
    with pytest.raises(
        InvalidInputError,
        match=r"declared media type text/html does not match file extension \.pdf",
    ):
        detect_media_type("report.pdf", make_pdf(["x"]), "text/html")
    with pytest.raises(InvalidInputError, match="declared media type application/pdf"):
        detect_media_type("notes.txt", b"notes", "application/pdf")


@pytest.mark.parametrize(
    ("filename", "declared"),
    [
        ("notes.txt", "text/plain; charset=utf-8"),
        ("notes.txt", "application/octet-stream"),  # what curl sends when unsure
        ("notes.txt", ""),
        ("README.md", "text/x-markdown"),
        ("README.md", "text/plain"),  # markdown is plain text; not a contradiction
        ("page.html", "TEXT/HTML"),
        ("page.htm", "application/xhtml+xml"),
    ],
)
def test_compatible_declared_types_are_accepted(filename: str, declared: str) -> None:
    assert detect_media_type(filename, b"content", declared)


def test_text_decoding_handles_bom_and_legacy_encodings() -> None:
    bom = "\ufeffCafé menu\nSoup of the day.".encode()
    doc = parse_document("menu.txt", bom, detect_media_type("menu.txt", bom))
    assert doc.text.startswith("Café menu")
    cp1252 = "Caf\u00e9 \u201cspecial\u201d menu".encode("cp1252")
    doc = parse_document("menu.txt", cp1252, detect_media_type("menu.txt", cp1252))
    assert doc.text == "Café “special” menu"


def test_unknown_media_type_in_parse_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="unsupported media type 'image/gif'"):
        parse_document("photo.gif", b"data", "image/gif")


# --------------------------------------------------------------------------- txt


def test_txt_title_is_first_short_line_and_newlines_are_normalised() -> None:
    data = b"\r\n  Office opening hours\r\nThe office opens at 8 am.\r\nIt closes at 6 pm.  \r\n"
    doc = parse_document("hours.txt", data, TEXT_PLAIN)
    assert doc == ParsedDocument(
        text="  Office opening hours\nThe office opens at 8 am.\nIt closes at 6 pm.",
        title="Office opening hours",
        media_type=TEXT_PLAIN,
        sections=[],
        pages=[],
    )


def test_txt_with_long_first_line_uses_file_stem_as_title() -> None:
    data = ("word " * 60).encode() + b"\nsecond line"
    assert parse_document("dir/long-notes.txt", data, TEXT_PLAIN).title == "long-notes"


def test_whitespace_only_document_has_no_text() -> None:
    with pytest.raises(InvalidInputError, match=r"blank\.txt: the document contains no text"):
        parse_document("blank.txt", b" \n\n\t \n", TEXT_PLAIN)


# --------------------------------------------------------------------------- markdown


def test_markdown_headings_become_sections_at_their_offsets() -> None:
    doc = parse_document("travel.md", MARKDOWN.encode(), TEXT_MARKDOWN)
    assert doc.title == "Acme Cloud Travel Guide"
    assert doc.text == MARKDOWN.rstrip("\n")
    assert [h for _, h in doc.sections] == [
        "Acme Cloud Travel Guide",
        "Booking",
        "Visas",
        "Safety on the road",
    ]
    offsets = [o for o, _ in doc.sections]
    assert offsets == sorted(offsets)
    assert doc.text[offsets[0] :].startswith("# Acme Cloud Travel Guide")
    assert doc.text[offsets[1] :].startswith("## Booking")
    assert doc.text[offsets[2] :].startswith("## Visas ##")
    assert doc.text[offsets[3] :].startswith("Safety on the road\n---")
    assert "# this comment is code" in doc.text  # kept as text, not a heading
    assert doc.pages == []


def test_markdown_without_h1_uses_stem_and_front_matter_is_dropped() -> None:
    data = b"---\nauthor: someone\n---\n## Only a subheading\n\nBody text here.\n"
    doc = parse_document("faq-2024.md", data, TEXT_MARKDOWN)
    assert doc.title == "faq-2024"
    assert doc.text.startswith("## Only a subheading")
    assert doc.sections == [(0, "Only a subheading")]
    titled = b"---\ntitle: 'Team handbook'\n---\nSome text.\n"
    assert parse_document("h.md", titled, TEXT_MARKDOWN).title == "Team handbook"


def test_hash_without_space_is_not_a_heading() -> None:
    doc = parse_document("tags.md", b"#hashtag is a tag\n\n#\n\nText.", TEXT_MARKDOWN)
    assert doc.sections == []


# --------------------------------------------------------------------------- html


def test_html_visible_text_sections_and_paragraphs() -> None:
    doc = parse_document("status.html", HTML.encode(), TEXT_HTML)
    assert doc.title == "Acme Cloud Status Page Guide"
    for hidden in ("tracking code", "Docs navigation", "footer text", "banner", "comment"):
        assert hidden not in doc.text
    assert "The status page shows the health of every Acme Cloud service. It is updated" in (
        doc.text
    )
    # Paragraphs survive as blank-line separated blocks.
    assert "incident commander.\n\nCustomers can subscribe" in doc.text
    assert "Object Storage\nCompute" in doc.text
    assert "Region | Status\nFrankfurt | Operational" in doc.text
    assert "visible for 90 days." in doc.text
    assert [h for _, h in doc.sections] == ["Status page guide", "Components", "History"]
    for offset, heading in doc.sections:
        assert doc.text[offset : offset + len(heading)] == heading


def test_html_title_falls_back_to_h1_then_stem() -> None:
    doc = parse_document("a.html", b"<h1>Release notes</h1><p>Version 2 is out.</p>", TEXT_HTML)
    assert doc.title == "Release notes"
    doc = parse_document("notes-v2.htm", b"<p>Version 2 is out.</p>", TEXT_HTML)
    assert doc.title == "notes-v2"


def test_deeply_nested_html_does_not_overflow_the_stack() -> None:
    depth = 3000
    data = ("<div>" * depth + "<p>Deep text.</p>" + "</div>" * depth).encode()
    assert parse_document("deep.html", data, TEXT_HTML).text == "Deep text."


def test_html_with_only_scripts_has_no_text() -> None:
    data = b"<html><head><script>var a = 1;</script></head><body><nav>Menu</nav></body></html>"
    with pytest.raises(InvalidInputError, match=r"app\.html: the document contains no text"):
        parse_document("app.html", data, TEXT_HTML)


# --------------------------------------------------------------------------- pdf


def test_pdf_pages_are_extracted_with_start_offsets() -> None:
    data = make_pdf(PAGE_TEXTS, title="Quarterly Report Q3")
    assert detect_media_type("q3.pdf", data, "application/pdf") == APPLICATION_PDF
    doc = parse_document("q3.pdf", data, APPLICATION_PDF)
    assert doc.title == "Quarterly Report Q3"
    assert doc.media_type == APPLICATION_PDF
    assert doc.sections == []
    assert len(doc.pages) == 3
    assert doc.pages[0] == 0
    ends = [*doc.pages[1:], len(doc.text) + 2]
    for start, end, expected in zip(doc.pages, ends, PAGE_TEXTS, strict=True):
        assert " ".join(doc.text[start : end - 2].split()) == expected
    assert doc.text[doc.pages[1] - 2 : doc.pages[1]] == "\n\n"


def test_pdf_without_title_metadata_uses_stem() -> None:
    doc = parse_document("board-minutes.pdf", make_pdf(PAGE_TEXTS[:1]), APPLICATION_PDF)
    assert doc.title == "board-minutes"


def test_truncated_pdf_is_not_a_valid_pdf() -> None:
    data = make_pdf(PAGE_TEXTS)
    truncated = data[: len(data) // 2]
    assert detect_media_type("broken.pdf", truncated) == APPLICATION_PDF  # header is fine
    with pytest.raises(InvalidInputError, match=r"broken\.pdf: not a valid PDF \(.+\)"):
        parse_document("broken.pdf", truncated, APPLICATION_PDF)


def test_a_pdf_without_text_even_for_ocr_is_refused() -> None:
    """Shapes only: no text layer, and nothing OCR can read (tests/unit/test_ocr.py
    has the scans it reads)."""
    with pytest.raises(InvalidInputError, match=r"scan\.pdf: no text found, not even by OCR"):
        parse_document("scan.pdf", make_pdf_without_text(), APPLICATION_PDF)


def test_password_protected_pdf_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"salaries\.pdf: .*encrypted.*needs a password"):
        parse_document("salaries.pdf", make_encrypted_pdf("user-secret"), APPLICATION_PDF)


def test_owner_password_only_pdf_is_readable() -> None:
    doc = parse_document("salaries.pdf", make_encrypted_pdf(""), APPLICATION_PDF)
    assert "Confidential salary bands for 2025." in doc.text


# --------------------------------------------------------------------------- samples


def test_sample_corpus_parses() -> None:
    files = sorted(p for p in SAMPLES.iterdir() if p.is_file())
    assert len(files) >= 5
    media_types = set()
    for path in files:
        data = path.read_bytes()
        media_type = detect_media_type(path.name, data)
        doc = parse_document(path.name, data, media_type)
        media_types.add(media_type)
        assert 300 <= len(doc.text.split()) <= 900, path.name
        assert doc.title and doc.title != path.stem, path.name
        if media_type != TEXT_PLAIN:
            assert len(doc.sections) >= 3, path.name
    assert {TEXT_MARKDOWN, TEXT_HTML, TEXT_PLAIN} <= media_types


@pytest.mark.parametrize(
    ("line", "heading"),
    [
        ("# Leave", (1, "Leave")),
        ("###   Leave policy  ", (3, "Leave policy")),
        ("## Leave ##", (2, "Leave")),
        ("## Leave#", (2, "Leave#")),
        ("## ##", (2, "")),
        ("#", (1, "")),
        ("   # Indented by three", (1, "Indented by three")),
        ("    # Indented by four", None),
        ("#Leave", None),
        ("####### Seven", None),
    ],
)
def test_atx_headings_follow_commonmark(line: str, heading: tuple[int, str] | None) -> None:
    assert _atx_heading(line) == heading


def test_a_long_title_is_cut_at_a_word_boundary() -> None:
    words = " ".join(f"keyword{i}" for i in range(100))
    html = f"<html><head><title>{words}</title></head><body><p>Body text.</p></body></html>"
    doc = parse_document("page.html", html.encode(), TEXT_HTML)
    assert len(doc.title) <= MAX_TITLE_CHARS and doc.title.endswith("…")
    assert words.startswith(doc.title.removesuffix("…"))
    assert doc.title.removesuffix("…").split()[-1] in words.split()  # no cut word


def test_control_characters_leave_the_title() -> None:
    body = b"\n\n" + b"Sales grew in every region this quarter. " * 5
    doc = parse_document("notes.md", b"# Quarterly\x07 report\x1b[0m" + body, TEXT_MARKDOWN)
    assert doc.title == "Quarterly report [0m"
    only_controls = parse_document("notes.md", b"# \x01\x02" + body, TEXT_MARKDOWN)
    assert only_controls.title == "notes"


def test_text_that_is_mostly_control_characters_is_refused() -> None:
    data = ("word " * 50).encode() + bytes(range(1, 9)) * 40
    with pytest.raises(
        InvalidInputError, match=r"blob\.txt: 320 of its \d+ characters are control"
    ):
        parse_document("blob.txt", data, TEXT_PLAIN)
    few = ("word " * 50).encode() + b"\x0c\x0c"  # two form feeds in a real text
    assert parse_document("ok.txt", few, TEXT_PLAIN).text.startswith("word")


def test_a_pdf_over_the_page_limit_is_refused_before_its_pages_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parsers, "MAX_PDF_PAGES", 2)
    data = make_pdf(["one", "two", "three"])
    with pytest.raises(InvalidInputError, match=r"book\.pdf: the PDF has 3 pages; the limit is 2"):
        parse_document("book.pdf", data, APPLICATION_PDF)
    assert parse_document("two.pdf", make_pdf(["one", "two"]), APPLICATION_PDF).pages == [0, 5]


def test_a_page_with_too_many_tags_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parsers, "MAX_HTML_TAGS", 100)
    html = "<html><body>" + "<p>x</p>" * 60 + "</body></html>"
    with pytest.raises(InvalidInputError, match=r"big\.html: the page has up to 124 tags"):
        parse_document("big.html", html.encode(), TEXT_HTML)
