"""OCR of scans (`services/ingestion/ocr.py` through `parse_document`): a small
scanned set generated here (known text rendered at 200 and 300 dpi, with noise
and a slight skew) read at character accuracy 0.97 or better; scanned and mixed
PDFs keep their page numbers; PNG, JPEG and multi-page TIFF; what is refused."""

import difflib
import io
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from services.common.errors import InvalidInputError, TooLargeError
from services.ingestion import ocr
from services.ingestion.parsers import detect_media_type, parse_document

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
PAGES = [
    [
        "Employees receive 25 days of paid leave per year.",
        "Requests must be approved by the team manager.",
        "Unused days expire at the end of March 2027.",
    ],
    [
        "The parking permit costs 40 euros per month.",
        "Badges are replaced at the Ostend reception desk.",
        "Visitors sign in at the front gate before 9:30.",
    ],
]


def scan(lines: list[str], dpi: int, skew: float = 1.0, seed: int = 0) -> Image.Image:
    """An A4 page at `dpi` with `lines` in 12 pt type, rotated by `skew` degrees,
    with Gaussian noise: what a flatbed scanner gives."""
    width, height = int(8.27 * dpi), int(11.69 * dpi)
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    font = ImageFont.truetype(FONT, int(12 * dpi / 72))
    for number, line in enumerate(lines):
        draw.text((dpi, dpi + number * int(0.3 * dpi)), line, fill=0, font=font)
    page = page.rotate(skew, fillcolor=255)
    noisy = np.asarray(page, dtype=np.int16) + np.random.default_rng(seed).normal(
        0, 20, (height, width)
    ).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, kind: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, kind, **options)
    return out.getvalue()


def accuracy(truth: str, read: str) -> float:
    return difflib.SequenceMatcher(None, " ".join(truth.split()), " ".join(read.split())).ratio()


def test_a_scanned_set_reads_at_97_percent_or_better() -> None:
    started, pages, scores = time.perf_counter(), 0, []
    for dpi in (200, 300):
        for number, lines in enumerate(PAGES):
            image = scan(lines, dpi, skew=(-1.0) ** number, seed=dpi + number)
            scores.append(accuracy("\n".join(lines), ocr.recognise(image)))
            pages += 1
    elapsed = time.perf_counter() - started
    print(f"OCR: {pages} pages, {pages / elapsed:.2f} pages/s, accuracy {min(scores):.3f} min")
    assert min(scores) >= 0.97, scores


def test_a_scanned_pdf_keeps_its_pages_and_a_mixed_one_reads_only_its_scans() -> None:
    first, second = (scan(lines, 200) for lines in PAGES)
    data = encoded(first, "PDF", save_all=True, append_images=[second], resolution=200.0)
    assert detect_media_type("scan.pdf", data) == "application/pdf"
    parsed = parse_document("scan.pdf", data, "application/pdf")
    assert len(parsed.pages) == 2
    page_two = parsed.text[parsed.pages[1] :]
    assert "parking permit" in page_two and "25 days" in parsed.text[: parsed.pages[1]]

    from fpdf import FPDF

    mixed = FPDF()
    mixed.add_page()
    mixed.set_font("Helvetica", size=12)
    mixed.cell(text="A typed page about the canteen menu.")
    mixed.add_page()
    mixed.image(first, x=0, y=0, w=210)
    parsed = parse_document("mixed.pdf", bytes(mixed.output()), "application/pdf")
    assert parsed.text[: parsed.pages[1]].startswith("A typed page about the canteen menu.")
    assert "approved by the team manager" in parsed.text[parsed.pages[1] :]


@pytest.mark.parametrize(("name", "kind"), [("a.png", "PNG"), ("a.jpg", "JPEG")])
def test_images_are_read(name: str, kind: str) -> None:
    data = encoded(scan(PAGES[0], 200), kind)
    media_type = detect_media_type(name, data)
    parsed = parse_document(name, data, media_type)
    assert accuracy("\n".join(PAGES[0]), parsed.text) >= 0.97
    assert parsed.title == "a" and parsed.pages == [0]


def test_a_multipage_tiff_is_a_document_of_pages() -> None:
    first, second = (scan(lines, 200) for lines in PAGES)
    data = encoded(first, "TIFF", save_all=True, append_images=[second])
    parsed = parse_document("fax.tiff", data, detect_media_type("fax.tiff", data))
    assert len(parsed.pages) == 2 and "Visitors sign in" in parsed.text[parsed.pages[1] :]


def test_what_ocr_refuses_names_the_file() -> None:
    with pytest.raises(InvalidInputError, match=r"logo\.png: not a valid PNG image"):
        detect_media_type("logo.png", b"GIF89a...")
    blank = encoded(Image.new("L", (400, 300), 255), "PNG")
    with pytest.raises(InvalidInputError, match=r"blank\.png: no text found, not even by OCR"):
        parse_document("blank.png", blank, "image/png")
    with pytest.raises(TooLargeError, match="over the 40000000 pixels OCR reads"):
        ocr.recognise(Image.new("L", (8000, 6000), 255))
