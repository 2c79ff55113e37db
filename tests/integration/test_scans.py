"""A scanned PDF through the real platform: its pages are read by OCR in the
parse workers, and an answer from its second page cites that page."""

import io

from PIL import Image, ImageDraw, ImageFont

from tests.integration.conftest import Stubs, ask, upload

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def scanned_pdf(pages: list[str]) -> bytes:
    """A PDF of page images (no text layer), one paragraph per page, 200 dpi."""
    font = ImageFont.truetype(FONT, 33)
    images = []
    for text in pages:
        image = Image.new("L", (1654, 2339), 255)
        ImageDraw.Draw(image).text((200, 200), text, fill=0, font=font)
        images.append(image.rotate(0.8, fillcolor=255))
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=200.0)
    return out.getvalue()


def test_a_scanned_pdf_answers_with_the_page_it_cites(stubs: Stubs) -> None:
    data = scanned_pdf(
        [
            "Facilities handbook. Chapter one covers the office opening hours.",
            "The rooftop garden on the Antwerp campus closes at seven in winter.",
        ]
    )
    result = upload(stubs, "facilities-scan.pdf", data, document_id="facilities-scan")
    assert result.document.chunk_count >= 1, result
    answer = ask(stubs, "When does the rooftop garden on the Antwerp campus close in winter?")
    cited = [c for c in answer.citations if c.document_id == "facilities-scan"]
    assert cited and "seven" in answer.answer, answer
    assert {c.page for c in cited} == {2}
