"""Property-based fuzzing of the upload parsers (services/ingestion/parsers.py).

Whatever bytes arrive, `detect_media_type` and `parse_document` either succeed
with a well-formed result or refuse with a PlatformError (which the servicer
turns into a clear gRPC status); any other exception would be a crash of the
ingestion of one document, reported as INTERNAL. Inputs are random bytes, text
in several encodings, markdown- and HTML-shaped text built from the constructs
the parsers look for, and mutations of a valid PDF.
"""

import re
from functools import cache

from fpdf import FPDF
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import PlatformError
from services.ingestion.parsers import (
    APPLICATION_PDF,
    MAX_TITLE_CHARS,
    SUPPORTED_MEDIA_TYPES,
    TEXT_HTML,
    TEXT_MARKDOWN,
    TEXT_PLAIN,
    ParsedDocument,
    detect_media_type,
    parse_document,
)
from tests.fuzz.profiles import scaled

FILENAMES = {
    TEXT_PLAIN: "fuzz.txt",
    TEXT_MARKDOWN: "fuzz.md",
    TEXT_HTML: "fuzz.html",
    APPLICATION_PDF: "fuzz.pdf",
    "image/png": "fuzz.png",
    "image/jpeg": "fuzz.jpg",
    "image/tiff": "fuzz.tiff",
}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def parse_or_refuse(data: bytes, media_type: str) -> ParsedDocument | None:
    """The parse of `data`, checked, or None when it was refused with a PlatformError."""
    try:
        doc = parse_document(FILENAMES[media_type], data, media_type)
    except PlatformError:
        return None
    check_parsed(doc, media_type)
    return doc


def check_parsed(doc: ParsedDocument, media_type: str) -> None:
    """What chunking and citations rely on in every parse."""
    assert doc.media_type == media_type
    assert doc.text.strip(), "a parse holds text"
    assert doc.title, "a parse has a title"
    assert len(doc.title) <= MAX_TITLE_CHARS
    assert not CONTROL.search(doc.title), repr(doc.title)
    offsets = [offset for offset, _ in doc.sections]
    assert offsets == sorted(offsets), doc.sections
    assert all(0 <= offset <= len(doc.text) for offset in offsets), doc.sections
    if media_type == TEXT_MARKDOWN:  # a heading starts a line
        assert all(o == 0 or doc.text[o - 1] == "\n" for o in offsets), doc.sections
    if media_type == APPLICATION_PDF:
        assert doc.pages and doc.pages[0] == 0
        assert doc.pages == sorted(doc.pages)
        assert doc.pages[-1] <= len(doc.text)
    else:
        assert doc.pages == []


# --------------------------------------------------------------------- inputs

ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "latin-1", "utf-16"])


@st.composite
def encoded_text(draw: st.DrawFn, text: st.SearchStrategy[str]) -> bytes:
    """`text` in one of several encodings, characters it cannot hold replaced."""
    return draw(text).encode(draw(ENCODINGS), errors="replace")


MARKDOWN_PIECES = st.sampled_from(
    [
        "# Title", "## Section ##", "###### Deep", "####### too deep", "#no space", "   # indented",
        "    # code", "#", "# ###", "Heading", "===", "---", "- item", "* item", "1. item",
        "> quote", "| a | b |", "```", "~~~", "````python", "**bold** and `code`",
        "[link](http://x)", "[[nested](", "---\ntitle: 'Front'\n---", "title: x", "\t", "  ",
        "", "\r\n", "\r", "\x00", "\x0b", "é", "ﬁ", "\u200b", "数据", "🚀",
    ]
)  # fmt: skip
MARKDOWN = st.lists(st.one_of(MARKDOWN_PIECES, st.text(max_size=30)), max_size=40).map("\n".join)

HTML_TAGS = st.sampled_from(
    [
        "p", "div", "h1", "h2", "h6", "pre", "textarea", "li", "br", "td", "th", "tr", "table",
        "script", "style", "nav", "title", "head", "body", "span", "b", "svg", "template",
    ]
)  # fmt: skip
HTML_ATTRIBUTES = st.sampled_from(["", " hidden", ' class="x"', " id=a", ' title="<p>"'])
HTML_LEAVES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "<!-- c -->",
            "<![CDATA[x]]>",
            "<?pi x?>",
            "<!DOCTYPE html>",
            "&amp;",
            "&#0;",
            "&nbsp;",
            "<",
            ">",
            "</p>",
            "<br/>",
            "<p",
            "\n\n",
            "   ",
            "\t",
        ]
    ),
)


@st.composite
def html_element(draw: st.DrawFn, children: st.SearchStrategy[str]) -> str:
    tag = draw(HTML_TAGS)
    close = draw(st.sampled_from([f"</{tag}>", "", f"</{tag.upper()}>"]))
    return f"<{tag}{draw(HTML_ATTRIBUTES)}>{draw(children)}{close}"


HTML = st.recursive(
    HTML_LEAVES,
    lambda children: html_element(st.lists(children, max_size=6).map("".join)),
    max_leaves=40,
)


@cache
def sample_pdf() -> bytes:
    """A valid two-page PDF with a title, text and a heading-like line."""
    pdf = FPDF()
    pdf.set_title("Fuzz sample")
    pdf.set_font("helvetica", size=12)
    for page in range(2):
        pdf.add_page()
        pdf.multi_cell(0, 8, f"Page {page + 1}\n\nLeave is 25 days a year. Trains are booked.")
    return bytes(pdf.output())


@st.composite
def mutated_pdf(draw: st.DrawFn) -> bytes:
    """`sample_pdf` truncated, with bytes overwritten, or with a slice repeated."""
    data = bytearray(sample_pdf())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "repeat", "insert"]))
        at = draw(st.integers(0, len(data)))
        if kind == "truncate":
            del data[max(at, 8) :]
        elif kind == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(patch)] = patch
        elif kind == "repeat":
            size = draw(st.integers(1, 200))
            data[at:at] = data[at : at + size] * draw(st.integers(1, 5))
        else:
            data[at:at] = draw(
                st.sampled_from([b"obj", b"endobj", b"<<", b">>", b"/Pages", b"R", b"999999999"])
            )
    return bytes(data)


# --------------------------------------------------------------------- properties


@settings(max_examples=scaled(1.0))
@given(
    filename=st.one_of(
        st.sampled_from(["a.txt", "b.MD", "c.markdown", "d.html", "e.HTM", "f.pdf", "g", "h.exe"]),
        st.text(max_size=20),
    ),
    data=st.binary(max_size=400),
    declared=st.one_of(
        st.sampled_from(["", "text/plain", "text/html; charset=utf-8", "application/x-pdf"]),
        st.text(max_size=20),
    ),
)
def test_detect_media_type_accepts_or_refuses(filename: str, data: bytes, declared: str) -> None:
    try:
        media_type = detect_media_type(filename, data, declared)
    except PlatformError:
        return
    assert media_type in SUPPORTED_MEDIA_TYPES


@settings(max_examples=scaled(1.0))
@given(media_type=st.sampled_from(sorted(SUPPORTED_MEDIA_TYPES)), data=st.binary(max_size=600))
def test_random_bytes_parse_or_are_refused(media_type: str, data: bytes) -> None:
    parse_or_refuse(data, media_type)


@settings(max_examples=scaled(1.0))
@given(data=encoded_text(st.text(max_size=300)))
def test_text_parses_or_is_refused(data: bytes) -> None:
    parse_or_refuse(data, TEXT_PLAIN)


@settings(max_examples=scaled(1.0))
@given(data=encoded_text(MARKDOWN))
def test_markdown_parses_or_is_refused(data: bytes) -> None:
    parse_or_refuse(data, TEXT_MARKDOWN)


@settings(max_examples=scaled(1.0))
@given(data=encoded_text(HTML))
def test_html_parses_or_is_refused(data: bytes) -> None:
    parse_or_refuse(data, TEXT_HTML)


@settings(max_examples=scaled(0.5))
@given(data=mutated_pdf())
def test_damaged_pdf_parses_or_is_refused(data: bytes) -> None:
    parse_or_refuse(data, APPLICATION_PDF)


@settings(max_examples=scaled(0.5))
@given(prefix=st.binary(max_size=64), body=st.binary(max_size=600))
def test_bytes_after_a_pdf_header_parse_or_are_refused(prefix: bytes, body: bytes) -> None:
    parse_or_refuse(prefix + b"%PDF-1.4\n" + body, APPLICATION_PDF)
