"""PDFs whose few kilobytes decode to far more content than their size: refused,
naming the file and the limit, before any text is extracted."""

import time
import zlib

import pypdf
import pytest

from services.common.errors import TooLargeError
from services.ingestion.parsers import APPLICATION_PDF, parse_document

LINE = b"BT /F1 12 Tf 72 712 Td (Revenue grew by twelve percent this quarter.) Tj ET\n"
FONT = b"/Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >>"


def stream(content: bytes) -> bytes:
    packed = zlib.compress(content, 9)
    return b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(packed), packed)


def pdf(pages: int, content: bytes, form: bytes = b"") -> bytes:
    """A valid PDF of `pages` pages that all draw one compressed content stream
    (object 3) and, with `form`, one form XObject (object 4) drawn by it."""
    kids = b" ".join(b"%d 0 R" % (5 + i) for i in range(pages))
    xobject = b"/XObject << /X0 4 0 R >>" if form else b""
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
    page += b"/Resources << %s %s >> >>" % (FONT, xobject)
    form_object = b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] "
    form_object += b"/Resources << %s >> " % FONT + stream(form)[3:]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        stream(content),
        form_object if form else b"<< >>",
        *[page] * pages,
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture
def no_extraction(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("text was extracted from a PDF over its decoded limit")

    monkeypatch.setattr(pypdf.PageObject, "extract_text", refuse)


def test_an_honest_pdf_drawn_from_shared_streams_parses() -> None:
    doc = parse_document("report.pdf", pdf(2, LINE * 3 + b"/X0 Do\n", form=LINE), APPLICATION_PDF)
    assert doc.pages == [0, len(doc.text) // 2 + 1]
    assert doc.text.count("Revenue grew") == 8  # 3 lines and the form, on each page


@pytest.mark.usefixtures("no_extraction")
def test_a_stream_of_zeros_that_decodes_to_megabytes_is_refused() -> None:
    data = pdf(1, LINE + b"\0" * (32 * 1024 * 1024))
    assert len(data) < 64 * 1024
    limit = 100 * len(data) if 100 * len(data) > 1024 * 1024 else 1024 * 1024
    started = time.monotonic()
    with pytest.raises(
        TooLargeError,
        match=rf"zeros\.pdf: the PDF's page contents decode to more than {limit} bytes, "
        rf"the limit for a file of {len(data)} bytes \(100 times its size",
    ):
        parse_document("zeros.pdf", data, APPLICATION_PDF)
    assert time.monotonic() - started < 5


@pytest.mark.usefixtures("no_extraction")
def test_pages_that_share_one_large_content_stream_are_refused() -> None:
    data = pdf(100, LINE * 10_000)  # 760 KB of text drawn 100 times: 76 MB to read
    assert len(data) < 32 * 1024
    with pytest.raises(TooLargeError, match=r"shared\.pdf: the PDF's page contents decode"):
        parse_document("shared.pdf", data, APPLICATION_PDF)


@pytest.mark.usefixtures("no_extraction")
def test_pages_that_draw_one_large_form_are_refused() -> None:
    data = pdf(100, b"/X0 Do\n", form=LINE * 10_000)
    with pytest.raises(TooLargeError, match=r"forms\.pdf: the PDF's page contents decode"):
        parse_document("forms.pdf", data, APPLICATION_PDF)
