"""Hostile and damaged PDFs, written byte by byte (no PDF library writes such files on purpose)."""

from __future__ import annotations

import io
import random
import struct


def write_pdf(objs: dict[int, bytes]) -> bytes:
    """A PDF of numbered objects (1 is the catalog), with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = {}
    for n in sorted(objs):
        offsets[n] = len(out)
        out += b"%d 0 obj\n" % n + objs[n] + b"\nendobj\n"
    xref = len(out)
    size = max(objs) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for i in range(1, size):
        out += b"%010d 00000 n \n" % offsets[i]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def _stream(dictionary: bytes, data: bytes) -> bytes:
    return b"<< " + dictionary + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def _page(resources: bytes, content: bytes) -> dict[int, bytes]:
    return {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R /Resources << "
        + resources
        + b" >> >>",
        4: _stream(b"", content),
    }


def nested_forms_pdf(depth: int = 32, copies: int = 2) -> bytes:
    """One page that draws form X0; each form draws the next one ``copies`` times, ``depth``
    levels deep: ~7 kB that make PDFium expand 2^32 form instances (memory without bound)."""
    first = 5
    objs = _page(b"/XObject << /X0 %d 0 R >>" % first, b"q /X0 Do Q")
    for i in range(depth):
        num = first + i
        if i + 1 < depth:
            body = b" ".join(b"q 0.5 0 0 0.5 %d 0 cm /X Do Q" % (k * 100) for k in range(copies))
            res = b"/Resources << /XObject << /X %d 0 R >> >>" % (num + 1)
        else:
            body, res = b"0 0 1 rg 0 0 200 200 re f", b""
        objs[num] = _stream(b"/Type /XObject /Subtype /Form /BBox [0 0 200 200] " + res, body)
    return write_pdf(objs)


def image_pdf(filter_name: bytes, data: bytes, w: int = 64, h: int = 64, colour: bytes = b"") -> bytes:
    """One page filled by one image XObject whose stream is ``data`` under ``filter_name``."""
    objs = _page(b"/XObject << /Im0 5 0 R >>", b"q 200 0 0 200 0 0 cm /Im0 Do Q")
    objs[5] = _stream(
        b"/Type /XObject /Subtype /Image /Width %d /Height %d %s/Filter /%s" % (w, h, colour, filter_name), data
    )
    return write_pdf(objs)


def garbage(n: int = 500, seed: int = 1) -> bytes:
    r = random.Random(seed)
    return bytes(r.getrandbits(8) for _ in range(n))


def jbig2_stream(w: int = 64, h: int = 64) -> bytes:
    """A valid embedded JBIG2 stream: a page information segment and an immediate generic region
    coded with MMR (CCITT G4, written by Pillow): the left half black."""
    from PIL import Image, ImageDraw

    im = Image.new("1", (w, h), 0)
    ImageDraw.Draw(im).rectangle([0, 0, w // 2 - 1, h - 1], fill=1)
    buf = io.BytesIO()
    im.save(buf, "TIFF", compression="group4")
    with Image.open(io.BytesIO(buf.getvalue())) as t:
        off, cnt = t.tag_v2[273][0], t.tag_v2[279][0]
    g4 = buf.getvalue()[off : off + cnt]

    def segment(number: int, kind: int, data: bytes) -> bytes:
        return struct.pack(">IBBBI", number, kind, 0, 1, len(data)) + data

    page = segment(0, 48, struct.pack(">IIIIBH", w, h, 0, 0, 0, 0))
    region = segment(1, 38, struct.pack(">IIIIB", w, h, 0, 0, 0) + bytes([1]) + g4)
    return page + region


JBIG2_COLOUR = b"/ColorSpace /DeviceGray /BitsPerComponent 1 "
