"""Optical character recognition of scanned pages and images, on this machine.

RapidOCR runs PaddleOCR's PP-OCRv4 detection and recognition models on ONNX
Runtime; the models ship inside the `rapidocr-onnxruntime` wheel, so nothing is
downloaded when a document arrives. The engine loads once per process (a parse
worker keeps it for its life) and reads a 200 dpi page in about a second on one
core (docs/ingestion.md has the measurements).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from services.common.errors import InvalidInputError, TooLargeError

OCR_DPI = 200
"""Resolution scanned PDF pages are rendered at: the models read 10 pt text
reliably from about 150 dpi; more costs time and memory for nothing."""
MAX_IMAGE_PIXELS = 40_000_000
"""Largest image recognised (a 300 dpi A3 scan is 17.5 million pixels): a larger
one is a decompression bomb or a poster, not a document page."""

_engine: Any = None
_lock = threading.Lock()


def _ocr() -> Any:
    """The process's engine, created on first use (loading takes about a second)."""
    global _engine
    with _lock:
        if _engine is None:
            from rapidocr_onnxruntime import RapidOCR

            _engine = RapidOCR()
        return _engine


def recognise(image: Any) -> str:
    """The text of a page image, line by line in reading order."""
    import numpy as np

    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise TooLargeError(
            f"an image of {width}x{height} pixels is over the {MAX_IMAGE_PIXELS} pixels OCR reads"
        )
    found, _ = _ocr()(np.asarray(image.convert("RGB")))
    return "\n".join(" ".join(text for _, text in line) for line in _lines(found or []))


def _lines(found: Sequence[Any]) -> Iterator[list[tuple[float, str]]]:
    """Recognised boxes grouped into lines (boxes whose vertical centres fall
    within half a line height of the line's), top to bottom, each left to right."""
    boxes = sorted(
        (
            (sum(p[1] for p in box) / 4, abs(box[2][1] - box[0][1]) or 1.0, box[0][0], text)
            for box, text, _ in found
        ),
        key=lambda b: b[0],
    )
    line: list[tuple[float, float, float, str]] = []
    for box in boxes:
        if line and abs(box[0] - line[-1][0]) > max(box[1], line[-1][1]) / 2:
            yield sorted(((b[2], b[3]) for b in line), key=lambda b: b[0])
            line = []
        line.append(box)
    if line:
        yield sorted(((b[2], b[3]) for b in line), key=lambda b: b[0])


def image_pages(filename: str, data: bytes) -> list[str]:
    """The text of each frame of an image file (a multi-page TIFF has several)."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise TooLargeError(
                    f"{filename}: {image.width}x{image.height} pixels is over the "
                    f"{MAX_IMAGE_PIXELS} pixels OCR reads"
                )
            return [recognise(frame.copy()) for frame in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError(f"{filename}: not a readable image ({error})") from None


def pdf_pages(filename: str, data: bytes, indexes: Sequence[int]) -> dict[int, str]:
    """The recognised text of the PDF's pages `indexes` (0-based), rendered at OCR_DPI."""
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as error:
        raise InvalidInputError(f"{filename}: not a valid PDF ({error})") from None
    try:
        texts = {}
        for index in indexes:
            page = document[index]
            try:
                width, height = page.get_size()
                if width * height * (OCR_DPI / 72) ** 2 > MAX_IMAGE_PIXELS:
                    raise TooLargeError(
                        f"{filename}: page {index + 1} is {width:.0f}x{height:.0f} points, "
                        f"over the {MAX_IMAGE_PIXELS} pixels OCR reads at {OCR_DPI} dpi"
                    )
                bitmap = page.render(scale=OCR_DPI / 72, grayscale=True)
                texts[index] = recognise(bitmap.to_pil())
            finally:
                page.close()
        return texts
    finally:
        document.close()
