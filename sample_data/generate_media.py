"""Regenerate the sample jobs' media files: tiny, valid and byte-for-byte deterministic.

    python sample_data/generate_media.py [DIR]      (default: sample_data/media next to this script)

PNG and WAV bytes come from the simulator's own generators; the PDF is a one-page PDF 1.4 file
with a correct cross-reference table. tests/test_sample_jobs.py checks the committed files match.
"""

from __future__ import annotations

import sys
from pathlib import Path

from batchrun.simulator.answers import png_bytes, wav_bytes

INVOICE_LINES = ("Invoice 2024-0042", "Customer: Alice Martin", "2 x Hiking backpack 49.50 EUR", "Total: 99.00 EUR")


def pdf_bytes(lines: tuple[str, ...]) -> bytes:
    """A one-page PDF showing `lines` in Helvetica, with exact xref offsets."""
    text = "".join(f"({line}) Tj 0 -18 Td " for line in lines)
    stream = f"BT /F1 12 Tf 72 720 Td {text}ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def media_files() -> dict[str, bytes]:
    """Every sample media file by name."""
    return {
        "sunset.png": png_bytes("sunset"),
        "forest.png": png_bytes("forest"),
        "harbour.png": png_bytes("harbour"),
        "greeting.wav": wav_bytes("greeting"),
        "doorbell.wav": wav_bytes("doorbell"),
        "invoice.pdf": pdf_bytes(INVOICE_LINES),
    }


def main() -> None:
    """Write the files into the given directory (default: the media folder beside this script)."""
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "media"
    target.mkdir(parents=True, exist_ok=True)
    for name, data in media_files().items():
        (target / name).write_bytes(data)
        print(f"{target / name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
