"""Turn an uploaded file into plain text with headings and page starts.

Everything downstream (chunking, citations, page numbers in answers) works on
character offsets into one string, so each parser produces exactly that string
plus the offsets of its structure, instead of a format-specific tree. The media
type is checked against the bytes before parsing because a mislabelled upload
would otherwise be indexed as garbage and only be noticed when answers go wrong.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import TYPE_CHECKING

from bs4 import BeautifulSoup
from bs4.element import NavigableString, PreformattedString, Tag

if TYPE_CHECKING:
    from pypdf import PageObject

from services.common.errors import InvalidInputError, PlatformError, TooLargeError
from services.ingestion import ocr

TEXT_PLAIN = "text/plain"
TEXT_MARKDOWN = "text/markdown"
TEXT_HTML = "text/html"
APPLICATION_PDF = "application/pdf"
IMAGE_PNG = "image/png"
IMAGE_JPEG = "image/jpeg"
IMAGE_TIFF = "image/tiff"
IMAGE_TYPES = frozenset({IMAGE_PNG, IMAGE_JPEG, IMAGE_TIFF})
"""Scans and photos of documents: their text is recognised (`ocr.py`)."""

# Extension -> media type. The extension is the primary signal: browsers and
# curl often send a generic or missing Content-Type, never a wrong extension.
_EXTENSION_TYPES: dict[str, str] = {
    ".txt": TEXT_PLAIN,
    ".md": TEXT_MARKDOWN,
    ".markdown": TEXT_MARKDOWN,
    ".html": TEXT_HTML,
    ".htm": TEXT_HTML,
    ".pdf": APPLICATION_PDF,
    ".png": IMAGE_PNG,
    ".jpg": IMAGE_JPEG,
    ".jpeg": IMAGE_JPEG,
    ".tif": IMAGE_TIFF,
    ".tiff": IMAGE_TIFF,
}
SUPPORTED_EXTENSIONS = frozenset(_EXTENSION_TYPES)
SUPPORTED_MEDIA_TYPES = frozenset(_EXTENSION_TYPES.values())

# Declared types that carry no information (what clients send when they do not
# know), and aliases that mean the same as our canonical type.
_UNINFORMATIVE_DECLARED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_DECLARED_ALIASES: dict[str, str] = {
    "text/x-markdown": TEXT_MARKDOWN,
    "application/xhtml+xml": TEXT_HTML,
    "application/x-pdf": APPLICATION_PDF,
}
# Markdown is plain text, so a client that labels a .md file text/plain is not
# contradicting the extension; the richer markdown parse still applies.
_COMPATIBLE_DECLARED: dict[str, frozenset[str]] = {TEXT_MARKDOWN: frozenset({TEXT_PLAIN})}

_PDF_MAGIC = b"%PDF-"
_IMAGE_MAGIC: dict[str, tuple[bytes, ...]] = {
    IMAGE_PNG: (b"\x89PNG\r\n\x1a\n",),
    IMAGE_JPEG: (b"\xff\xd8\xff",),
    IMAGE_TIFF: (b"II*\x00", b"MM\x00*"),
}
# The PDF spec lets the header appear anywhere in the first 1024 bytes.
_PDF_HEADER_WINDOW = 1024
_MAX_TXT_TITLE_CHARS = 120
MAX_TITLE_CHARS = 300
"""Longest title kept: every chunk carries its document's title (in its
payload, its BM25 text and every prompt that cites it), so a title is a label,
not text; a longer one (PDF metadata, a <title> stuffed with keywords) is cut
at a word boundary."""
MAX_PDF_PAGES = 2000
"""Most pages of one PDF: every page is parsed in the ingestion process, and a
longer file is a book or an archive that reads better split."""
PDF_DECODED_RATIO = 100
MAX_PDF_DECODED_BYTES = 200 * 1024 * 1024
MIN_PDF_DECODED_BYTES = 1024 * 1024
"""A PDF's page contents may decode to `PDF_DECODED_RATIO` times its size, never
more than `MAX_PDF_DECODED_BYTES`, and always `MIN_PDF_DECODED_BYTES`.

Text extraction reads every page's content streams, decoded, at about 1 to 5 MB
a second, so their decoded size is the parse's cost: a few kilobytes of zeros
compressed, or 2000 pages that all draw one large stream, cost minutes. Text
streams compress about 3 to 10 times, so 100 leaves real documents far below
the limit; the floor keeps tiny, odd but honest files readable (a megabyte reads
in about a second); the ceiling bounds the decoded data held in memory."""
MAX_HTML_TAGS = 200_000
"""Most "<" in one HTML page (an upper bound of its elements, counted before
the parser builds its tree, which costs memory per element)."""
MAX_CONTROL_SHARE = 0.05
"""A text whose characters are more than this share of control characters
(other than newlines and tabs) is binary data or a broken encoding, not a
document: it is refused rather than indexed as noise."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParsedDocument:
    """Extracted text plus the structure the chunker and citations need.

    `sections` holds (offset where a heading starts in `text`, heading text),
    sorted by offset; `pages` holds the offset where each page starts (empty for
    formats without pages), so a chunk's page is found by bisecting its start.
    """

    text: str
    title: str
    media_type: str
    sections: list[tuple[int, str]]
    pages: list[int]


def detect_media_type(filename: str, data: bytes, declared: str = "") -> str:
    """Return the media type for an upload, refusing anything we cannot parse faithfully.

    The extension decides the type; the declared type and the bytes must agree
    with it. Checking up front gives the uploader a precise reason ("not a valid
    PDF") instead of an empty or garbled document in the index.
    """
    ext = _extension(filename)
    media_type = _EXTENSION_TYPES.get(ext)
    if media_type is None:
        shown = f"extension '{ext}'" if ext else "no file extension"
        raise InvalidInputError(
            f"{filename}: unsupported file type ({shown}); "
            f"supported extensions: {', '.join(sorted(SUPPORTED_EXTENSIONS))}"
        )
    if not data:
        raise InvalidInputError(f"{filename}: file is empty")

    declared_type = _normalise_declared(declared)
    if (
        declared_type not in _UNINFORMATIVE_DECLARED
        and declared_type != media_type
        and declared_type not in _COMPATIBLE_DECLARED.get(media_type, frozenset())
    ):
        raise InvalidInputError(
            f"{filename}: declared media type {declared_type} "
            f"does not match file extension {ext} ({media_type})"
        )

    if media_type in IMAGE_TYPES:
        if not data.startswith(_IMAGE_MAGIC[media_type]):
            raise InvalidInputError(
                f"{filename}: not a valid {media_type.removeprefix('image/').upper()} image "
                "(its first bytes say otherwise; is it another format renamed?)"
            )
    elif media_type == APPLICATION_PDF:
        if _PDF_MAGIC not in data[:_PDF_HEADER_WINDOW]:
            raise InvalidInputError(
                f"{filename}: not a valid PDF (the file has no %PDF- header; "
                "is it another format renamed to .pdf?)"
            )
    else:
        if data.lstrip()[: len(_PDF_MAGIC)] == _PDF_MAGIC:
            raise InvalidInputError(
                f"{filename}: the content is a PDF but the extension {ext} says "
                f"{media_type}; rename it to .pdf"
            )
        decode_text(filename, data)
    return media_type


def decode_text(filename: str, data: bytes) -> str:
    """Decode a text upload: UTF-8 (with or without BOM), else Windows-1252/Latin-1.

    The legacy fallback exists because old .txt exports are often Windows-1252;
    NUL bytes are refused outright because they mean a binary file (or UTF-16,
    which we do not accept) and would otherwise decode "successfully" into junk.
    """
    if b"\x00" in data:
        raise InvalidInputError(
            f"{filename}: not a text file (it contains NUL bytes; binary files and "
            "UTF-16 text are not supported, save it as UTF-8)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        utf8_error = exc
    for legacy in ("cp1252", "latin-1"):
        try:
            text = data.decode(legacy)
        except UnicodeDecodeError:
            continue
        _log.info("%s: not UTF-8 (%s); decoded as %s", filename, utf8_error, legacy)
        return text
    raise InvalidInputError(f"{filename}: not valid UTF-8 text ({utf8_error})")  # pragma: no cover


def parse_document(filename: str, data: bytes, media_type: str) -> ParsedDocument:
    """Extract text, title, headings and page starts from an upload of `media_type`.

    Raises InvalidInputError naming the file when it cannot be parsed or holds
    no text, because an empty document would silently never be retrieved.
    """
    if not data:
        raise InvalidInputError(f"{filename}: file is empty")
    if media_type == APPLICATION_PDF:
        doc = _parse_pdf(filename, data)
    elif media_type in IMAGE_TYPES:
        doc = _paged(filename, ocr.image_pages(filename, data), media_type, _stem(filename))
    elif media_type in (TEXT_PLAIN, TEXT_MARKDOWN, TEXT_HTML):
        raw = _normalise_text(decode_text(filename, data))
        if media_type == TEXT_PLAIN:
            doc = _parse_txt(filename, raw)
        elif media_type == TEXT_MARKDOWN:
            doc = _parse_markdown(filename, raw)
        else:
            doc = _parse_html(filename, raw)
    else:
        raise InvalidInputError(
            f"{filename}: unsupported media type {media_type!r}; "
            f"supported: {', '.join(sorted(SUPPORTED_MEDIA_TYPES))}"
        )
    if not doc.text.strip():
        raise InvalidInputError(f"{filename}: the document contains no text")
    controls = len(_CONTROL.findall(doc.text))
    if controls > MAX_CONTROL_SHARE * len(doc.text):
        raise InvalidInputError(
            f"{filename}: {controls} of its {len(doc.text)} characters are control "
            "characters: binary data or a broken encoding, not a text document"
        )
    return _with_short_title(filename, doc)


def _with_short_title(filename: str, doc: ParsedDocument) -> ParsedDocument:
    """`doc` with its title free of control characters (the file's name when
    nothing else is left) and at most `MAX_TITLE_CHARS` long, cut at a word
    boundary."""
    title = " ".join(_CONTROL.sub(" ", doc.title).split()) or _stem(filename)
    if len(title) > MAX_TITLE_CHARS:
        head = title[: MAX_TITLE_CHARS - 1]
        cut = head.rfind(" ")
        title = (head[:cut] if cut > MAX_TITLE_CHARS // 2 else head).rstrip() + "…"
    return doc if title == doc.title else replace(doc, title=title)


# --------------------------------------------------------------------------- helpers


def _extension(filename: str) -> str:
    return PurePath(filename.replace("\\", "/")).suffix.lower()


def _stem(filename: str) -> str:
    stem = PurePath(filename.replace("\\", "/")).stem
    return stem or filename


def _normalise_declared(declared: str) -> str:
    base = declared.split(";", 1)[0].strip().lower()
    return _DECLARED_ALIASES.get(base, base)


def _normalise_text(text: str) -> str:
    """Unify newlines and compose accents so offsets and matching are stable.

    Trailing spaces on lines are dropped because they carry no meaning and
    would otherwise end up inside chunk boundaries.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    return _strip_line_ends(text).strip("\n")


def _strip_line_ends(text: str) -> str:
    """`text` without spaces and tabs at the ends of its lines, in linear time:
    a regular expression for trailing blanks takes time quadratic in a run of
    blanks that no line end follows."""
    return "\n".join(line.rstrip(" \t") for line in text.split("\n"))


# --------------------------------------------------------------------------- text


def _parse_txt(filename: str, text: str) -> ParsedDocument:
    first_line = next((line.strip() for line in text.split("\n") if line.strip()), "")
    title = first_line if 0 < len(first_line) <= _MAX_TXT_TITLE_CHARS else _stem(filename)
    return ParsedDocument(text=text, title=title, media_type=TEXT_PLAIN, sections=[], pages=[])


# --------------------------------------------------------------------------- markdown

_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Lines that cannot be the text of a setext heading (list items, quotes, tables).
_NOT_SETEXT_TEXT = re.compile(r"^ {0,3}(?:[-*+>|]|\d+[.)]\s|#)")
_FRONT_MATTER = re.compile(r"\A---\n(.*?\n)---\n", re.DOTALL)
_FRONT_MATTER_TITLE = re.compile(r"^title:(.*)$", re.MULTILINE)


def _parse_markdown(filename: str, text: str) -> ParsedDocument:
    """Keep the markdown source as the text and record ATX/setext headings.

    The source stays (rather than rendered text) because headings, lists and
    code read fine to both the embedder and a human looking at a citation.
    YAML front matter is metadata, not content, so it is dropped (its title kept).
    """
    front_title = ""
    front = _FRONT_MATTER.match(text)
    if front:
        title_match = _FRONT_MATTER_TITLE.search(front.group(1))
        if title_match:
            front_title = title_match.group(1).strip(" \t").strip("'\"")
        text = text[front.end() :].lstrip("\n")

    sections: list[tuple[int, str]] = []
    first_h1 = ""
    fence: str | None = None
    offset = 0
    prev_line: str | None = None
    prev_offset = 0
    for line in text.split("\n"):
        line_start = offset
        offset += len(line) + 1
        fence_match = _FENCE.match(line)
        if fence is not None:
            closing = fence_match.group(1) if fence_match else ""
            if closing[:1] == fence[0] and len(closing) >= len(fence):
                fence = None
            prev_line = None
            continue
        if fence_match:
            fence = fence_match.group(1)
            prev_line = None
            continue
        atx = _atx_heading(line)
        if atx is not None:
            level, raw = atx
            heading = _clean_heading(raw)
            if heading:
                sections.append((line_start, heading))
                if level == 1 and not first_h1:
                    first_h1 = heading
            prev_line = None
            continue
        setext = _SETEXT_UNDERLINE.match(line)
        if (
            setext
            and prev_line is not None
            and prev_line.strip()
            and not _NOT_SETEXT_TEXT.match(prev_line)
        ):
            heading = _clean_heading(prev_line)
            sections.append((prev_offset, heading))
            if setext.group(1)[0] == "=" and not first_h1:
                first_h1 = heading
            prev_line = None
            continue
        prev_line, prev_offset = line, line_start

    title = first_h1 or front_title or _stem(filename)
    return ParsedDocument(
        text=text, title=title, media_type=TEXT_MARKDOWN, sections=sections, pages=[]
    )


def _atx_heading(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading line ("## Text ##"), or None: CommonMark's
    rules, with string operations, because the regular expression for them
    backtracks in time cubic in a run of spaces."""
    indent = len(line) - len(line.lstrip(" "))
    if indent > 3:
        return None
    rest = line[indent:]
    level = len(rest) - len(rest.lstrip("#"))
    rest = rest[level:]
    if not 1 <= level <= 6 or (rest and rest[0] not in " \t"):
        return None
    text = rest.strip(" \t")
    unclosed = text.rstrip("#")
    if not unclosed:  # only the closing sequence
        return level, ""
    if unclosed[-1] in " \t":  # a closing sequence follows a space
        return level, unclosed.rstrip(" \t")
    return level, text


def _clean_heading(raw: str) -> str:
    """Heading text without emphasis/code markers, so it reads well as a label."""
    heading = re.sub(r"(\*\*|__|`)", "", raw.strip())
    # [text](url) -> text. Neither part may hold its own opening bracket, so a
    # line of many "[" or "(" is scanned once, not once per bracket.
    heading = re.sub(r"\[([^\[\]]*)\]\([^()]*\)", r"\1", heading)
    return " ".join(heading.split())


# --------------------------------------------------------------------------- html

# Elements whose content is never document text (code, chrome, metadata).
_HTML_DROP = frozenset(
    {"script", "style", "nav", "footer", "noscript", "template", "svg", "head", "iframe",
     "object", "canvas", "button", "select", "form"}
)  # fmt: skip
# Elements that start a new paragraph, so paragraph breaks survive extraction.
_HTML_PARAGRAPH = frozenset(
    {"p", "div", "section", "article", "main", "header", "aside", "blockquote", "pre",
     "ul", "ol", "dl", "table", "figure", "figcaption", "address", "details", "summary",
     "fieldset", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "body", "html", "center"}
)  # fmt: skip
# Elements that start a new line but not a new paragraph.
_HTML_LINE = frozenset({"li", "dt", "dd", "tr", "br", "caption", "option"})
_HTML_CELL = frozenset({"td", "th"})
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_LINE, _PARAGRAPH = 1, 2


class _HtmlTextBuilder:
    """Accumulates visible text with the strongest pending break between pieces.

    Breaks are kept pending until the next visible text arrives so that nested
    block elements produce one blank line, not a pile of them, and a heading's
    offset is the offset of its first character rather than of a separator.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.pending_break = 0
        self.pending_cell = False
        self.pending_space = False
        self.pending_heading: str | None = None
        self.sections: list[tuple[int, str]] = []

    def request_break(self, strength: int) -> None:
        self.pending_break = max(self.pending_break, strength)
        self.pending_space = False
        self.pending_cell = False

    def request_cell(self) -> None:
        self.pending_cell = True

    def add(self, text: str, preformatted: bool) -> None:
        trailing_space = False
        if not preformatted:
            leading_space = text[:1].isspace()
            trailing_space = text[-1:].isspace()
            text = " ".join(text.split())
            if not text:
                if leading_space and self.length:
                    self.pending_space = True
                return
            if leading_space:
                self.pending_space = True
        elif not text:
            return
        self._emit_separator()
        if self.pending_heading is not None:
            self.sections.append((self.length, self.pending_heading))
            self.pending_heading = None
        self.parts.append(text)
        self.length += len(text)
        self.pending_space = not preformatted and trailing_space

    def _emit_separator(self) -> None:
        if not self.length:
            sep = ""
        elif self.pending_break:
            sep = "\n\n" if self.pending_break >= _PARAGRAPH else "\n"
        elif self.pending_cell:
            sep = " | "
        elif self.pending_space:
            sep = " "
        else:
            sep = ""
        self.pending_break = 0
        self.pending_cell = False
        self.pending_space = False
        if sep:
            self.parts.append(sep)
            self.length += len(sep)

    def text(self) -> str:
        return "".join(self.parts)


def _parse_html(filename: str, source: str) -> ParsedDocument:
    """Extract visible text with paragraphs and headings from HTML.

    Walks the tree with an explicit stack (deeply nested markup must not hit the
    recursion limit) and emits blank lines around block elements so the chunker
    can still split on paragraphs.
    """
    tags = source.count("<")  # at least the elements: counted before the tree is built
    if tags > MAX_HTML_TAGS:
        raise InvalidInputError(
            f"{filename}: the page has up to {tags} tags; the limit is {MAX_HTML_TAGS}"
        )
    soup = BeautifulSoup(source, "html.parser")
    title_tag = soup.find("title")
    page_title = " ".join(title_tag.get_text(" ").split()) if isinstance(title_tag, Tag) else ""

    builder = _HtmlTextBuilder()
    first_h1 = ""
    # Stack items: a node to visit, or ("end", tag name, was_pre) to close one.
    stack: list[object] = [soup]
    pre_depth = 0
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            _, name, is_pre = item
            if name in _HTML_PARAGRAPH:
                builder.request_break(_PARAGRAPH)
            elif name in _HTML_LINE:
                builder.request_break(_LINE)
            if is_pre:
                pre_depth -= 1
            continue
        if isinstance(item, PreformattedString):  # comments, doctype, CDATA, PIs
            continue
        if isinstance(item, NavigableString):
            builder.add(str(item), preformatted=pre_depth > 0)
            continue
        if not isinstance(item, Tag):
            continue
        name = (item.name or "").lower()
        if name in _HTML_DROP or item.has_attr("hidden"):
            continue
        if name in _HTML_PARAGRAPH:
            builder.request_break(_PARAGRAPH)
        elif name in _HTML_LINE:
            builder.request_break(_LINE)
        elif name in _HTML_CELL:
            builder.request_cell()
        if name in _HTML_HEADINGS:
            heading = " ".join(item.get_text(" ").split())
            if heading:
                builder.pending_heading = heading
                if name == "h1" and not first_h1:
                    first_h1 = heading
        is_pre = name in ("pre", "textarea")
        if is_pre:
            pre_depth += 1
        stack.append(("end", name, is_pre))
        stack.extend(reversed(item.contents))

    # Only trailing whitespace may go: stripping the front would shift the
    # heading offsets recorded while building.
    text = builder.text().rstrip()
    title = page_title or first_h1 or _stem(filename)
    return ParsedDocument(
        text=text, title=title, media_type=TEXT_HTML, sections=builder.sections, pages=[]
    )


# --------------------------------------------------------------------------- pdf


def _parse_pdf(filename: str, data: bytes) -> ParsedDocument:
    """Extract text page by page and remember where each page starts.

    pypdf raises a zoo of exception types on damaged files (its own errors, but
    also KeyError/ValueError from half-parsed objects), so every failure while
    reading is reported as "not a valid PDF" with the underlying reason.
    """
    # Imported lazily: pypdf is only needed for PDFs and is slow-ish to import.
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are encrypted with an owner password only (to restrict
            # printing/editing) and open with an empty user password.
            try:
                decrypted = reader.decrypt("")
            except DependencyError as exc:
                raise InvalidInputError(
                    f"{filename}: the PDF is encrypted with a cipher this server "
                    f"cannot decrypt ({exc}); upload an unencrypted copy"
                ) from exc
            if decrypted == pypdf.PasswordType.NOT_DECRYPTED:
                raise InvalidInputError(
                    f"{filename}: the PDF is encrypted and needs a password; "
                    "upload an unencrypted copy"
                )
        page_count = len(reader.pages)
        if page_count > MAX_PDF_PAGES:
            raise InvalidInputError(
                f"{filename}: the PDF has {page_count} pages; the limit is {MAX_PDF_PAGES} "
                "(split it into several documents)"
            )
        _check_decoded_size(filename, reader.pages, len(data))
        page_texts = [_clean_pdf_page(page.extract_text() or "") for page in reader.pages]
        title = _pdf_title(reader)
    except PlatformError:
        raise
    except FileNotDecryptedError as exc:
        raise InvalidInputError(
            f"{filename}: the PDF is encrypted and needs a password ({exc})"
        ) from exc
    except Exception as exc:  # pypdf signals corruption with many exception types
        raise InvalidInputError(f"{filename}: not a valid PDF ({exc})") from exc

    if not page_texts:
        raise InvalidInputError(f"{filename}: the PDF has no pages")
    scanned = [index for index, page_text in enumerate(page_texts) if not page_text.strip()]
    if scanned:  # pages without a text layer: scans, read by OCR
        recognised = ocr.pdf_pages(filename, data, scanned)
        for index, text in recognised.items():
            page_texts[index] = _clean_pdf_page(text)
    return _paged(filename, page_texts, APPLICATION_PDF, title or _stem(filename))


def _paged(filename: str, page_texts: list[str], media_type: str, title: str) -> ParsedDocument:
    """A document of pages, each page's start recorded for citations ("p. 3")."""
    if not any(page_text.strip() for page_text in page_texts):
        raise InvalidInputError(f"{filename}: no text found, not even by OCR")
    pages: list[int] = []
    offset = 0
    for page_text in page_texts:
        pages.append(offset)
        offset += len(page_text) + 2
    return ParsedDocument(
        text="\n\n".join(page_texts), title=title, media_type=media_type, sections=[], pages=pages
    )


def _check_decoded_size(filename: str, pages: Iterable[PageObject], size: int) -> None:
    """Refuse a PDF whose page contents decode to more than its limit (see
    `PDF_DECODED_RATIO`) before any text is extracted.

    A page's contents are its content streams and the form XObjects it can
    draw, counted once per page that uses them, as extraction reads them once
    per page; pypdf decodes each stream once and keeps it for the extraction.
    """
    from pypdf.errors import LimitReachedError
    from pypdf.generic import ArrayObject, DictionaryObject, StreamObject

    limit = min(MAX_PDF_DECODED_BYTES, max(MIN_PDF_DECODED_BYTES, PDF_DECODED_RATIO * size))
    refusal = TooLargeError(
        f"{filename}: the PDF's page contents decode to more than {limit} bytes, the limit "
        f"for a file of {size} bytes ({PDF_DECODED_RATIO} times its size, between "
        f"{MIN_PDF_DECODED_BYTES} and {MAX_PDF_DECODED_BYTES} bytes)"
    )
    total = 0
    for page in pages:
        contents = page.get("/Contents")
        contents = contents.get_object() if contents is not None else None
        streams = list(contents) if isinstance(contents, ArrayObject) else [contents]
        seen: set[int] = set()
        resources = [page.get("/Resources")]
        while resources:  # form XObjects, nested ones too, each once per page
            found = resources.pop()
            found = found.get_object() if found is not None else None
            xobjects = found.get("/XObject") if isinstance(found, DictionaryObject) else None
            xobjects = xobjects.get_object() if xobjects is not None else None
            if not isinstance(xobjects, DictionaryObject):
                continue
            for reference in xobjects.values():
                form = reference.get_object()
                if (
                    isinstance(form, StreamObject)
                    and form.get("/Subtype") == "/Form"
                    and id(form) not in seen
                ):
                    seen.add(id(form))
                    streams.append(form)
                    resources.append(form.get("/Resources"))
        for stream in streams:
            stream = stream.get_object() if stream is not None else None
            if not isinstance(stream, StreamObject):
                continue
            try:
                total += len(stream.get_data())
            except LimitReachedError as exc:  # one stream over pypdf's own cap
                raise refusal from exc
            if total > limit:
                raise refusal


def _clean_pdf_page(text: str) -> str:
    """NFKC-normalise PDF text: it turns ligatures (ﬁ, ﬂ) and compatibility forms
    that PDF fonts love back into the plain letters people search for."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return _strip_line_ends(text).strip()


def _pdf_title(reader: object) -> str:
    try:
        metadata = getattr(reader, "metadata", None)
        title = getattr(metadata, "title", None) if metadata is not None else None
    except Exception:  # broken metadata must not reject an otherwise readable PDF
        return ""
    return " ".join(str(title).split()) if title else ""
