"""Damaged images inside a PDF page: found so that a page is not embedded blank without a word.

PDFium draws an image it cannot decode as nothing (white paper) and says nothing, as viewers do
(they print a line on their console).  After drawing a page, :func:`damaged_images` looks at the
page's image objects that use the two decoders that fail this way:

* **JPX** (JPEG 2000): the image is decoded again on its own (``FPDFImageObj_GetBitmap``),
  which fails for a damaged code stream.  This costs one more decode of those images only.
* **JBIG2**: PDFium hands back a blank bitmap for a damaged stream, so the stream's structure is
  checked instead (ITU-T T.88, 7.2): a sequence of segment headers of known types whose data
  lengths fit the stream, holding at least one region to draw.  Nothing is decoded.

Each damaged image gives one note, ``"damaged JBIG2 image (drawn blank)"``; the page is still
embedded (the rest of it may carry what matters).
"""

from __future__ import annotations

import ctypes

__all__ = ["damaged_images", "jbig2_damaged"]

# T.88 segment types (7.3); 62 is an extension segment.
_SEGMENT_TYPES = frozenset({0, 4, 6, 7, 16, 20, 22, 23, 36, 38, 39, 40, 42, 43, 48, 49, 50, 51, 52, 53, 62})
_REGIONS = frozenset({4, 6, 7, 20, 22, 23, 36, 38, 39, 40, 42, 43})  # text, halftone, generic, refinement
_UNKNOWN_LENGTH = 0xFFFFFFFF  # allowed for an immediate generic region, whose end is searched for


def _segment_header(data: bytes, at: int) -> tuple[int, int, int] | None:
    """(type, header length, data length) of the segment header at ``at``; None if malformed."""
    if at + 6 > len(data):
        return None
    number = int.from_bytes(data[at : at + 4], "big")
    flags = data[at + 4]
    kind, page_size = flags & 0x3F, 4 if flags & 0x40 else 1
    pos = at + 5
    count = data[pos] >> 5
    if count == 7:  # long form: 29-bit count, then retention bits
        if pos + 4 > len(data):
            return None
        count = int.from_bytes(data[pos : pos + 4], "big") & 0x1FFFFFFF
        pos += 4 + (count + 8) // 8
    elif count > 4:
        return None
    else:
        pos += 1
    ref_size = 1 if number <= 256 else 2 if number <= 65536 else 4
    pos += count * ref_size + page_size
    if pos + 4 > len(data):
        return None
    return kind, pos + 4 - at, int.from_bytes(data[pos : pos + 4], "big")


def jbig2_damaged(data: bytes) -> bool:
    """True when ``data`` (an embedded JBIG2 stream) is not a sequence of valid segments holding
    a region to draw."""
    at, regions = 0, 0
    while at < len(data):
        header = _segment_header(data, at)
        if header is None:
            return True
        kind, head_len, length = header
        if kind not in _SEGMENT_TYPES:
            return True
        regions += kind in _REGIONS
        if length == _UNKNOWN_LENGTH:
            return kind != 38
        at += head_len + length
        if at > len(data):
            return True
    return regions == 0


def _image_objects(page_raw, budget: int = 10_000):
    """The page's image objects, forms descended into, at most ``budget`` objects visited (a
    page may nest forms deeply: the walk must stay cheap whatever the file)."""
    import pypdfium2.raw as c

    stack = [(c.FPDFPage_CountObjects, c.FPDFPage_GetObject, page_raw)]
    while stack and budget > 0:
        count, get, parent = stack.pop()
        for i in range(max(0, count(parent))):
            budget -= 1
            if budget <= 0:
                return
            obj = get(parent, i)
            kind = c.FPDFPageObj_GetType(obj) if obj else None
            if kind == c.FPDF_PAGEOBJ_IMAGE:
                yield obj
            elif kind == c.FPDF_PAGEOBJ_FORM:
                stack.append((c.FPDFFormObj_CountObjects, c.FPDFFormObj_GetObject, obj))


def _filters(obj) -> list[str]:
    import pypdfium2.raw as c

    out = []
    for i in range(max(0, c.FPDFImageObj_GetImageFilterCount(obj))):
        n = c.FPDFImageObj_GetImageFilter(obj, i, None, 0)
        buf = ctypes.create_string_buffer(n)
        c.FPDFImageObj_GetImageFilter(obj, i, buf, n)
        out.append(buf.value.decode("ascii", "replace"))
    return out


def _stream_data(obj) -> bytes:
    """The image's stream after its non-image filters (Flate and the like), before JBIG2."""
    import pypdfium2.raw as c

    n = c.FPDFImageObj_GetImageDataDecoded(obj, None, 0)
    buf = ctypes.create_string_buffer(max(1, n))
    got = c.FPDFImageObj_GetImageDataDecoded(obj, buf, n)
    return buf.raw[:got]


def damaged_images(pdf_page) -> list[str]:
    """Notes on the page's JBIG2 and JPX images that cannot be decoded (see the module docstring)."""
    import pypdfium2.raw as c

    notes: list[str] = []
    for obj in _image_objects(pdf_page.raw):
        filters = _filters(obj)
        if "JBIG2Decode" in filters and jbig2_damaged(_stream_data(obj)):
            notes.append("damaged JBIG2 image (drawn blank)")
        elif "JPXDecode" in filters:
            bitmap = c.FPDFImageObj_GetBitmap(obj)
            if not bitmap:
                notes.append("damaged JPX (JPEG 2000) image (drawn blank)")
            else:
                c.FPDFBitmap_Destroy(bitmap)
    return notes
